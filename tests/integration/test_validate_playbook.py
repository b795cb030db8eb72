"""playbooks/validate.yml (rtvirt.kvm.validate) on this machine: oslat on the realtime CPU for a second or two.

A generous threshold passes and writes the JSON report; an impossible one (0 us) fails with a message naming the
CPU, its maximum and the threshold, and still writes the report; check mode measures and writes nothing. A FIFO
guest whose vCPU owns the realtime CPU makes the CPU skipped, named with the guest, and the run fails because
nothing was measured. No figure is asserted: only what oslat measured, as the report says it.
"""
import json

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import choose
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import read_topology
from tests.support.ansible_runner import REPO, run_module
from tests.support.playbook_runner import run_playbook

pytestmark = pytest.mark.real

# Far above anything a loop of a few seconds can see, the gap between two reads included.
GENEROUS_US = 60000000


def _automatic_cpus():
    topology = read_topology("/sys")
    realtime, _hk = choose(topology.cpus, {n: topology.node_cpus(n) for n in topology.nodes},
                           {c: topology.siblings_of(c) for c in topology.cpus})
    return realtime


def _validate(tmp_path, check=False, **variables):
    report = tmp_path / "rtvirt" / "latency.json"
    run = run_playbook(tmp_path, [{"import_playbook": str(REPO / "playbooks" / "validate.yml"),
                                   "vars": dict({"validate_report_path": str(report), "validate_duration_s": 1},
                                                **variables)}],
                       inventory=REPO / "inventories" / "localhost", check=check)
    return run, report


def test_validate_passes_under_a_generous_threshold_and_writes_the_report(tmp_path):
    run, report = _validate(tmp_path, validate_max_latency_us=GENEROUS_US)
    assert run["rc"] == 0 and run["failed"] == 0, run["out"][-4000:]
    data = json.loads(report.read_text())
    realtime = _automatic_cpus()
    assert data["passed"] is True and data["failures"] == [] and data["host"] == "localhost", data
    assert (data["cpus"], data["measured_cpus"], data["cpus_source"]) == (format_cpulist(realtime),) * 2 + ("automatic",)
    assert sorted(row["cpu"] for row in data["per_cpu"]) == sorted(realtime)
    for row in data["per_cpu"]:
        assert row["samples"] > 0 and row["min_us"] <= row["p99_9_us"] <= row["p99_99_us"] <= row["max_us"], row
        assert row["max_us"] <= data["max_us"] and row["passed"] is True, row
    assert "latency validation passed: CPUs %s, maximum %s us" % (data["measured_cpus"], data["max_us"]) in run["out"]


def test_validate_fails_above_an_impossible_threshold_naming_cpu_max_and_threshold(tmp_path):
    run, report = _validate(tmp_path, validate_max_latency_us=0)
    assert run["rc"] != 0 and run["failed"] == 1, run["out"][-4000:]
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["max_latency_us"] == 0, data
    # Every loop iteration takes at least a microsecond bucket, so every CPU is above 0 us.
    for row in data["per_cpu"]:
        line = "CPU %d: oslat maximum %s us exceeds max_latency_us 0 us" % (row["cpu"], row["max_us"])
        assert row["passed"] is False and line in data["failures"][data["per_cpu"].index(row)], data["failures"]
        assert line in run["out"], run["out"][-4000:]
    assert "Fail above the threshold" in run["out"], run["out"][-4000:]


def test_validate_in_check_mode_measures_and_writes_nothing(tmp_path):
    run, report = _validate(tmp_path, check=True, validate_max_latency_us=GENEROUS_US)
    assert run["rc"] == 0 and run["failed"] == 0, run["out"][-4000:]
    assert "latency validation passed" in run["out"], run["out"][-4000:]
    assert not report.parent.exists()


@pytest.mark.libvirt
def test_a_fifo_vcpu_on_the_realtime_cpu_is_skipped_and_named(libvirt_rig, unique_name, fifo_allowed):
    realtime = sorted(_automatic_cpus())
    housekeeping = min(set(read_topology("/sys").cpus) - set(realtime))
    pins = {i: str(cpu) for i, cpu in enumerate(realtime)}
    sched = "".join("<vcpusched vcpus='%d' scheduler='fifo' priority='1'/>" % i for i in pins)
    with libvirt_rig.guest(unique_name, vcpus=len(pins), vcpupins=pins, emulatorpin=str(housekeeping),
                           cputune=sched):
        result = run_module("rtvirt.kvm.latency_check", {"duration_s": 1, "max_latency_us": GENEROUS_US})
    assert not result.get("failed"), result
    assert result["passed"] is False and result["measured_cpus"] == "" and result["per_cpu"] == [], result
    assert [s["cpu"] for s in result["skipped_cpus"]] == realtime, result["skipped_cpus"]
    for skipped in result["skipped_cpus"]:
        assert [(o["guest"], o["policy"]) for o in skipped["owners"]] == [(unique_name, "fifo")], skipped
    assert "no realtime CPU was measured" in result["msg"], result["msg"]
    assert "CPU %d is not measured: it belongs to guest %s vCPU 0 (fifo, priority 1)" % (realtime[0], unique_name) \
        in result["msg"], result["msg"]
    assert result["command"] == [], result
