# -*- coding: utf-8 -*-
"""Every Molecule scenario under extensions/molecule (except default: shared create/destroy), end to end."""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.name for p in (REPO / "extensions" / "molecule").iterdir()
                   if p.is_dir() and p.name != "default" and (p / "molecule.yml").exists())


def _env():
    env = dict(os.environ)
    env["PATH"] = "%s:%s" % (REPO / ".venv" / "bin", env.get("PATH", ""))
    env["ANSIBLE_COLLECTIONS_PATH"] = str(REPO / ".venv")
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["RTVIRT_PYTHON_INTERPRETER"] = str(REPO / ".venv" / "bin" / "python")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["NO_COLOR"] = "1"
    return env


@pytest.mark.molecule
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario):
    if os.geteuid() != 0:
        pytest.skip("the Molecule scenarios converge this machine and need root")
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "molecule"), "test", "-s", scenario], cwd=str(REPO),
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, ("molecule test -s %s failed (rc %d):\n%s"
                                  % (scenario, proc.returncode, proc.stdout[-20000:]))
