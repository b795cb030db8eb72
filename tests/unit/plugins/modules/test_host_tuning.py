# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_tuning and its planner against fake trees: check mode writes nothing, a second run changes nothing,
PREEMPT_RT priorities (this machine is not RT), TuneD left alone, bad input refused before any change."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _module_runner import run_module  # noqa: E402

from ansible_collections.rtvirt.kvm.plugins.modules import host_tuning  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_tuning  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist  # noqa: E402

PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000


def _stat(pid, comm, flags, policy=0, priority=0):
    fields = ["S", "0", "0", "0", "0", "0", str(flags)] + ["0"] * 29 + ["0", str(priority), str(policy)] + ["0"] * 5
    return "%d (%s) %s\n" % (pid, comm, " ".join(fields))


class Tree(object):
    """A fake /proc, /sys and /etc: knob files are plain files; thread affinities and policies live in dicts the
    fake gate updates (and the fake /proc shows)."""

    def __init__(self, root, realtime_kernel=False):
        self.root = root
        self.proc, self.sys, self.etc = str(root / "proc"), str(root / "sys"), str(root / "etc")
        self.threads = {}
        self.write(self.sys + "/devices/system/cpu/online", "0-3\n")
        self.write(self.sys + "/devices/virtual/workqueue/cpumask", "f\n")
        self.write(self.sys + "/devices/virtual/workqueue/writeback/cpumask", "f\n")
        self.write(self.sys + "/kernel/mm/ksm/run", "1\n")
        for name, value in (("kvmclock_periodic_sync", "Y"), ("nx_huge_pages", "Y")):
            self.write(self.sys + "/module/kvm/parameters/" + name, value + "\n")
        for module in ("kvm", "kvm_intel"):
            self.write(self.sys + "/module/%s/initstate" % module, "live\n")   # loadable, not built in
        self.write(self.sys + "/module/kvm_intel/parameters/ple_gap", "128\n", mode=0o444)

        self.write(self.sys + "/devices/system/machinecheck/machinecheck0/ignore_ce", "0\n")
        for name, value in (("kernel/timer_migration", "1"), ("vm/stat_interval", "1"),
                            ("kernel/hung_task_timeout_secs", "120"), ("kernel/nmi_watchdog", "1")):
            self.write(self.proc + "/sys/" + name, value + "\n")
        if realtime_kernel:
            self.write(self.sys + "/kernel/realtime", "1\n")
        self.thread(2, "kthreadd", PF_KTHREAD, {0, 1, 2, 3})
        self.thread(15, "rcu_preempt", PF_KTHREAD, {0, 1, 2, 3})
        self.thread(20, "ksoftirqd/2", PF_KTHREAD | PF_NO_SETAFFINITY, {2})
        self.thread(21, "kworker/u8:0", PF_KTHREAD | PF_NO_SETAFFINITY, {0, 1, 2, 3})
        self.thread(22, "rcuc/2", PF_KTHREAD | PF_NO_SETAFFINITY, {2})
        self.thread(23, "ktimers/2", PF_KTHREAD | PF_NO_SETAFFINITY, {2})
        self.thread(30, "kthreadd-lookalike", PF_KTHREAD, {0, 1})
        self.thread(100, "bash", 0, {0, 1, 2, 3})

    def write(self, path, text, mode=0o644):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)

    def read(self, path):
        with open(path) as handle:
            return handle.read()

    def thread(self, pid, comm, flags, cpus, policy=0, priority=0):
        self.threads[pid] = [comm, flags, set(cpus), policy, priority]
        self._show(pid)

    def _show(self, pid):
        comm, flags, cpus, policy, priority = self.threads[pid]
        base = "%s/%d" % (self.proc, pid)
        self.write(base + "/stat", _stat(pid, comm, flags, policy, priority))
        self.write(base + "/task/%d/stat" % pid, _stat(pid, comm, flags, policy, priority))
        self.write(base + "/task/%d/status" % pid, "Name:\t%s\nCpus_allowed_list:\t%s\n" % (comm, format_cpulist(cpus)))
        self.write(base + "/comm", comm + "\n")

    def setaffinity(self, pid, cpus):
        self.threads[pid][2] = set(cpus)
        self._show(pid)

    def setscheduler(self, pid, policy, priority):
        self.threads[pid][3:5] = [policy, priority]
        self._show(pid)

    def snapshot(self):
        found = {}
        for top, _dirs, files in os.walk(str(self.root)):
            for name in files:
                found[os.path.join(top, name)] = self.read(os.path.join(top, name))
        return found

    def args(self, **extra):
        return dict(dict(realtime_cpus="2-3", proc_root=self.proc, sys_root=self.sys,
                         modprobe_file=self.etc + "/modprobe.d/rtvirt-kvm.conf",
                         sysctl_file=self.etc + "/sysctl.d/91-rtvirt-kvm-tuning.conf",
                         tuned_dir=self.etc + "/tuned", tuned_profiles_dir=str(self.root / "usr/lib/tuned")), **extra)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    made = Tree(tmp_path)
    gate = _host_tuning.Gate(setaffinity=made.setaffinity, setscheduler=made.setscheduler)
    monkeypatch.setattr(host_tuning, "GATE", gate)
    return made


def test_check_mode_writes_nothing_then_a_run_converges_and_a_second_changes_nothing(tree):
    before = tree.snapshot()
    checked = run_module(host_tuning, tree.args(), check_mode=True, diff=True)
    assert not checked.get("failed"), checked.get("msg")
    assert checked["changed"] and tree.snapshot() == before
    items = {c["item"] for c in checked["changes"]}
    assert items == {"workqueue", "kthreads", "ksm", "kvm", "sysctl", "mce"}
    assert checked["diff"]

    done = run_module(host_tuning, tree.args())
    assert not done.get("failed"), done.get("msg")
    assert done["changed"]
    assert tree.read(tree.sys + "/devices/virtual/workqueue/cpumask").strip() == "3"
    assert tree.read(tree.sys + "/devices/virtual/workqueue/writeback/cpumask").strip() == "3"
    assert tree.read(tree.sys + "/kernel/mm/ksm/run").strip() == "2"
    assert tree.read(tree.sys + "/module/kvm/parameters/nx_huge_pages").strip() == "N"
    assert tree.read(tree.sys + "/devices/system/machinecheck/machinecheck0/ignore_ce").strip() == "1"
    assert tree.read(tree.proc + "/sys/kernel/timer_migration").strip() == "0"
    assert tree.read(tree.proc + "/sys/kernel/hung_task_timeout_secs").strip() == "600"
    assert "options kvm kvmclock_periodic_sync=N nx_huge_pages=N" in tree.read(tree.etc + "/modprobe.d/rtvirt-kvm.conf")
    assert "options kvm_intel ple_gap=0" in tree.read(tree.etc + "/modprobe.d/rtvirt-kvm.conf")
    assert "vm.stat_interval = 10" in tree.read(tree.etc + "/sysctl.d/91-rtvirt-kvm-tuning.conf")
    # Movable kernel threads moved; per-CPU ones, PF_NO_SETAFFINITY ones and userspace stay.
    assert tree.threads[2][2] == {0, 1} and tree.threads[15][2] == {0, 1}
    assert tree.threads[20][2] == {2} and tree.threads[21][2] == {0, 1, 2, 3} and tree.threads[100][2] == {0, 1, 2, 3}
    # ple_gap is read-only here: it waits for a reload of kvm_intel.
    assert done["reboot_required"]
    assert any("kvm_intel.ple_gap" in r and "reloading kvm_intel" in r for r in done["reboot_reasons"])

    again = run_module(host_tuning, tree.args())
    assert not again.get("failed") and not again["changed"], again.get("changes")
    assert again["reboot_required"]


def test_rt_priorities_only_on_preempt_rt(tree):
    assert not [c for c in run_module(host_tuning, tree.args())["changes"] if c["item"] == "rt_priorities"]
    tree.write(tree.sys + "/kernel/realtime", "1\n")
    checked = run_module(host_tuning, tree.args(), check_mode=True)
    wanted = {c["target"]: c["after"] for c in checked["changes"] if c["item"] == "rt_priorities"}
    assert wanted == {"20": "1:2", "22": "1:4", "23": "1:2"}
    run_module(host_tuning, tree.args())
    assert [tree.threads[p][3:5] for p in (20, 22, 23)] == [[1, 2], [1, 4], [1, 2]]
    assert not run_module(host_tuning, tree.args())["changed"]


def test_each_item_is_switchable(tree):
    before = tree.snapshot()
    off = dict(workqueue=False, kthreads=False, ksm=False, kvm=False, rt_priorities=False, mce=False, sysctl={})
    result = run_module(host_tuning, tree.args(**off))
    assert not result.get("failed") and not result["changed"] and tree.snapshot() == before


def _tuned(tree, daemon):
    lib = str(tree.root / "usr/lib/tuned")
    tree.write(lib + "/realtime/tuned.conf", "[main]\ninclude=network-latency\n[sysctl]\nkernel.timer_migration = 0\n"
               "[sysfs]\n/sys/devices/virtual/workqueue/cpumask = ${not_isolated_cpumask}\n"
               "[scheduler]\nisolated_cores=${isolated_cores}\n")
    tree.write(lib + "/realtime-virtual-host/tuned.conf", "[main]\ninclude=realtime\n[sysfs]\n"
               "/sys/kernel/mm/ksm/run = 2\n[script]\nscript=${i:PROFILE_DIR}/script.sh\n")
    tree.write(lib + "/realtime-virtual-host/script.sh", "start() {\n    setup_kvm_mod_low_latency\n}\n")
    tree.write(tree.etc + "/tuned/active_profile", "realtime-virtual-host\n")
    if daemon:
        tree.thread(500, "tuned", 0, {0, 1})
    else:
        tree.write(tree.etc + "/tuned/tuned-main.conf", "daemon = 0\n")


@pytest.mark.parametrize("daemon", [True, False])
def test_active_tuned_keeps_its_settings(tree, daemon):
    _tuned(tree, daemon)
    result = run_module(host_tuning, tree.args())
    assert not result.get("failed"), result.get("msg")
    assert result["left_to_tuned"] == ["ksm", "kthreads", "kvm", "workqueue", "sysctl kernel.timer_migration"]
    assert any("TuneD is active" in w and "ksm" in w for w in result["warnings"])
    assert {c["item"] for c in result["changes"]} == {"sysctl", "mce"}
    assert tree.read(tree.sys + "/kernel/mm/ksm/run").strip() == "1"
    assert tree.read(tree.proc + "/sys/kernel/timer_migration").strip() == "1"
    assert "timer_migration" not in tree.read(tree.etc + "/sysctl.d/91-rtvirt-kvm-tuning.conf")


def test_installed_but_inactive_tuned_is_not_respected(tree):
    _tuned(tree, daemon=True)
    os.remove(tree.proc + "/500/comm")   # the daemon is gone
    result = run_module(host_tuning, tree.args(), check_mode=True)
    assert result["left_to_tuned"] == [] and result["tuned"] is None


@pytest.mark.parametrize("extra, words", [
    ({"sysctl": {"kernel.timer_migration": "0; reboot"}}, "sysctl kernel.timer_migration: value"),
    ({"sysctl": {"../../etc/passwd": "0"}}, "sysctl '../../etc/passwd'"),
    ({"kvm_params": {"kvm": {"nx_huge_pages": "N\noptions evil x=1"}}}, "kvm parameter kvm.nx_huge_pages"),
    ({"kvm_params": {"kvm": "N"}}, "kvm module kvm"),
    ({"realtime_cpus": "0-3"}, "housekeeping_cpus is empty"),
    ({"housekeeping_cpus": "1-2"}, "overlap on 2"),
    ({"modprobe_file": "relative.conf"}, "modprobe_file 'relative.conf'"),
])
def test_bad_input_fails_before_any_change(tree, extra, words):
    before = tree.snapshot()
    result = run_module(host_tuning, tree.args(**extra))
    assert result.get("failed") and words in result["msg"], result.get("msg")
    assert tree.snapshot() == before


def test_cmdline_params_for_boot():
    settings = {"workqueue": True, "kvm": {"kvm": {"nx_huge_pages": "N"}}}
    assert _host_tuning.cmdline_params("0-1", settings, sys_root="/nonexistent", release="6.1.0-18-amd64") == {}
    assert _host_tuning.cmdline_params("0-1", settings, sys_root="/nonexistent", release="6.6.0") == \
        {"workqueue.unbound_cpus": "0-1"}


def test_builtin_kvm_goes_on_the_command_line(tmp_path):
    os.makedirs(str(tmp_path / "module/kvm/parameters"))
    params = _host_tuning.cmdline_params("0", {"kvm": {"kvm": {"nx_huge_pages": "N"}}}, sys_root=str(tmp_path),
                                         release="5.14")
    assert params == {"kvm.nx_huge_pages": "N"}


class _Warner(object):
    def __init__(self):
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


def _plan_call(tree, **options):
    from ansible_collections.rtvirt.kvm.plugins.modules import host_plan
    spec = _host_tuning.argument_spec()
    given = dict({key: value["default"] for key, value in spec.items()}, modprobe_file=tree.args()["modprobe_file"],
                 sysctl_file=tree.args()["sysctl_file"], **options)
    return host_plan.check_tuning(_Warner(), given, "2-3", "0-1", proc_root=tree.proc, sys_root=tree.sys,
                                  tuned_dir=tree.etc + "/tuned", tuned_profiles_dir=str(tree.root / "usr/lib/tuned"))


def test_host_plan_plans_the_area_with_the_modules_planner(tree):
    planned = _plan_call(tree)
    checked = run_module(host_tuning, tree.args(), check_mode=True)
    assert len(planned["reasons"]) == len(checked["changes"]) + len(checked["reboot_reasons"])
    assert planned["verify_kinds"] == ["workqueue_cpumask", "kthread_on_isolated"]
    run_module(host_tuning, tree.args())
    after = _plan_call(tree)
    # Converged but for ple_gap, which is read-only until kvm_intel is reloaded.
    assert after["reasons"] == after["reboot_reasons"] and len(after["reboot_reasons"]) == 1
    assert _plan_call(tree, kthreads=False, workqueue=False)["verify_kinds"] == []


def test_host_plan_leaves_tuneds_items_out_of_the_plan_and_the_command_line(tree):
    _tuned(tree, daemon=True)
    planned = _plan_call(tree)
    assert planned["left_to_tuned"][:4] == ["ksm", "kthreads", "kvm", "workqueue"]
    assert planned["verify_kinds"] == []
    assert not [key for key in planned["cmdline_params"] if key.startswith(("kvm", "workqueue"))]
    assert not [r for r in planned["reasons"] if r.startswith(("ksm", "kthreads", "kvm", "workqueue"))]
