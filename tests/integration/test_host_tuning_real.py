"""host_tuning on this machine's real kernel: the unbound workqueue cpumask, movable kernel threads, KSM, the
sysctls and (where sysfs lets them be written) KVM's parameters, before and after, in check mode and twice; the
collection's facts prove the result. Everything is put back at the end (and by the host guard, should the session
die). This kernel is not PREEMPT_RT: the priorities are unit-tested on a fake tree."""
import os
import pathlib

import pytest

from tests.support import host_guard
from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.real

KSM = pathlib.Path("/sys/kernel/mm/ksm/run")
WORKQUEUE = pathlib.Path("/sys/devices/virtual/workqueue/cpumask")


def _cpus():
    online = pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()
    last = int(online.replace(",", "-").split("-")[-1])
    assert last >= 1, "the test needs two CPUs (online: %s)" % online
    return str(last), "0-%d" % (last - 1) if last > 1 else "0"


@pytest.fixture(scope="module")
def tuned_host(tmp_path_factory):
    """The runs, shared by the tests: check mode, a real run, the facts after it, and a second run."""
    knobs, kthreads = host_guard._knobs(), host_guard._kthread_affinities()
    files = tmp_path_factory.mktemp("tuning")
    realtime, housekeeping = _cpus()
    args = {"realtime_cpus": realtime, "housekeeping_cpus": housekeeping,
            "modprobe_file": str(files / "modprobe.d" / "rtvirt-kvm.conf"),
            "sysctl_file": str(files / "sysctl.d" / "91-rtvirt-kvm-tuning.conf")}
    try:
        # Untuned as a fresh boot is (site.yml may have tuned this machine before the session), so every item has
        # something to do: KSM started (no process asks for merging: ksmd has nothing to scan), unbound
        # workqueues and kthreadd allowed on every CPU, timers migrating.
        KSM.write_text("1")
        everything = set(range(int(realtime) + 1))
        WORKQUEUE.write_text("%x" % sum(1 << cpu for cpu in everything))
        pathlib.Path("/proc/sys/kernel/timer_migration").write_text("1")
        os.sched_setaffinity(2, everything)
        before = {"knobs": host_guard._knobs(), "kthreads": host_guard._kthread_affinities()}
        runs = {"before": before, "args": args, "realtime": realtime, "housekeeping": housekeeping}
        runs["check"] = run_module("rtvirt.kvm.host_tuning", args, check=True, diff=True)
        runs["after_check"] = {"knobs": host_guard._knobs(), "kthreads": host_guard._kthread_affinities(),
                               "files": sorted(str(p) for p in files.rglob("*"))}
        runs["first"] = run_module("rtvirt.kvm.host_tuning", args)
        runs["after_first"] = {"knobs": host_guard._knobs(), "kthreads": host_guard._kthread_affinities()}
        runs["facts"] = run_module("rtvirt.kvm.cpu_isolation_facts", {"isolated_cpus": realtime})
        runs["second"] = run_module("rtvirt.kvm.host_tuning", args)
        yield runs
    finally:
        report = []
        for path, value in knobs.items():
            if pathlib.Path(path).read_text().strip() != value:
                pathlib.Path(path).write_text(value)
        host_guard._restore_kthreads(kthreads, report)


def _mask(text):
    value = int(text.replace(",", ""), 16)
    return {cpu for cpu in range(value.bit_length()) if value >> cpu & 1}


def test_check_mode_reports_and_writes_nothing(tuned_host):
    check = tuned_host["check"]
    assert not check.get("failed"), check.get("msg")
    assert check["changed"], check
    items = {change["item"] for change in check["changes"]}
    assert {"ksm", "kthreads", "sysctl", "kvm"} <= items, items
    assert "workqueue" in items
    assert "2" in {change["target"] for change in check["changes"] if change["item"] == "kthreads"}
    assert tuned_host["after_check"]["knobs"] == tuned_host["before"]["knobs"]
    unchanged = {pid for pid, record in tuned_host["before"]["kthreads"].items()
                 if tuned_host["after_check"]["kthreads"].get(pid) == record}
    assert unchanged >= set(tuned_host["before"]["kthreads"]) & set(tuned_host["after_check"]["kthreads"])
    assert tuned_host["after_check"]["files"] == []


def test_a_run_moves_what_may_move_and_the_facts_agree(tuned_host):
    first, after = tuned_host["first"], tuned_host["after_first"]
    assert not first.get("failed"), first.get("msg")
    housekeeping = {int(c) for c in tuned_host["housekeeping"].replace("-", " ").split()}
    housekeeping = set(range(min(housekeeping), max(housekeeping) + 1))
    assert _mask(after["knobs"][str(WORKQUEUE)]) == housekeeping
    assert after["knobs"][str(KSM)] == "2"
    for name, value in (("kernel/timer_migration", "0"), ("vm/stat_interval", "10"),
                        ("kernel/hung_task_timeout_secs", "600")):
        assert after["knobs"]["/proc/sys/" + name] == value
    moved = [c for c in first["changes"] if c["item"] == "kthreads"]
    assert moved, first["changes"]
    refused = {str(r["target"]) for r in first["refused"]}
    for change in moved:
        if change["target"] in after["kthreads"]:
            assert set(after["kthreads"][change["target"]][1]) == housekeeping, change
    assert not refused - {c["target"] for c in moved}
    # Per-CPU kernel threads stay where they were (ksoftirqd/N of the realtime CPU among them).
    facts = tuned_host["facts"]["ansible_facts"]["cpu_isolation"]
    kinds = {v["kind"] for v in facts["violations"]}
    assert "workqueue_cpumask" not in kinds, facts["violations"]
    assert "kthread_on_isolated" not in kinds, [v for v in facts["violations"] if v["kind"] == "kthread_on_isolated"]
    text = pathlib.Path(tuned_host["args"]["sysctl_file"]).read_text()
    assert "kernel.timer_migration = 0" in text and "vm.stat_interval = 10" in text
    assert "options kvm " in pathlib.Path(tuned_host["args"]["modprobe_file"]).read_text()


def test_kvm_parameters_are_written_or_wait_for_a_reboot(tuned_host):
    first = tuned_host["first"]
    path = pathlib.Path("/sys/module/kvm/parameters/kvmclock_periodic_sync")
    assert path.exists(), "KVM is not loaded on this machine"
    value = tuned_host["before"]["knobs"].get(str(path)) or path.read_text().strip()
    if value in ("N", "0"):
        return
    if os.stat(path).st_mode & 0o200:
        assert path.read_text().strip() == "N"
    else:
        assert first["reboot_required"]
        assert any("kvm.kvmclock_periodic_sync" in reason for reason in first["reboot_reasons"]), first


def test_a_second_run_changes_nothing(tuned_host):
    second = tuned_host["second"]
    assert not second.get("failed"), second.get("msg")
    assert not second["changed"], second["changes"]
