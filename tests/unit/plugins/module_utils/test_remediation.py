# -*- coding: utf-8 -*-
from __future__ import annotations

from ansible_collections.rtvirt.kvm.plugins.module_utils._remediation import findings, report


def _kinds(result):
    return sorted((f["kind"], f["target"]) for f in result)


def test_every_kind_is_found():
    cpuset = {"machine": {"cpus": "0-1", "mems": "0"}, "machine/rt.partition": {"cpus": "", "mems": "0"},
              "machine/qemu-3-old.libvirt-qemu": {"cpus": "0-1", "mems": "0"}}
    present = {"cpuset": {"machine", "machine/rt.partition", "machine/qemu-3-old.libvirt-qemu"},
               "cpu": {"machine", "machine/qemu-3-old.libvirt-qemu", "machine/qemu-3-old.libvirt-qemu/vcpu0"},
               "unified": {"machine"}}
    violations = [
        {"kind": "cgroup_cpuset", "offender": "/machine/leak", "message": "m"},
        {"kind": "cgroup_cpuset", "offender": "/machine/qemu-3-old.libvirt-qemu", "message": "m"},
        {"kind": "pinning_drift", "offender": "guest rt1 vcpu 0", "message": "m", "guest": "rt1", "role": "vcpu",
         "id": 0, "xml": "1"},
        {"kind": "irq_affinity", "offender": "irq 5", "message": "m", "changeable": False},
    ]
    result = findings(cpuset, present, {"/machine/rt": ["rt1"]}, {"/machine/rt": "machine/rt.partition"},
                      {"rt1"}, violations)
    assert _kinds(result) == [
        ("cgroup_on_isolated", "machine/leak"),
        ("empty_cpuset", "machine/rt.partition"),
        ("irq_affinity", "irq 5"),
        ("leftover_guest_cgroup", "machine/qemu-3-old.libvirt-qemu"),
        ("missing_partition", "/machine/rt"),
        ("pinning_drift", "guest rt1 vcpu 0"),
    ]
    leftover = next(f for f in result if f["kind"] == "leftover_guest_cgroup")
    assert leftover["fix"]["hierarchies"] == ["cpu", "cpuset"]
    assert next(f for f in result if f["kind"] == "irq_affinity")["fix"] is None
    assert next(f for f in result if f["kind"] == "missing_partition")["message"].endswith("cannot start")


def test_running_guest_is_no_leftover():
    present = {"cpuset": {"machine", "machine/qemu-3-rt1.libvirt-qemu"}}
    assert findings({}, present, {}, {}, {"rt1"}, []) == []


def test_report_modes():
    before = [{"kind": "empty_cpuset", "target": "a", "message": "m", "fix": {"x": 1}},
              {"kind": "thread_on_isolated", "target": "b", "message": "m", "fix": None},
              {"kind": "empty_cpuset", "target": "c", "message": "m", "fix": {"x": 1}}]
    assert [r["fixed"] for r in report(before, None)] == [False, False, False]
    after = [before[1], before[2]]
    assert [r["fixed"] for r in report(before, after)] == [True, False, False]
