"""The built artifact holds the collection, not the workshop, and works from where an operator installs it.

galaxy.yml's build_ignore decides what ships. These tests build the tarball from this checkout, read what is
in it, install it into a collections path of its own (tests/artifact/conftest.py) and from there render every
module's and role's documentation, import every plugin the way a run loads it, and syntax-check every playbook.
A module_util, role file or playbook that build_ignore drops fails here, named.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from tests.support.artifact import BIN, REPO, run

pytestmark = pytest.mark.artifact

# What an installed collection is: Ansible loads plugins/, roles/, playbooks/ and meta/; docs/, README.md,
# LICENSE and the released changelog are for the person who installed it; bindep.txt and requirements.txt are
# what meta/execution-environment.yml points ansible-builder at. MANIFEST.json and FILES.json are the build's.
SHIPPED_TOP = {"plugins", "roles", "playbooks", "meta", "docs", "changelogs", "README.md", "LICENSE",
               "CHANGELOG.rst", "CHANGELOG.md", "bindep.txt", "requirements.txt", "MANIFEST.json", "FILES.json"}
SHIPPED_TREES = ("plugins", "roles", "playbooks", "meta", "docs")
SHIPPED_FILES = ("README.md", "LICENSE", "changelogs/changelog.yaml", "bindep.txt", "requirements.txt",
                 "meta/runtime.yml", "meta/execution-environment.yml", "MANIFEST.json", "FILES.json")
# The workshop, named so that a leak reads as what it is.
WORKSHOP = ("hack", "bench", "tests", "extensions", "inventories", ".ci", ".venv", ".git", "ansible.cfg",
            "pytest.ini", ".ansible-lint", ".gitignore", "execution-environment.yml", "ee-requirements.yml",
            "changelogs/fragments", "changelogs/config.yaml")


def checkout_files(tree):
    """Files under tree in this checkout that an artifact must carry (bytecode is never shipped)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / tree).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def modules():
    return sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")


def roles():
    return sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())


def playbooks():
    return sorted(p.stem for p in (REPO / "playbooks").glob("*.yml"))


def test_the_workshop_stays_out(artifact):
    leaked = sorted(w for w in WORKSHOP if w in artifact.members)
    assert not leaked, "%s ships %s: add them to galaxy.yml build_ignore" % (artifact.tarball.name, leaked)
    top = {m.split("/", 1)[0] for m in artifact.members}
    unknown = sorted(top - SHIPPED_TOP)
    assert not unknown, ("%s ships %s, which an installed collection does not use: add them to galaxy.yml "
                         "build_ignore, or to SHIPPED_TOP in %s if operators need them"
                         % (artifact.tarball.name, unknown, pathlib.Path(__file__).relative_to(REPO)))
    changelogs = sorted(m for m in artifact.members if m.startswith("changelogs/"))
    assert changelogs == ["changelogs/changelog.yaml"], changelogs


@pytest.mark.parametrize("tree", SHIPPED_TREES)
def test_the_collection_ships_whole(artifact, tree):
    files = checkout_files(tree)
    assert files, "the checkout has no %s/" % tree
    missing = [f for f in files if f not in artifact.members]
    assert not missing, "%s lacks %s: galaxy.yml build_ignore drops them" % (artifact.tarball.name, missing)


def test_the_collection_files_are_there(artifact):
    missing = [f for f in SHIPPED_FILES if f not in artifact.members]
    assert not missing, "%s lacks %s" % (artifact.tarball.name, missing)


def test_the_manifest_names_this_collection(installed, galaxy_meta):
    info = json.loads((installed.root / "MANIFEST.json").read_text())["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == \
        (galaxy_meta["namespace"], galaxy_meta["name"], galaxy_meta["version"])


def test_only_the_installed_artifact_is_visible(installed, galaxy_meta):
    # Guards the isolation the other tests rely on: had Ansible found the checkout (through the
    # .venv/ansible_collections link) they would pass on a broken artifact.
    proc = run([BIN / "ansible-galaxy", "collection", "list", "--format", "json"], env=installed.env)
    fqcn = "%s.%s" % (galaxy_meta["namespace"], galaxy_meta["name"])
    holding = {path: found[fqcn]["version"] for path, found in json.loads(proc.stdout).items() if fqcn in found}
    assert holding == {str(installed.root.parent.parent): galaxy_meta["version"]}, holding


def test_every_plugin_imports_from_the_artifact(installed):
    # ansible-doc and --syntax-check read modules without importing them; a run imports each module and its
    # module_utils (AnsiballZ) and each filter plugin on the controller. Import them all from the installed
    # tree, in a fresh interpreter that sees that tree only.
    names = sorted(".".join(("ansible_collections", "rtvirt", "kvm") + p.relative_to(installed.root).with_suffix("").parts)
                   for p in (installed.root / "plugins").rglob("*.py") if p.stem != "__init__")
    assert any(".modules." in n for n in names) and any(".module_utils." in n for n in names), names
    script = (
        "import importlib, sys\n"
        "sys.path[:0] = [sys.argv[1]]\n"
        "bad = []\n"
        "for name in sys.argv[2:]:\n"
        "    try:\n"
        "        mod = importlib.import_module(name)\n"
        "        assert mod.__file__.startswith(sys.argv[1]), (name, mod.__file__)\n"
        "    except Exception as exc:\n"
        "        bad.append('%s: %s: %s' % (name, type(exc).__name__, exc))\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(installed.collections_path)] + names,
                          env=installed.env, cwd=installed.collections_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, "plugins that do not import from the artifact:\n%s%s" % (proc.stdout, proc.stderr)


@pytest.mark.parametrize("module", modules())
def test_module_docs_render_from_the_artifact(installed, module):
    fqcn = "rtvirt.kvm." + module
    proc = run([BIN / "ansible-doc", fqcn], env=installed.env)
    header = "> MODULE %s (%s)" % (fqcn, installed.root / "plugins" / "modules" / (module + ".py"))
    assert header in proc.stdout, "ansible-doc %s did not render it from the artifact:\n%s%s" % (fqcn, proc.stdout[:400], proc.stderr)
    assert "[WARNING]" not in proc.stderr and "[ERROR]" not in proc.stderr, proc.stderr
    for section in ("OPTIONS", "EXAMPLES:", "RETURN VALUES:"):
        assert section in proc.stdout, "ansible-doc %s has no %s" % (fqcn, section)


@pytest.mark.parametrize("role", roles())
def test_role_docs_render_from_the_artifact(installed, role):
    fqcn = "rtvirt.kvm." + role
    proc = run([BIN / "ansible-doc", "-t", "role", fqcn], env=installed.env)
    text = proc.stdout.replace("*", "")  # without colour, ansible-doc marks names as *name*
    assert "> ROLE: %s (%s)" % (fqcn, installed.root) in text, \
        "ansible-doc -t role %s did not render it from the artifact:\n%s%s" % (fqcn, proc.stdout[:400], proc.stderr)
    assert "ENTRY POINT: main" in text, proc.stdout[:400]
    assert "[WARNING]" not in proc.stderr and "[ERROR]" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("form", ["fqcn", "import_playbook"])
@pytest.mark.parametrize("playbook", playbooks())
def test_playbooks_parse_from_the_artifact(installed, playbook, form, tmp_path):
    # AWX/Controller job templates and ansible-navigator run a playbook file of a project, so the README's
    # operators wrap the collection's playbook in one import_playbook line; plain ansible-playbook takes the name.
    fqcn = "rtvirt.kvm." + playbook
    target = fqcn
    if form == "import_playbook":
        target = tmp_path / "site.yml"
        target.write_text("---\n- name: rtvirt.kvm's %s\n  ansible.builtin.import_playbook: %s\n" % (playbook, fqcn))
    # Interpreter discovery is broken on the project's machines; name the interpreter, as operators' inventories do.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: %s\n" % sys.executable)
    proc = run([BIN / "ansible-playbook", "-i", inventory, target, "--syntax-check"], env=installed.env, cwd=tmp_path)
    assert "playbook: " in proc.stdout, proc.stdout
    if form == "fqcn":
        assert str(installed.root / "playbooks" / (playbook + ".yml")) in proc.stdout, \
            "%s was not read from the artifact: %s" % (fqcn, proc.stdout)
