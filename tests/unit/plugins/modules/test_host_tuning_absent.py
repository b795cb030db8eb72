# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_tuning state=absent, the way back, on the fake trees of test_host_tuning: tune, then take it back with the
same planner; check mode writes nothing, a second way back changes nothing, what the kernel's default does not say
is left and reported, TuneD's items are never touched, and host_plan's revert plan is the module's own."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _module_runner import run_module  # noqa: E402
from test_host_tuning import PF_KTHREAD, PF_NO_SETAFFINITY, _tuned, _Warner  # noqa: E402  pylint: disable=unused-import
from test_host_tuning import tree  # noqa: E402,F401  pylint: disable=unused-import

from ansible_collections.rtvirt.kvm.plugins.modules import host_plan, host_tuning  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan, _host_tuning  # noqa: E402

WORKQUEUE = "/devices/virtual/workqueue/cpumask"
WRITEBACK = "/devices/virtual/workqueue/writeback/cpumask"


def _tuned_then(tree):
    done = run_module(host_tuning, tree.args())
    assert not done.get("failed") and done["changed"], done.get("msg")
    return done


def test_absent_takes_back_what_present_did_check_mode_first_and_twice_is_nothing(tree):
    # rcu_preempt was placed on CPU 0 by someone else before host_tuning: not host_tuning's, it stays.
    tree.setaffinity(15, {0})
    _tuned_then(tree)
    assert tree.read(tree.sys + WORKQUEUE).strip() == "3" and tree.threads[2][2] == {0, 1}
    modprobe, sysctl_file = tree.args()["modprobe_file"], tree.args()["sysctl_file"]
    assert os.path.isfile(modprobe) and os.path.isfile(sysctl_file)

    before = tree.snapshot()
    checked = run_module(host_tuning, tree.args(state="absent"), check_mode=True, diff=True)
    assert not checked.get("failed"), checked.get("msg")
    assert checked["changed"] and tree.snapshot() == before
    kinds = {(c["item"], c["kind"]) for c in checked["changes"]}
    assert {("workqueue", "write"), ("kthreads", "affinity"), ("kvm", "remove"), ("sysctl", "remove"),
            ("sysctl", "write"), ("mce", "write")} <= kinds, kinds
    assert {d["before_header"] for d in checked["diff"]} >= {modprobe, sysctl_file}
    assert [d["after"] for d in checked["diff"] if d["before_header"] == modprobe] == [""]

    back = run_module(host_tuning, tree.args(state="absent"))
    assert not back.get("failed") and back["changed"], back.get("msg")
    assert tree.read(tree.sys + WORKQUEUE).strip() == "f" and tree.read(tree.sys + WRITEBACK).strip() == "f"
    # kthreadd and the thread host_tuning moved are back on every CPU; rcu_preempt (CPU 0 only) is someone else's.
    assert tree.threads[2][2] == {0, 1, 2, 3} and tree.threads[15][2] == {0}
    assert tree.threads[20][2] == {2}  # per-CPU: never moved, never moved back
    assert not os.path.exists(modprobe) and not os.path.exists(sysctl_file)
    assert tree.read(tree.proc + "/sys/kernel/timer_migration").strip() == "1"
    assert tree.read(tree.proc + "/sys/vm/stat_interval").strip() == "1"
    assert tree.read(tree.sys + "/devices/system/machinecheck/machinecheck0/ignore_ce").strip() == "0"
    assert tree.read(tree.sys + "/module/kvm/parameters/kvmclock_periodic_sync").strip() == "Y"
    # What the kernel's default does not say stays, and is reported: KSM, nx_huge_pages, hung_task, nmi_watchdog.
    assert tree.read(tree.sys + "/kernel/mm/ksm/run").strip() == "2"
    assert tree.read(tree.proc + "/sys/kernel/hung_task_timeout_secs").strip() == "600"
    warnings = " | ".join(back.get("warnings", []))
    for words in ("ksm: ", "kvm parameter kvm.nx_huge_pages: left at N", "sysctl kernel.hung_task_timeout_secs: left at 600",
                  "sysctl kernel.nmi_watchdog: left at 0"):
        assert words in warnings, (words, warnings)

    again = run_module(host_tuning, tree.args(state="absent"))
    assert not again.get("failed") and not again["changed"], again.get("changes")


def test_a_read_only_kvm_parameter_away_from_its_default_waits_for_a_reload(tree):
    tree.write(tree.sys + "/module/kvm_intel/parameters/ple_gap", "0\n", mode=0o444)
    back = run_module(host_tuning, tree.args(state="absent"))
    assert back["reboot_required"], back
    assert any("kvm_intel.ple_gap is 0, not the kernel's default 128" in r and "reloading kvm_intel" in r
               for r in back["reboot_reasons"]), back["reboot_reasons"]
    assert tree.read(tree.sys + "/module/kvm_intel/parameters/ple_gap").strip() == "0"


def test_rt_priorities_go_back_to_the_kernels_only_from_host_tunings_own_values(tree):
    tree.write(tree.sys + "/kernel/realtime", "1\n")
    tree.write(tree.sys + "/module/rcutree/parameters/kthread_prio", "1\n")
    tree.thread(24, "ksoftirqd/3", PF_KTHREAD | PF_NO_SETAFFINITY, {3})
    tree.thread(25, "ktimersoftd/3", PF_KTHREAD | PF_NO_SETAFFINITY, {3})
    _tuned_then(tree)
    tree.setscheduler(24, 1, 50)  # an operator's priority since: not host_tuning's value, so it stays
    assert [tree.threads[p][3:5] for p in (20, 22, 23, 24, 25)] == [[1, 2], [1, 4], [1, 2], [1, 50], [1, 3]]
    back = run_module(host_tuning, tree.args(state="absent"))
    assert [tree.threads[p][3:5] for p in (20, 22, 23, 24, 25)] == [[0, 0], [1, 1], [1, 1], [1, 50], [1, 3]]
    assert any("ktimersoftd/3) stays SCHED_FIFO 3" in w for w in back.get("warnings", [])), back.get("warnings")
    assert not run_module(host_tuning, tree.args(state="absent"))["changed"]


def test_absent_leaves_tuneds_items_alone(tree, monkeypatch):
    _tuned_then(tree)
    _tuned(tree, daemon=True)
    before = tree.snapshot()
    back = run_module(host_tuning, tree.args(state="absent"))
    assert back["left_to_tuned"] == ["ksm", "kthreads", "kvm", "workqueue", "sysctl kernel.timer_migration"]
    assert not {c["item"] for c in back["changes"]} & {"ksm", "kthreads", "kvm", "workqueue"}
    assert tree.read(tree.sys + WORKQUEUE) == before[tree.sys + WORKQUEUE]
    assert tree.read(tree.proc + "/sys/kernel/timer_migration").strip() == "0"
    assert os.path.exists(tree.args()["modprobe_file"]) and tree.threads[2][2] == {0, 1}


def test_switched_off_items_are_not_taken_back(tree):
    _tuned_then(tree)
    before = tree.snapshot()
    off = dict(workqueue=False, kthreads=False, ksm=False, kvm=False, rt_priorities=False, mce=False, sysctl={})
    result = run_module(host_tuning, tree.args(state="absent", **off))
    assert not result.get("failed") and not result["changed"] and tree.snapshot() == before


def _revert_call(tree, **options):
    spec = _host_tuning.argument_spec()
    given = dict({key: value["default"] for key, value in spec.items()}, modprobe_file=tree.args()["modprobe_file"],
                 sysctl_file=tree.args()["sysctl_file"], **options)
    warner = _Warner()
    answer = host_plan.check_revert_tuning(warner, given, "2-3", "0-1", "0-3", proc_root=tree.proc,
                                           sys_root=tree.sys, tuned_dir=tree.etc + "/tuned",
                                           tuned_profiles_dir=str(tree.root / "usr/lib/tuned"))
    return answer


def test_host_plans_revert_plan_is_the_modules_and_not_undone_says_only_what_is_left(tree):
    _tuned_then(tree)
    planned = _revert_call(tree)
    checked = run_module(host_tuning, tree.args(state="absent"), check_mode=True)
    assert len(planned["reasons"]) == len(checked["changes"]) and planned["reasons"]
    assert any(r == "kvm: %s exists" % tree.args()["modprobe_file"] for r in planned["reasons"]), planned["reasons"]
    run_module(host_tuning, tree.args(state="absent"))
    after = _revert_call(tree)
    assert after["reasons"] == []
    kept = _host_plan.not_undone(False, False, False, tuning=after)
    words = " | ".join(kept)
    assert "kernel.hung_task_timeout_secs: left at 600" in words and "ksm: " in words
    assert "stay until the next boot" not in words and tree.args()["modprobe_file"] not in words
    # Without the tuning area nothing about it is said.
    assert not [k for k in _host_plan.not_undone(False, False, False) if "sysctl" in k or "ksm" in k]


@pytest.mark.parametrize("state", ["present", "absent"])
def test_the_state_option_is_host_tunings_only(state):
    assert "state" not in _host_tuning.argument_spec()
    assert host_tuning.get_argument_spec()["state"]["choices"] == ["present", "absent"]
