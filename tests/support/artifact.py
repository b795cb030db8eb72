"""Helpers for the artifact tests (tests/artifact/): commands, and an Ansible environment that sees one
collections path only (never the checkout's `.venv/ansible_collections` link, ~/.ansible, or collections on
sys.path), so that what renders and parses there is what the tarball holds."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def run(argv, env=None, cwd=None):
    """argv's CompletedProcess; an AssertionError with its output when it fails."""
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, "%s failed (rc %d)\nstdout:\n%s\nstderr:\n%s" % (
        " ".join(str(a) for a in argv), proc.returncode, proc.stdout, proc.stderr)
    return proc


@dataclass(frozen=True)
class Artifact:
    tarball: pathlib.Path
    members: frozenset     # paths in the tarball, directories without their trailing slash


@dataclass(frozen=True)
class Installed:
    root: pathlib.Path     # the collection's directory: <collections_path>/ansible_collections/rtvirt/kvm
    collections_path: pathlib.Path
    env: dict


def isolated_env(base: pathlib.Path, collections_path: pathlib.Path) -> dict:
    """Ansible sees collections_path and nothing else: no project ansible.cfg, no ~/.ansible, no sys.path."""
    home = base / "ansible-home"
    home.mkdir(parents=True, exist_ok=True)
    cfg = base / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({
        "PATH": "%s%s%s" % (BIN, os.pathsep, env.get("PATH", "")),
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_ROLES_PATH": str(home / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "true",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
    })
    env.pop("PYTHONPATH", None)
    return env
