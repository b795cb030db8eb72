# -*- coding: utf-8 -*-
"""Boot loader detection and the grubby plan, on trees recorded from real hosts (tests/unit/fixtures/bootloader)."""
from __future__ import annotations

import pathlib

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils import _bootloader as bl

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "bootloader"
PARAMS = {"isolcpus": "managed_irq,domain,2-3", "nohz_full": "2-3", "rcu_nocbs": "2-3", "irqaffinity": "0-1"}
ARGS = "--args=isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"


def tree(name):
    return str(FIXTURES / name)


@pytest.mark.parametrize("name, kind, family, sources, update", [
    ("rhel9", "bls", "RedHat", ["/boot/loader/entries/*.conf", "/boot/grub2/grubenv"], None),
    ("rhel8", "bls", "RedHat", ["/boot/loader/entries/*.conf", "/boot/grub2/grubenv"], None),
    ("fedora40", "bls", "RedHat", ["/boot/loader/entries/*.conf", "/boot/grub2/grubenv"], None),
    ("debian12", "grub", "Debian", ["/etc/default/grub"], ["update-grub"]),
    ("ubuntu2204", "grub", "Debian", ["/etc/default/grub"], ["update-grub"]),
    ("popos2204", "kernelstub", "Debian", ["/etc/kernelstub/configuration"], None),
])
def test_detects_the_boot_loader(name, kind, family, sources, update):
    found = bl.detect(tree(name))
    assert (found.kind, found.family, found.sources, found.update_command) == (kind, family, sources, update)
    assert found.managed == (kind in ("bls", "grub"))


def test_bls_wins_over_the_grub_defaults_a_rhel_host_also_has():
    # RHEL 9 and Fedora keep /etc/default/grub (GRUB_ENABLE_BLSCFG=true); the entries are what boots.
    assert (FIXTURES / "rhel9" / "etc/default/grub").is_file()
    assert bl.detect(tree("rhel9")).kind == "bls"


def test_grub_without_update_grub_uses_the_generator_that_exists(tmp_path):
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX=""\n')
    assert bl.detect(str(tmp_path)).update_command == ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/grub2-mkconfig").write_text("")
    assert bl.detect(str(tmp_path)).update_command == ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]


def test_systemd_boot_is_recognised_not_managed(tmp_path):
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("root=UUID=1 ro quiet\n")
    found = bl.detect(str(tmp_path))
    assert found.kind == "systemd-boot" and not found.managed and found.sources == ["/etc/kernel/cmdline"]


def test_refusal_names_what_was_looked_for():
    with pytest.raises(bl.NoBootloader) as info:
        bl.detect(tree("unknown"))
    message = str(info.value)
    for looked in ("/boot/loader/entries/*.conf with grubby", "/etc/default/grub", "/etc/kernelstub/configuration",
                   "/etc/kernel/cmdline"):
        assert looked in message


def test_bls_entries_without_grubby_are_refused_naming_grubby():
    with pytest.raises(bl.BootloaderError, match="grubby is not installed: install grubby") as info:
        bl.detect(tree("bls-no-grubby"))
    assert not isinstance(info.value, bl.NoBootloader)


def test_os_release_and_family():
    release = bl.parse_os_release((FIXTURES / "ubuntu2204/etc/os-release").read_text())
    assert release["ID"] == "ubuntu" and release["VERSION_ID"] == "22.04" and bl.os_family(release) == "Debian"
    assert bl.os_family(bl.parse_os_release('ID="centos"\nID_LIKE="rhel fedora"\n')) == "RedHat"
    assert bl.os_family(bl.parse_os_release((FIXTURES / "unknown/etc/os-release").read_text())) is None


def test_rhel9_plan_is_one_grubby_call_for_every_entry():
    plan = bl.plan_bls_host(tree("rhel9"), PARAMS)
    assert plan.argv == ["grubby", "--update-kernel=ALL", ARGS]
    assert plan.default == "4f1b9d2c8e7a4b6f9c3d2e1f0a9b8c7d-5.14.0-362.8.1.el9_3.x86_64"
    assert len(plan.before) == 2
    for words in plan.after.values():
        assert words[:2] == ["root=/dev/mapper/rhel-root", "ro"]
        assert words[-4:] == ARGS[len("--args="):].split()


def test_rhel8_reads_kernelopts_from_grubenv():
    entries = bl.read_entries(tree("rhel8"))
    assert entries[0].options == ["$kernelopts", "$tuned_params"]
    plan = bl.plan_bls_host(tree("rhel8"), {"quiet": None}, absent=["rhgb"])
    # quiet is already in kernelopts: only the removal is asked for.
    assert plan.argv == ["grubby", "--update-kernel=ALL", "--remove-args=rhgb"]
    assert "rhgb" not in plan.after[entries[0].name] and "quiet" in plan.after[entries[0].name]


def test_fedora_default_is_the_newest_entry_and_the_rescue_entry_is_planned_too():
    plan = bl.plan_bls_host(tree("fedora40"), PARAMS, absent=["rhgb"])
    assert plan.default == "0c5e3f1a2b4d4e6f8a1b3c5d7e9f1a2b-6.10.12-200.fc40.x86_64"
    assert plan.argv == ["grubby", "--update-kernel=ALL", ARGS, "--remove-args=rhgb"]
    assert "0c5e3f1a2b4d4e6f8a1b3c5d7e9f1a2b-0-rescue" in plan.after


def _entries(options_per_entry):
    return [bl.Entry("e%d" % i, "/boot/loader/entries/e%d.conf" % i, "5.14.0-%d" % i, options.split())
            for i, options in enumerate(options_per_entry)]


def test_params_already_present_in_every_entry_mean_no_command():
    done = "ro quiet isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"
    plan = bl.plan_bls(_entries([done, done]), {}, PARAMS)
    assert plan.argv is None and not plan.changed and plan.after == plan.before


def test_only_what_some_entry_lacks_is_passed():
    done = "ro isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"
    older = "ro isolcpus=1 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"
    plan = bl.plan_bls(_entries([done, older]), {}, PARAMS)
    assert plan.argv == ["grubby", "--update-kernel=ALL", "--args=isolcpus=managed_irq,domain,2-3"]


def test_a_repeated_parameter_is_collapsed():
    plan = bl.plan_bls(_entries(["ro nohz_full=2-3 nohz_full=2-3"]), {}, {"nohz_full": "2-3"})
    assert plan.argv == ["grubby", "--update-kernel=ALL", "--args=nohz_full=2-3"]
    assert plan.after["e0"] == ["ro", "nohz_full=2-3"]


def test_removal_of_an_absent_key_is_nothing_to_do():
    assert bl.plan_bls(_entries(["ro quiet"]), {}, {}, absent=["rhgb"]).argv is None


def test_a_parameter_owned_by_tuned_is_refused():
    env = {"tuned_params": "isolcpus=4-7 nohz=on"}
    with pytest.raises(bl.BootloaderError, match=r"isolcpus from grubenv's \$tuned_params"):
        bl.plan_bls(_entries(["ro $tuned_params"]), env, PARAMS)


@pytest.mark.parametrize("entries, params, absent, match", [
    ([], PARAMS, (), "holds no entry"),
    (["ro"], {"quiet": None}, ["quiet"], "both set and removed"),
])
def test_bad_requests_are_refused(entries, params, absent, match):
    with pytest.raises(bl.BootloaderError, match=match):
        bl.plan_bls(_entries(entries), {}, params, absent)


class Runner:
    """Records argv; answers grubby --info like grubby does."""

    def __init__(self, args_line, rc=0):
        self.calls, self.args_line, self.rc = [], args_line, rc

    def __call__(self, argv):
        self.calls.append(argv)
        if argv == ["grubby", "--info=DEFAULT"]:
            return 0, 'index=0\nkernel="/boot/vmlinuz-5.14.0"\nargs="%s"\nroot="/dev/vda1"\n' % self.args_line, ""
        return self.rc, "", "grubby: error" if self.rc else ""


def test_apply_runs_the_plan_then_reads_back():
    plan = bl.plan_bls(_entries(["ro quiet"]), {}, {"nohz_full": "2-3"})
    runner = Runner("ro quiet nohz_full=2-3")
    assert bl.apply_bls(plan, runner, {"nohz_full": "2-3"}) == [
        ["grubby", "--update-kernel=ALL", "--args=nohz_full=2-3"], ["grubby", "--info=DEFAULT"]]
    assert runner.calls[0] == plan.argv


def test_apply_fails_when_grubby_fails_or_the_read_back_differs():
    plan = bl.plan_bls(_entries(["ro quiet"]), {}, {"nohz_full": "2-3"})
    with pytest.raises(bl.BootloaderError, match=r"failed \(rc 1\): grubby: error"):
        bl.apply_bls(plan, Runner("", rc=1), {"nohz_full": "2-3"})
    with pytest.raises(bl.BootloaderError, match="still do not match for nohz_full"):
        bl.apply_bls(plan, Runner("ro quiet nohz_full=1"), {"nohz_full": "2-3"})


def test_apply_of_an_empty_plan_runs_nothing():
    plan = bl.plan_bls(_entries(["ro nohz_full=2-3"]), {}, {"nohz_full": "2-3"})
    runner = Runner("")
    assert bl.apply_bls(plan, runner, {"nohz_full": "2-3"}) == [] and runner.calls == []
