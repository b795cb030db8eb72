"""execution-environment.yml makes a build context, and that context installs the artifact with its dependencies.

Building the image needs a container registry (the base image) that these machines cannot reach, so the tests
stop at what ansible-builder does on the controller: `ansible-builder create`, then the two steps of the
Containerfile that decide what the image holds, replayed here: the galaxy stage's `ansible-galaxy collection
install -r requirements.yml` from the context, and the builder stage's introspection of what it installed.
"""
from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import shutil
import sys

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.artifact import BIN, REPO, isolated_env, run

pytestmark = pytest.mark.artifact

EE_FILES = ("execution-environment.yml", "ee-requirements.yml", "bindep.txt", "requirements.txt")
# bindep's profiles as ansible-builder's assemble script asks for them on each family: the compile stage gets
# the compile lines, the final image the others.
RPM = ("platform:rpm", "platform:redhat", "platform:fedora")
DPKG = ("platform:dpkg", "platform:debian")


def pip_names(path):
    lines = (line.split("#", 1)[0].strip() for line in pathlib.Path(path).read_text().splitlines())
    return sorted(canonicalize_name(Requirement(line).name) for line in lines if line)


def requirement_lines(path):
    return [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def origins(merged):
    """(requirement, collection) for each line of introspection's merged file, `req  # from collection X`."""
    pairs = []
    for line in requirement_lines(merged):
        requirement, origin = (line.split("  # from collection ", 1) + [""])[:2]
        pairs.append((requirement.strip(), origin.strip()))
    return pairs


def bindep_packages(profiles):
    return sorted(rule[0] for rule in Depends((REPO / "bindep.txt").read_text()).active_rules(list(profiles)))


@pytest.fixture(scope="module")
def context(tmp_path_factory, artifact):
    """The build context, made the way the README tells operators: the artifact next to the EE files."""
    work = tmp_path_factory.mktemp("ee")
    for name in EE_FILES:
        shutil.copy(REPO / name, work / name)
    shutil.copy(artifact.tarball, work / artifact.tarball.name)
    run([BIN / "ansible-builder", "create", "--file", "execution-environment.yml", "--context", "context",
         "--output-filename", "Containerfile"], cwd=work)
    return work / "context"


def test_the_definition_is_ansible_builder_v3():
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    assert ee["images"]["base_image"]["name"]
    assert {"ansible_core", "ansible_runner", "galaxy", "python", "system"} <= set(ee["dependencies"])


def test_create_makes_a_context_with_the_requirements(context, artifact):
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="%s"' % ee["images"]["base_image"]["name"] in containerfile
    assert "ansible-galaxy collection install" in containerfile and "introspect" in containerfile, containerfile
    build = context / "_build"
    assert (build / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    assert yaml.safe_load((build / "requirements.yml").read_text()) == \
        yaml.safe_load((REPO / "ee-requirements.yml").read_text())
    shipped = build / "collections" / artifact.tarball.name
    assert shipped.read_bytes() == artifact.tarball.read_bytes(), "the context lacks the artifact %s" % shipped


def test_the_context_installs_this_artifact(context, artifact):
    # ee-requirements.yml names the tarball by version; a galaxy.yml version bump that forgets it would build
    # an image without the collection.
    wanted = {c["name"] for c in yaml.safe_load((context / "_build" / "requirements.yml").read_text())["collections"]}
    assert wanted == {"collections/" + artifact.tarball.name}, \
        "ee-requirements.yml installs %s, but galaxy.yml builds %s" % (sorted(wanted), artifact.tarball.name)


def test_the_image_would_hold_the_collection_and_its_dependencies(context, tmp_path, galaxy_meta):
    build = context / "_build"
    collections = tmp_path / "usr-share-ansible-collections"
    env = isolated_env(tmp_path, collections)
    # The galaxy stage: `COPY _build /build`, `WORKDIR /build`, then this.
    run([BIN / "ansible-galaxy", "collection", "install", "-r", "requirements.yml", "--collections-path", collections],
        env=env, cwd=build)
    root = collections / "ansible_collections" / galaxy_meta["namespace"] / galaxy_meta["name"]
    assert (root / "meta" / "execution-environment.yml").is_file()
    # The builder stage: what introspection finds in the installed collections, merged with the EE's own files.
    merged_pip, merged_bindep = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    proc = run([BIN / "ansible-builder", "introspect", "--sanitize", collections, "--user-pip", build / "requirements.txt",
                "--user-bindep", build / "bindep.txt", "--write-pip", merged_pip, "--write-bindep", merged_bindep], env=env)
    # Each line comes once from the collection (its meta/execution-environment.yml) and once from the EE file
    # ("user"): either source alone gives the image everything.
    for merged, source in ((merged_pip, "requirements.txt"), (merged_bindep, "bindep.txt")):
        want = sorted(requirement_lines(REPO / source))
        for origin in ("rtvirt.kvm", "user"):
            got = sorted(line for line, where in origins(merged) if where == origin)
            assert got == want, "%s from %s in the image: %s, not %s (%s)" % (source, origin, got, want, proc.stdout)


def test_requirements_name_every_third_party_import_of_the_plugins():
    imported = set()
    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"ansible", "ansible_collections", "__future__"})
    assert third_party, "no third-party import found in plugins/; the walk is broken"
    dists = importlib.metadata.packages_distributions()
    unknown = [name for name in third_party if name not in dists]
    assert not unknown, "plugins import %s, which no installed distribution provides" % unknown
    needed = sorted({canonicalize_name(d) for name in third_party for d in dists[name]})
    assert needed == pip_names(REPO / "requirements.txt"), \
        "plugins/ import %s (from %s); requirements.txt names %s" % (needed, third_party, pip_names(REPO / "requirements.txt"))


def test_bindep_builds_libvirt_python_on_both_families():
    assert bindep_packages(RPM + ("compile",)) == ["gcc", "libvirt-devel", "libvirt-libs", "pkgconf-pkg-config", "python3-devel"]
    assert bindep_packages(DPKG + ("compile",)) == ["gcc", "libvirt-dev", "libvirt0", "pkg-config", "python3-dev"]


def test_bindep_keeps_compilers_out_of_the_image():
    assert bindep_packages(RPM + ("default",)) == ["libvirt-libs"]
    assert bindep_packages(DPKG + ("default",)) == ["libvirt0"]
