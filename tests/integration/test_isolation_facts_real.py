"""cpu_isolation_facts on this machine's real kernel, run through Ansible.

CPU 1 plays the isolated CPU (this host has no isolcpus=), passed as isolated_cpus=1.  The test
starts two processes of its own: one pinned with taskset to CPU 1 only, one allowed on every
online CPU.  The unpinned one is a violation (thread_on_isolated: it may wander onto the isolated
CPU).  The pinned one is not: a userspace thread whose affinity lies entirely within isolated CPUs
was put there on purpose by the operator (an RT task, a vCPU); it is listed under
threads_on_isolated instead.  Both are stopped by their PID.
"""
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = str(pathlib.Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support.ansible_runner import run_module  # noqa: E402

pytestmark = pytest.mark.real

MODULE = "rtvirt.kvm.cpu_isolation_facts"


def _affinity(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return None


def _start(argv, affinity=None):
    def pin():
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    proc = subprocess.Popen(argv, preexec_fn=pin, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until taskset has exec'ed sleep
        with open("/proc/%d/comm" % proc.pid) as handle:
            if handle.read().strip() == "sleep":
                break
        time.sleep(0.02)
    return proc


@pytest.fixture
def processes():
    if os.geteuid() != 0:
        pytest.skip("needs root to read every task")
    online = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
    if not {0, 1} <= online:
        pytest.skip("needs CPUs 0 and 1")
    started = []
    try:
        pinned = _start(["taskset", "-c", "1", "sleep", "600"])
        started.append(pinned)
        unpinned = _start(["sleep", "600"], affinity={0, 1})
        started.append(unpinned)
        assert _affinity(pinned.pid) == "1"
        assert _affinity(unpinned.pid) == "0-1"
        yield pinned.pid, unpinned.pid
    finally:
        for proc in started:
            proc.kill()
            proc.wait(timeout=10)


def test_pinned_and_unpinned_processes(processes):
    pinned, unpinned = processes
    result = run_module(MODULE, {"isolated_cpus": "1"})
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    facts = result["ansible_facts"]["cpu_isolation"]
    assert facts["isolated_cpus"] == "1"
    assert facts["housekeeping_cpus"] == "0"
    assert facts["isolated_sources"]["option"] == "1"
    assert facts["cgroup"]["mode"] in ("v1", "v2", "hybrid")
    assert facts["threads_scanned"] > 10

    leaks = {v["pid"]: v for v in facts["violations"] if v["kind"] == "thread_on_isolated"}
    assert unpinned in leaks
    assert leaks[unpinned]["comm"] == "sleep"
    assert leaks[unpinned]["cpus"] == "1"
    assert leaks[unpinned]["affinity"] == "0-1"
    assert leaks[unpinned]["tids"] == [unpinned]

    assert pinned not in leaks
    placed = {p["pid"]: p for p in facts["threads_on_isolated"]}
    assert placed[pinned]["cpus"] == "1" and placed[pinned]["comm"] == "sleep"

    # the kernel's per-CPU threads on CPU 1 are expected, never violations
    offenders = " ".join(v["offender"] for v in facts["violations"])
    assert "ksoftirqd/1" not in offenders and "migration/1" not in offenders


def test_check_mode_and_second_run_report_the_same(processes):
    first = run_module(MODULE, {"isolated_cpus": "1", "gather_threads": False}, check=True)
    second = run_module(MODULE, {"isolated_cpus": "1", "gather_threads": False})
    for result in (first, second):
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] is False
    a, b = (r["ansible_facts"]["cpu_isolation"] for r in (first, second))
    for key in ("cgroup", "cpus", "cmdline", "kernel", "isolated_cpus", "housekeeping_cpus", "workqueue_cpumask"):
        assert a[key] == b[key]
    assert a["threads_scanned"] is None


@pytest.mark.parametrize("args, needle", [
    ({"isolated_cpus": "1-"}, "isolated_cpus"),
    ({"isolated_cpus": "1", "realtime_partitions": ["/"]}, "realtime partition"),
])
def test_bad_input_fails_with_a_message(args, needle):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = run_module(MODULE, args)
    assert result.get("failed") is True
    assert needle in result["msg"]
