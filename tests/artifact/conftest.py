"""The collection as an operator gets it: built into a tarball, installed into a collections path of its own.

Session-scoped, so that the artifact is built and installed once for all the tests here.
"""
from __future__ import annotations

import os
import tarfile

import pytest
import yaml

from tests.support.artifact import BIN, REPO, Artifact, Installed, isolated_env, run


@pytest.fixture(scope="session")
def galaxy_meta():
    return yaml.safe_load((REPO / "galaxy.yml").read_text())


@pytest.fixture(scope="session")
def artifact(tmp_path_factory, galaxy_meta) -> Artifact:
    out = tmp_path_factory.mktemp("artifact")
    run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", out, REPO], cwd=out)
    tarball = out / ("%s-%s-%s.tar.gz" % (galaxy_meta["namespace"], galaxy_meta["name"], galaxy_meta["version"]))
    assert tarball.is_file(), "ansible-galaxy collection build made %s, not %s" % (sorted(os.listdir(out)), tarball.name)
    with tarfile.open(tarball) as tar:
        members = frozenset(m.name.rstrip("/") for m in tar.getmembers())
    return Artifact(tarball=tarball, members=members)


@pytest.fixture(scope="session")
def installed(tmp_path_factory, artifact, galaxy_meta) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    collections_path = base / "collections"
    env = isolated_env(base, collections_path)
    run([BIN / "ansible-galaxy", "collection", "install", "--force", "-p", collections_path, artifact.tarball], env=env, cwd=base)
    root = collections_path / "ansible_collections" / galaxy_meta["namespace"] / galaxy_meta["name"]
    assert (root / "MANIFEST.json").is_file(), "the install left no MANIFEST.json in %s" % root
    return Installed(root=root, collections_path=collections_path, env=env)
