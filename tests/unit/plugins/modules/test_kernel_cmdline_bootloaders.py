# -*- coding: utf-8 -*-
"""kernel_cmdline through main() on copies of recorded trees: the argv it runs (through a stand-in for the host's
command runner, which edits the copy as grubby would), check mode, idempotency, removal and the refusals."""
from __future__ import annotations

import pathlib
import re
import shutil
from unittest import mock

import pytest

from _module_runner import run_module
from ansible.module_utils import basic
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan as hs
from ansible_collections.rtvirt.kvm.plugins.modules import kernel_cmdline

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "bootloader"
PARAMS = {"isolcpus": "managed_irq,domain,2-3", "nohz_full": "2-3", "rcu_nocbs": "2-3", "irqaffinity": "0-1"}
WORDS = "isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"


def key(word):
    return word.split("=", 1)[0]


class FakeGrubby:
    """grubby's effect on the tree: --update-kernel=ALL rewrites every entry's literal options (or grubenv's
    kernelopts where entries point to it); --info=DEFAULT prints the default entry's args. Anything else fails."""

    def __init__(self, root):
        self.root, self.calls = pathlib.Path(root), []

    def entries(self):
        return sorted((self.root / "boot/loader/entries").glob("*.conf"))

    def grubenv(self):
        return self.root / "boot/grub2/grubenv"

    def edit(self, words, add, remove):
        keys = {key(w) for w in add} | set(remove)
        return [w for w in words if key(w) not in keys] + add

    def __call__(self, argv, **_kwargs):
        self.calls.append(list(argv))
        if argv[:2] == ["grubby", "--update-kernel=ALL"]:
            add = [a[len("--args="):].split() for a in argv if a.startswith("--args=")]
            remove = [a[len("--remove-args="):].split() for a in argv if a.startswith("--remove-args=")]
            add, remove = (add[0] if add else []), (remove[0] if remove else [])
            env = self.grubenv().read_text()
            match = re.search(r"^kernelopts=(.*)$", env, re.M)
            if match:
                new = " ".join(self.edit(match.group(1).split(), add, remove))
                self.grubenv().write_text(env.replace(match.group(0), "kernelopts=" + new))
            for path in self.entries():
                lines = []
                for line in path.read_text().splitlines():
                    if line.startswith("options ") and "$kernelopts" not in line:
                        line = "options " + " ".join(self.edit(line.split()[1:], add, remove))
                    lines.append(line)
                path.write_text("\n".join(lines) + "\n")
            return 0, "", ""
        if argv == ["grubby", "--info=DEFAULT"]:
            env = self.grubenv().read_text()
            saved = re.search(r"^saved_entry=(.*)$", env, re.M)
            # Without saved_entry any entry will do: every entry of these trees has the same options.
            path = [p for p in self.entries() if not saved or p.stem == saved.group(1)][-1]
            options = re.search(r"^options (.*)$", path.read_text(), re.M).group(1).split()
            kernelopts = re.search(r"^kernelopts=(.*)$", env, re.M)
            words = []
            for word in options:
                if word == "$kernelopts":
                    words.extend(kernelopts.group(1).split())
                elif not word.startswith("$"):
                    words.append(word)
            return 0, 'index=0\nkernel="/boot/vmlinuz"\nargs="%s"\nroot="/dev/mapper/rhel-root"\n' % " ".join(words), ""
        return 127, "", "%s: not a command this test expects" % argv[0]


@pytest.fixture
def host(tmp_path):
    def make(name):
        root = tmp_path / name
        shutil.copytree(str(FIXTURES / name), str(root))
        proc = tmp_path / "cmdline"
        proc.write_text("BOOT_IMAGE=(hd0,msdos1)/vmlinuz root=/dev/mapper/rhel-root ro quiet\n")
        return root, {"root": str(root), "proc_cmdline": str(proc)}
    return make


def snapshot(root):
    return {str(p): p.read_bytes() for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


def run(args, runner, **kwargs):
    # The host's command runner replaced at its one door: ``runner(argv)`` answers instead of the host.
    with mock.patch.object(basic.AnsibleModule, "run_command", lambda _self, argv, **kwargs: runner(argv, **kwargs)):
        return run_module(kernel_cmdline, args, **kwargs)


@pytest.mark.parametrize("name", ["rhel9", "rhel8"])
def test_bls_check_apply_idempotent(host, name):
    root, args = host(name)
    args = dict(args, params=PARAMS)
    grubby = FakeGrubby(root)
    before = snapshot(root)
    checked = run(args, grubby, check_mode=True, diff=True)
    assert checked["changed"] and checked["bootloader"] == "bls" and grubby.calls == []
    assert snapshot(root) == before
    assert checked["commands"] == [["grubby", "--update-kernel=ALL", "--args=" + WORDS], ["grubby", "--info=DEFAULT"]]
    assert WORDS in checked["diff"]["after"] and WORDS not in checked["diff"]["before"]
    applied = run(args, grubby)
    assert applied["changed"] and not applied.get("failed"), applied
    assert grubby.calls == checked["commands"] and applied["commands"] == checked["commands"]
    assert applied["cmdline"].endswith(WORDS) and applied["reboot_required"]
    assert applied["pending"] == ["isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity"]
    grubby.calls = []
    again = run(args, grubby)
    assert not again["changed"] and again["commands"] == [] and grubby.calls == []
    assert again["reboot_required"]


def test_bls_removal_and_bare_flags(host):
    root, args = host("fedora40")
    grubby = FakeGrubby(root)
    result = run(dict(args, params={"nosoftlockup": None}, absent=["rhgb", "quiet"]), grubby)
    assert grubby.calls[0] == ["grubby", "--update-kernel=ALL", "--args=nosoftlockup", "--remove-args=rhgb quiet"]
    assert not result.get("failed") and result["changed"], result
    assert grubby.calls[1] == ["grubby", "--info=DEFAULT"] and len(grubby.calls) == 2
    for path in (root / "boot/loader/entries").glob("*.conf"):
        text = path.read_text()
        assert "rhgb" not in text and " quiet" not in text and "nosoftlockup" in text


def test_bls_read_back_that_differs_fails(host):
    root, args = host("rhel9")

    def stale(argv, **kwargs):   # grubby "succeeds" but changes nothing
        if argv == ["grubby", "--info=DEFAULT"]:
            return 0, 'args="ro crashkernel=1G-4G:192M"\n', ""
        return 0, "", ""

    result = run(dict(args, params=PARAMS), stale)
    assert result.get("failed") and "still do not match for isolcpus, nohz_full, rcu_nocbs, irqaffinity" in result["msg"]


def test_bls_parameter_from_tuned_is_refused_before_anything_runs(host):
    root, args = host("rhel9")
    env = root / "boot/grub2/grubenv"
    env.write_text(env.read_text().replace("boot_success=1\n", "boot_success=1\ntuned_params=isolcpus=4-7\n", 1))
    grubby = FakeGrubby(root)
    result = run(dict(args, params=PARAMS), grubby)
    assert result.get("failed") and "$tuned_params" in result["msg"] and "nothing run" in result["msg"]
    assert grubby.calls == []


@pytest.mark.parametrize("name, variable_line", [
    ("debian12", 'GRUB_CMDLINE_LINUX="%s"' % WORDS),
    ("ubuntu2204", 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 %s"' % WORDS),
])
def test_debian_family_edits_the_defaults_file_and_runs_update_grub(host, name, variable_line):
    root, args = host(name)
    calls = []

    def runner(argv, **kwargs):
        calls.append(list(argv))
        return 0, "", ""

    checked = run(dict(args, params=PARAMS), runner, check_mode=True)
    assert checked["changed"] and checked["commands"] == [["update-grub"]] and calls == []
    applied = run(dict(args, params=PARAMS), runner)
    assert applied["bootloader"] == "grub" and calls == [["update-grub"]]
    assert variable_line in (root / "etc/default/grub").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet' in (root / "etc/default/grub").read_text()
    again = run(dict(args, params=PARAMS), runner)
    assert not again["changed"] and again["commands"] == [] and calls == [["update-grub"]]


def test_nothing_recognised_does_nothing_or_refuses(host):
    root, args = host("unknown")
    before = snapshot(root)
    skipped = run(dict(args, params=PARAMS), FakeGrubby(root))
    assert not skipped["changed"] and skipped["bootloader"] == "none" and "looked for" in skipped["msg"]
    refused = run(dict(args, params=PARAMS, require_bootloader=True), FakeGrubby(root))
    assert refused.get("failed") and refused["msg"].startswith("no boot loader recognised below %s" % root)
    assert snapshot(root) == before


def test_bls_without_grubby_fails_naming_grubby(host):
    root, args = host("bls-no-grubby")
    before = snapshot(root)
    result = run(dict(args, params=PARAMS), FakeGrubby(root))
    assert result.get("failed") and "install grubby" in result["msg"] and snapshot(root) == before


def test_kernelstub_is_named_and_left_alone(host):
    root, args = host("popos2204")
    before = snapshot(root)
    grubby = FakeGrubby(root)
    result = run(dict(args, params=PARAMS), grubby)
    assert not result["changed"] and result["bootloader"] == "kernelstub" and grubby.calls == []
    assert any("kernelstub recognised" in w for w in result["warnings"])
    assert snapshot(root) == before


@pytest.mark.parametrize("name", ["rhel9", "rhel8", "fedora40", "debian12", "ubuntu2204", "unknown", "popos2204",
                                  "bls-no-grubby"])
@pytest.mark.parametrize("running", ["ro quiet", "ro quiet " + WORDS])
def test_host_plan_agrees_with_kernel_cmdline(host, name, running):
    root, args = host(name)
    pathlib.Path(args["proc_cmdline"]).write_text(running + "\n")
    reasons, reboot = hs.check_cmdline("/etc/default/grub", PARAMS, proc_cmdline=args["proc_cmdline"], root=str(root))
    module = run(dict(args, params=PARAMS), FakeGrubby(root), check_mode=True)
    if module.get("failed"):
        assert reasons, module["msg"]     # the plan calls pending what the task fails on
        return
    assert bool(reasons) == (module["changed"] or module["reboot_required"]), (reasons, module)
    assert reboot == module["reboot_required"]


def test_host_plan_finds_converged_bls_entries_converged(host):
    root, args = host("rhel9")
    run(dict(args, params=PARAMS), FakeGrubby(root))
    pathlib.Path(args["proc_cmdline"]).write_text("ro " + WORDS + "\n")
    assert hs.check_cmdline("/etc/default/grub", PARAMS, proc_cmdline=args["proc_cmdline"], root=str(root)) == ([], False)
