# -*- coding: utf-8 -*-
"""_host_plan's way back (host_prep_state: absent) on fake trees, held to what the writing modules would do.

The rule is the fast path's: an area the revert plan calls done is one its module (libvirt_partition absent,
irq_affinity exact, kernel_cmdline absent) leaves unchanged, and a partition a guest is in is refused before
anything is planned for it.
"""
from __future__ import annotations

import json
import os

import pytest

from _module_runner import run_module
from test_host_plan import _v1_host, write
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan as hs
from ansible_collections.rtvirt.kvm.plugins.modules import irq_affinity, kernel_cmdline, libvirt_partition

PARAMS = hs.cmdline_params("2-3", "0-1", "managed_irq,domain")
DOMAIN = "<domain type='kvm'><name>%s</name><resource><partition>%s</partition></resource></domain>"


def test_defined_guests_are_read_from_libvirts_xml_files(tmp_path):
    config = tmp_path / "qemu"
    write(str(config / "rt1.xml"), DOMAIN % ("rt1", "/rt"))
    write(str(config / "plain.xml"), "<domain type='kvm'><name>plain</name></domain>")
    write(str(config / "broken.xml"), "<domain")
    write(str(config / "networks" / "default.xml"), "<network/>")
    write(str(config / "notes.txt"), DOMAIN % ("txt", "/rt"))
    assert hs.defined_guest_partitions(str(config)) == {"rt1": "/rt"}
    assert hs.defined_guest_partitions(str(tmp_path / "none")) == {}


def test_partitions_to_remove_are_the_layout_the_layout_file_and_the_record(tmp_path):
    layout, record = tmp_path / "layout.json", tmp_path / "record.json"
    planned = [{"name": "/rt"}]
    assert hs.revert_partition_names(planned, str(record), str(layout)) == ["/rt"]
    layout.write_text(json.dumps({"partitions": {"/rt": {}, "/old": {}}, "machine": {"cpus": "0"}}))
    record.write_text(json.dumps({"version": 1, "partitions": {"/machine": {"cpus": "0"}, "/vm": {}, "/old": {}}}))
    # /machine is libvirt's: it goes back to every CPU, it is never removed.
    assert hs.revert_partition_names(planned, str(record), str(layout)) == ["/rt", "/old", "/vm"]
    record.write_text("not json")
    assert hs.revert_partition_names([], str(record), str(layout)) == ["/rt", "/old"]


def test_a_defined_guest_refuses_its_partition_naming_both(tmp_path, monkeypatch, partition_record):
    _v1_host(tmp_path, monkeypatch)
    reasons, refusals = hs.check_revert_partitions(None, ["/rt"], {"rt1": "/rt", "rt2": "/rt/", "other": "/x"}, "0-3")
    assert refusals == ["partition /rt: guests rt1, rt2 are defined in it (remove them first: rtvirt.kvm.realtime_vm "
                        "with state absent, or virsh undefine)"]
    assert all(not r.startswith("/rt:") for r in reasons)


def test_removal_is_libvirt_partitions_own_plan_and_machine_widens(tmp_path, monkeypatch, partition_record):
    root = _v1_host(tmp_path, monkeypatch)
    machine = root / "cpuset" / "machine"
    for knob, value in (("cpuset.cpus", "0-1"), ("cpuset.mems", "0"), ("cpuset.cpu_exclusive", "0"), ("tasks", "")):
        write(str(machine / knob), value + "\n")
    reasons, refusals = hs.check_revert_partitions(None, ["/rt"], {}, "0-3")
    assert refusals == []
    checked = run_module(libvirt_partition, {"name": "/rt", "state": "absent"}, check_mode=True)
    widened = run_module(libvirt_partition, {"name": "/machine", "cpus": "0-3", "record": False}, check_mode=True)
    assert reasons == ["/rt: %s" % s for s in checked["planned"]] + ["/machine: %s" % s for s in widened["planned"]]
    assert checked["changed"] and widened["changed"]
    assert not run_module(libvirt_partition, {"name": "/rt", "state": "absent"}).get("failed")
    assert not run_module(libvirt_partition, {"name": "/machine", "cpus": "0-3", "record": False}).get("failed")
    assert hs.check_revert_partitions(None, ["/rt"], {}, "0-3") == ([], [])
    # /machine on every CPU is libvirt's default: nothing for the hook to re-create, so no record entry.
    assert "/machine" not in json.loads(partition_record.read_text() if partition_record.exists() else
                                        '{"partitions": {}}')["partitions"]


def test_tasks_in_a_partition_are_refused_by_libvirt_partitions_planner(tmp_path, monkeypatch, partition_record):
    root = _v1_host(tmp_path, monkeypatch)
    write(str(root / "cpuset" / "rt.partition" / "tasks"), "4242\n")
    _reasons, refusals = hs.check_revert_partitions(None, ["/rt"], {}, "0-3")
    assert len(refusals) == 1 and refusals[0].startswith("cannot remove partition /rt: tasks still run inside")


def test_a_refusal_fails_the_plan_before_anything_else_is_planned(monkeypatch):
    from ansible_collections.rtvirt.kvm.plugins.modules import host_plan

    def not_reached(*_args):
        raise AssertionError("planned an area after a refusal")

    monkeypatch.setattr(host_plan, "check_revert_partitions", lambda *_a: ([], ["partition /rt: guest rt1 is defined"]))
    monkeypatch.setattr(host_plan, "check_revert_irqs", not_reached)
    monkeypatch.setattr(host_plan, "check_revert_sysctl", not_reached)
    params = {"partitions": [], "hook": None, "partition_record": "/nonexistent", "libvirt_config_dir": "/nonexistent",
              "cmdline": None, "irqs": {}, "sysctl": {"path": "/nonexistent"}, "libvirt": None, "os_family": "Debian",
              "os_major_version": "12", "os_names": {}}
    plan = {"online_cpus": "0-3", "partitions": [], "realtime_cpus": "2-3", "housekeeping_cpus": "0-1"}
    refused = "^host_prep_state=absent refused, nothing changed: partition /rt: guest rt1 is defined$"
    with pytest.raises(hs.RevertRefused, match=refused):
        host_plan.check_revert(None, params, plan)


@pytest.fixture
def irqs(tmp_path):
    proc, sys_root = str(tmp_path / "proc"), str(tmp_path / "sys")
    write(proc + "/irq/default_smp_affinity", "3\n")
    write(proc + "/irq/10/smp_affinity_list", "0\n")
    write(proc + "/irq/10/smp_affinity", "1\n", 0o644)
    os.makedirs(sys_root)
    return proc, sys_root


def test_irqs_go_back_to_every_cpu_as_irq_affinity_exact_moves_them(irqs, tmp_path):
    proc, sys_root = irqs
    banned = tmp_path / "irqbalance"
    banned.write_text("#IRQBALANCE_BANNED_CPULIST=\nIRQBALANCE_BANNED_CPULIST=1\n")
    every = frozenset([0, 1])
    reasons = hs.check_revert_irqs(every, str(banned), "1", proc_root=proc, sys_root=sys_root)
    assert reasons == ["IRQ(s) 10 not on all of 0-1", "%s still has host_prep's IRQBALANCE_BANNED_CPULIST=1" % banned]
    # Within 0-1 already: irq_affinity without exact leaves it, with exact spreads it over both.
    assert not run_module(irq_affinity, {"cpus": "0-1", "proc_root": proc, "sys_root": sys_root})["changed"]
    moved = run_module(irq_affinity, {"cpus": "0-1", "exact": True, "proc_root": proc, "sys_root": sys_root})
    assert moved["changed"] and [m["irq"] for m in moved["moved"]] == [10]
    banned.write_text("#IRQBALANCE_BANNED_CPULIST=\nIRQBALANCE_BANNED_CPULIST=0\n")   # the operator's own value
    assert hs.check_revert_irqs(every, str(banned), "1", proc_root=proc, sys_root=sys_root) == []
    assert not run_module(irq_affinity, {"cpus": "0-1", "exact": True, "proc_root": proc, "sys_root": sys_root})["changed"]


def test_sysctl_goes_back_to_the_kernels_default(tmp_path):
    proc, path = str(tmp_path / "proc"), str(tmp_path / "90.conf")
    write(proc + "/sys/kernel/sched_rt_runtime_us", "-1\n")
    write(path, "kernel.sched_rt_runtime_us = -1\n")
    assert hs.check_revert_sysctl(path, proc_root=proc) == (
        ["%s exists" % path, "kernel.sched_rt_runtime_us is -1, not the kernel's default 950000"], "-1")
    os.unlink(path)
    write(proc + "/sys/kernel/sched_rt_runtime_us", "950000\n")
    assert hs.check_revert_sysctl(path, proc_root=proc) == ([], "950000")


def test_only_our_hook_files_go_and_the_operators_hook_stays(tmp_path):
    hooks = tmp_path / "hooks"
    ours, layout, record, legacy = (str(hooks / "qemu.d" / "ours"), str(hooks / "layout.json"),
                                    str(hooks / "record.json"), str(hooks / "qemu"))
    write(legacy, "#!/bin/sh\n# the operator's hook\n")
    assert hs.revert_files(ours, layout, record, legacy) == [ours, layout, record]
    write(legacy, "#!/bin/sh\n%s: an earlier version\n" % hs.HOOK_MARKER)
    assert hs.revert_files(ours, layout, record, legacy) == [ours, layout, record, legacy]
    write(ours, "x")
    write(record, "{}")
    assert hs.check_revert_hook([ours, layout, record]) == ["%s exists" % ours, "%s exists" % record]


@pytest.mark.parametrize("grub, running", [
    ('GRUB_CMDLINE_LINUX="quiet isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"\n',
     "quiet isolcpus=managed_irq,domain,2-3"),
    ('GRUB_CMDLINE_LINUX="quiet"\n', "quiet nohz_full=2-3"),
    ('GRUB_CMDLINE_LINUX="quiet"\n', "quiet"),
])
def test_cmdline_way_back_agrees_with_kernel_cmdline_absent(tmp_path, grub, running):
    path, proc = str(tmp_path / "grub"), str(tmp_path / "cmdline")
    write(path, grub)
    write(proc, running + "\n")
    absent = sorted(PARAMS)
    reasons, reboot = hs.check_cmdline(path, {}, proc_cmdline=proc, absent=absent)
    module = run_module(kernel_cmdline, {"path": path, "absent": absent, "proc_cmdline": proc, "update_command": []},
                        check_mode=True)
    assert bool(reasons) == (module["changed"] or module["reboot_required"]), (reasons, module)
    assert reboot == module["reboot_required"] == ("=" in running)
    if module["changed"]:
        assert "still has" in reasons[0]
        run_module(kernel_cmdline, {"path": path, "absent": absent, "proc_cmdline": proc, "update_command": []})
        with open(path) as handle:
            assert handle.read() == 'GRUB_CMDLINE_LINUX="quiet"\n'
