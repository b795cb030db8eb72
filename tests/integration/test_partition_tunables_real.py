"""libvirt_partition's tunables written to this host's real cgroup v1 kernel and read back (issue 17).

One top-level partition ``/rtvirt-p-<hex>`` (beside ``/machine``, as host_prep lays them out: its parent is the
root, which shows no ``blkio.bfq.weight``), driven through the real ``ansible`` CLI in one module-scoped
sequence: check mode, apply, a second run, ``unlimited``, bad values, and a hard limit below what a task inside
uses, which this kernel refuses (EBUSY, no swap). Everything it made is removed afterwards.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import REPO, ansible_env

pytestmark = pytest.mark.real

MODULE = "rtvirt.kvm.libvirt_partition"
CG = pathlib.Path("/sys/fs/cgroup")
PAGE = os.sysconf("SC_PAGE_SIZE")
UNLIMITED = str((2 ** 63 - 1) // PAGE * PAGE)
ODD = 100000001                       # not a whole number of pages


def _has_bfq_weight():
    """Whether this kernel shows blkio.bfq.weight in a blkio cgroup (BFQ built in or loaded; the root never shows
    it). Some machines have it, some have no BFQ at all: both are real, and the test proves what each can."""
    probe = CG / "blkio" / ("rtvirt-probe-%s" % uuid.uuid4().hex[:8])
    probe.mkdir()
    try:
        return (probe / "blkio.bfq.weight").exists()
    finally:
        probe.rmdir()


BFQ = _has_bfq_weight()
TUNABLES = dict({"cpu_shares": 2048, "memory_hard_limit": str(ODD), "memory_soft_limit": "64M"},
                **({"blkio_weight": 300} if BFQ else {}))


_RECORD = re.compile(r"^localhost \| (?P<status>[A-Z]+!?)(?: \| rc=-?\d+)? => ", re.MULTILINE)


def play(tmp_path, tasks):
    """``tasks`` (libvirt_partition arguments, ``_check`` for check mode) as one playbook on this machine, one
    ansible start for all of them; each task's result in order, failed ones included.  Verbosity 3 keeps the
    diff in the results (below it the callback prints it as text and drops it)."""
    body = []
    for args in tasks:
        args = dict(args)
        task = {MODULE: args, "ignore_errors": True, "diff": True}
        if args.pop("_check", False):
            task["check_mode"] = True
        body.append(task)
    playbook = tmp_path / ("play-%d.yml" % len(list(tmp_path.iterdir())))
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": body}]))
    env = ansible_env({"ANSIBLE_VERBOSITY": "3"})
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
            "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"], str(playbook)]
    proc = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, check=False)
    results, decoder = [], json.JSONDecoder()
    for match in _RECORD.finditer(proc.stdout):
        value, _end = decoder.raw_decode(proc.stdout, match.end())
        if match.group("status") == "FAILED!":
            value.setdefault("failed", True)
        results.append(value)
    assert len(results) == len(tasks), "rc=%d\n%s\n%s" % (proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:])
    return results


def knobs(leaf):
    files = {"cpu.shares": CG / "cpu" / leaf / "cpu.shares",
             "memory.limit_in_bytes": CG / "memory" / leaf / "memory.limit_in_bytes",
             "memory.soft_limit_in_bytes": CG / "memory" / leaf / "memory.soft_limit_in_bytes",
             **({"blkio.bfq.weight": CG / "blkio" / leaf / "blkio.bfq.weight"} if BFQ else {})}
    return {name: path.read_text().strip() if path.exists() else None for name, path in files.items()}


def _hog(leaf):
    """A process started inside the partition's memory cgroup, holding 64 MiB it touched (charged there)."""
    procs = CG / "memory" / leaf / "cgroup.procs"
    proc = subprocess.Popen(["sh", "-c", "echo $$ > %s && exec %s -c 'import sys, time; b = bytearray(64 << 20); "
                             "sys.stdout.write(\"ready\\n\"); sys.stdout.flush(); time.sleep(300)'" % (procs, sys.executable)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture(scope="module")
def tunables_run(tmp_path_factory):
    name = "/rtvirt-p-%s" % uuid.uuid4().hex[:8]
    leaf = name.lstrip("/") + ".partition"
    args = dict(TUNABLES, name=name)
    unlimited = dict(args, memory_hard_limit="unlimited")
    tmp = tmp_path_factory.mktemp("tunables")
    runs = {}
    hog = None
    try:
        runs["check"], = play(tmp, [dict(args, _check=True)])
        runs["exists_after_check"] = [str(m / leaf) for m in rig_lib.cgroup_mounts() if (m / leaf).exists()]
        runs["first"], runs["second"] = play(tmp, [args, args])
        runs["first_knobs"] = knobs(leaf)
        runs["unlimited"], runs["unlimited_again"], runs["bad_shares"], runs["bad_weight"] = play(tmp, [
            unlimited, unlimited, dict(args, cpu_shares=1), dict(args, blkio_weight=1001)])
        if not BFQ:
            runs["no_bfq"], = play(tmp, [dict(args, blkio_weight=300)])
        runs["unlimited_knobs"] = runs["bad_knobs"] = knobs(leaf)
        hog = _hog(leaf)
        runs["usage"] = int((CG / "memory" / leaf / "memory.usage_in_bytes").read_text())
        runs["below_usage"], = play(tmp, [dict(args, cpu_shares=512, memory_hard_limit="16M")])
        runs["below_usage_knobs"] = knobs(leaf)
    finally:
        if hog is not None:
            hog.send_signal(signal.SIGKILL)
            hog.wait()
            time.sleep(0.2)     # the kernel uncharges the dead task's memory before the cgroup can go
        runs["absent"], = play(tmp, [{"name": name, "state": "absent"}])
        for mount in rig_lib.cgroup_mounts():
            top = mount / leaf
            if top.is_dir():
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    os.rmdir(dirpath)
    runs.update(name=name, leaf=leaf)
    return runs


def test_check_mode_writes_nothing_and_shows_the_diff(tunables_run):
    check = tunables_run["check"]
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] and check["writes"] == []
    assert tunables_run["exists_after_check"] == []
    assert check["planned"] == tunables_run["first"]["planned"]
    leaf = tunables_run["leaf"]
    limit = "%s/memory/%s/memory.limit_in_bytes" % (CG, leaf)
    before, after = check["diff"]["before"].splitlines(), check["diff"]["after"].splitlines()
    assert "%s = (new)" % limit in before and "%s = %d" % (limit, ODD // PAGE * PAGE) in after, check["diff"]
    assert "%s/cpu/%s/cpu.shares = 2048" % (CG, leaf) in after, after
    if BFQ:
        assert "%s/blkio/%s/blkio.bfq.weight = 300" % (CG, leaf) in after, after


def test_tunables_read_back_from_the_kernel(tunables_run):
    first = tunables_run["first"]
    assert first["changed"] and not first.get("failed"), first.get("msg")
    assert tunables_run["first_knobs"] == dict({
        "cpu.shares": "2048",
        "memory.limit_in_bytes": str(ODD // PAGE * PAGE),       # the kernel keeps whole pages
        "memory.soft_limit_in_bytes": str(64 << 20),
    }, **({"blkio.bfq.weight": "300"} if BFQ else {}))          # no CFQ here: BFQ's weight, as libvirt writes it
    if BFQ and not any("[bfq]" in p.read_text() for p in pathlib.Path("/sys/block").glob("*/queue/scheduler")):
        assert any("no block device uses the bfq scheduler" in note for note in first["notes"]), first["notes"]


def test_second_run_changes_nothing_despite_the_rounding(tunables_run):
    second = tunables_run["second"]
    assert not second.get("failed"), second.get("msg")
    assert second["changed"] is False and second["writes"] == [] and second["planned"] == [], second


def test_unlimited_reads_back_as_the_kernels_maximum(tunables_run):
    unlimited = tunables_run["unlimited"]
    assert unlimited["changed"] and not unlimited.get("failed"), unlimited.get("msg")
    leaf = tunables_run["leaf"]
    assert unlimited["writes"] == [
        {"file": "%s/memory/%s/memory.limit_in_bytes" % (CG, leaf), "value": "-1"}]
    assert tunables_run["unlimited_knobs"]["memory.limit_in_bytes"] == UNLIMITED
    again = tunables_run["unlimited_again"]
    assert again["changed"] is False and again["writes"] == [], again


def test_bad_values_fail_before_any_write(tunables_run):
    name = tunables_run["name"]
    shares, weight = tunables_run["bad_shares"], tunables_run["bad_weight"]
    assert shares.get("failed") and not shares.get("writes"), shares
    assert shares["msg"] == ("partition %s: cpu_shares=1 is outside cpu.shares's range 2-262144 on cgroup v1 (the "
                             "kernel would silently clamp it)" % name), shares["msg"]
    assert weight.get("failed") and not weight.get("writes"), weight
    assert "partition %s: blkio_weight=1001 is outside blkio.bfq.weight's range 1-1000" % name in weight["msg"]
    if not BFQ:
        # No BFQ on this kernel: a weight in range is refused before a change too, saying what provides the knob.
        no_bfq = tunables_run["no_bfq"]
        assert no_bfq.get("failed") and not no_bfq.get("writes"), no_bfq
        assert ("partition %s: blkio_weight=300: blkio.bfq.weight nor blkio.weight not found" % name in no_bfq["msg"]
                and "modprobe bfq" in no_bfq["msg"] and "nothing was changed" in no_bfq["msg"]), no_bfq["msg"]
    assert tunables_run["bad_knobs"]["memory.limit_in_bytes"] == UNLIMITED
    assert tunables_run["bad_knobs"]["cpu.shares"] == "2048"


def test_limit_below_usage_is_refused_by_the_kernel_in_words_and_rolled_back(tunables_run):
    refused, leaf = tunables_run["below_usage"], tunables_run["leaf"]
    assert tunables_run["usage"] > 16 << 20
    assert refused.get("failed"), refused
    assert ("write '16777216' to %s/memory/%s/memory.limit_in_bytes failed: Device or resource busy (EBUSY): "
            "partition %s, memory_hard_limit=16777216: the partition's tasks use more memory than the new limit"
            % (CG, leaf, tunables_run["name"])) in refused["msg"], refused["msg"]
    # cpu.shares was written before the refused limit: the run undid it.
    assert refused["rolled_back"] == ["write '512' to %s/cpu/%s/cpu.shares" % (CG, leaf)], refused
    assert refused["rollback_failures"] == [] and refused["changed"] is False
    assert tunables_run["below_usage_knobs"] == tunables_run["unlimited_knobs"]


def test_absent_removes_it_everywhere(tunables_run):
    absent = tunables_run["absent"]
    assert absent["changed"] and not absent.get("failed"), absent.get("msg")
    left = [str(m / tunables_run["leaf"]) for m in rig_lib.cgroup_mounts() if (m / tunables_run["leaf"]).exists()]
    assert left == []
