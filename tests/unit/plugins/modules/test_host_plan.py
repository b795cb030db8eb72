# -*- coding: utf-8 -*-
"""_host_plan: the one-pass checks behind host_prep's fast path, held to what the writing modules would do.

The rule under test: an area the checks call converged must be one its module leaves unchanged. Where a
module exists (kernel_cmdline, irq_affinity), both run on the same fake tree and must agree.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from _module_runner import run_module
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan as hs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import PlainFiles
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_host import Host
from ansible_collections.rtvirt.kvm.plugins.modules import irq_affinity, kernel_cmdline, libvirt_partition


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    if mode is not None:
        os.chmod(path, mode)


PARAMS = hs.cmdline_params("2-3", "0-1", "managed_irq,domain")


@pytest.mark.parametrize("grub, running", [
    ('GRUB_CMDLINE_LINUX="quiet"\n', "quiet"),
    ('GRUB_CMDLINE_LINUX="quiet isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"\n',
     "quiet"),
    ('GRUB_CMDLINE_LINUX="isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"\n',
     "BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 irqaffinity=0-1"),
    ('GRUB_CMDLINE_LINUX="nohz_full=1 isolcpus=managed_irq,domain,2-3 rcu_nocbs=2-3 irqaffinity=0-1"\n',
     "nohz_full=1 isolcpus=managed_irq,domain,2-3 rcu_nocbs=2-3 irqaffinity=0-1"),
    ('GRUB_DEFAULT=0\n', "quiet"),
])
def test_cmdline_agrees_with_kernel_cmdline(tmp_path, grub, running):
    path, proc = str(tmp_path / "grub"), str(tmp_path / "cmdline")
    write(path, grub)
    write(proc, running + "\n")
    reasons, reboot = hs.check_cmdline(path, PARAMS, proc_cmdline=proc)
    module = run_module(kernel_cmdline, {"path": path, "params": PARAMS, "proc_cmdline": proc, "update_command": []},
                        check_mode=True)
    assert bool(reasons) == (module["changed"] or module["reboot_required"]), (reasons, module)
    assert reboot == module["reboot_required"]


def test_cmdline_unparsable_is_pending_and_no_grub_is_not(tmp_path):
    path = str(tmp_path / "grub")
    write(path, 'GRUB_CMDLINE_LINUX="quiet $EXTRA"\n')
    reasons, _reboot = hs.check_cmdline(path, PARAMS, proc_cmdline=str(tmp_path / "none"))
    assert reasons and "cannot be edited safely" in reasons[0]
    assert hs.check_cmdline(str(tmp_path / "absent"), PARAMS) == ([], False)


@pytest.fixture
def irqs(tmp_path):
    proc, sys_root = str(tmp_path / "proc"), str(tmp_path / "sys")
    write(proc + "/irq/default_smp_affinity", "1\n")
    write(proc + "/irq/10/smp_affinity_list", "0\n")
    write(proc + "/irq/10/smp_affinity", "1\n", 0o644)
    os.makedirs(sys_root)
    return proc, sys_root


def test_irqs_pending_exactly_when_irq_affinity_would_move(irqs, tmp_path):
    proc, sys_root = irqs
    assert hs.check_irqs(frozenset([0]), str(tmp_path / "none"), "1", proc_root=proc, sys_root=sys_root) == []
    assert not run_module(irq_affinity, {"cpus": "0", "proc_root": proc})["changed"]
    write(proc + "/irq/10/smp_affinity_list", "0-1\n")
    write(proc + "/irq/default_smp_affinity", "3\n")
    reasons = hs.check_irqs(frozenset([0]), str(tmp_path / "none"), "1", proc_root=proc, sys_root=sys_root)
    assert any("default_smp_affinity" in r for r in reasons) and any("IRQ(s) 10 " in r for r in reasons)
    result = run_module(irq_affinity, {"cpus": "0", "proc_root": proc})
    assert result["changed"] and [m["irq"] for m in result["moved"]] == [10]
    assert hs.check_irqs(frozenset([0]), str(tmp_path / "none"), "1", proc_root=proc, sys_root=sys_root) == []


def test_irqs_the_kernel_will_not_move_are_not_pending(irqs, tmp_path):
    proc, sys_root = irqs
    # A managed IRQ: the kernel creates its smp_affinity read-only (the real kernel refusing the write is
    # proven in tests/integration/cpuset/test_host_prep_fast_path.py); debugfs flags say the same where mounted.
    write(proc + "/irq/11/smp_affinity_list", "1\n")
    write(proc + "/irq/11/smp_affinity", "2\n", 0o444)
    write(proc + "/irq/12/smp_affinity_list", "1\n")
    write(proc + "/irq/12/smp_affinity", "2\n", 0o644)
    write(sys_root + "/kernel/debug/irq/irqs/12", "handler: handle_edge_irq\nflags: 0x0\n IRQD_AFFINITY_MANAGED\n")
    assert hs.check_irqs(frozenset([0]), str(tmp_path / "none"), "1", proc_root=proc, sys_root=sys_root) == []
    write(sys_root + "/kernel/debug/irq/irqs/12", "handler: handle_edge_irq\n")
    assert hs.check_irqs(frozenset([0]), str(tmp_path / "none"), "1", proc_root=proc,
                         sys_root=sys_root) == ["IRQ(s) 12 allowed outside 0"]


@pytest.mark.parametrize("text, pending", [
    ("IRQBALANCE_BANNED_CPULIST=2-3\n", False),
    ("#IRQBALANCE_BANNED_CPULIST=\nIRQBALANCE_BANNED_CPULIST=2-3\n", False),
    ("IRQBALANCE_BANNED_CPULIST=2-3\n# IRQBALANCE_BANNED_CPULIST=\n", False),  # a comment is not matched
    ("IRQBALANCE_BANNED_CPULIST=2-3\nIRQBALANCE_BANNED_CPULIST=1\n", True),   # lineinfile edits the last match
    ("#IRQBALANCE_BANNED_CPULIST=\n", True),
    ("IRQBALANCE_ONESHOT=1\n", True),
])
def test_irqbalance_follows_lineinfile(irqs, tmp_path, text, pending):
    proc, sys_root = irqs
    write(str(tmp_path / "irqbalance"), text)
    reasons = hs.check_irqs(frozenset([0]), str(tmp_path / "irqbalance"), "2-3", proc_root=proc, sys_root=sys_root)
    assert bool(reasons) == pending, reasons


def test_sysctl(tmp_path):
    proc = str(tmp_path / "proc")
    write(proc + "/sys/kernel/sched_rt_runtime_us", "-1\n")
    path = str(tmp_path / "90.conf")
    assert hs.check_sysctl(path, "x = 1\n", -1, proc_root=proc) == ["%s is missing" % path]
    write(path, "x = 1\n", 0o644)
    assert hs.check_sysctl(path, "x = 1\n", -1, proc_root=proc) == []
    os.chmod(path, 0o600)
    assert "mode 0600" in hs.check_sysctl(path, "x = 1\n", -1, proc_root=proc)[0]
    os.chmod(path, 0o644)
    write(proc + "/sys/kernel/sched_rt_runtime_us", "950000\n")
    assert hs.check_sysctl(path, "x = 1\n", -1, proc_root=proc) == ["kernel.sched_rt_runtime_us is 950000, not -1"]


@pytest.mark.parametrize("text, pending", [
    (None, True),
    ('#cgroup_controllers = [ "cpu", "devices", "memory", "blkio", "cpuset", "cpuacct" ]\n', True),
    ('cgroup_controllers = [ "cpuset", "memory" ]\n', False),
    ('cgroup_controllers = [ "cpuset", "memory" ]\n#cgroup_controllers = [ "cpu" ]\n', True),  # the last match
    ('cgroup_controllers = [ "cpu", "cpuset", "memory" ]\n', True),
])
def test_qemu_conf_controllers_follow_lineinfile(tmp_path, text, pending):
    proc = str(tmp_path / "proc")
    write(proc + "/sys/kernel/sched_rt_runtime_us", "950000\n")
    sysctl = str(tmp_path / "90.conf")
    write(sysctl, "x = 1\n", 0o644)
    conf = str(tmp_path / "qemu.conf")
    if text is not None:
        write(conf, text)
    reasons = hs.check_sysctl(sysctl, "x = 1\n", 950000, proc_root=proc, qemu_conf=conf,
                              controllers=["cpuset", "memory"])
    assert bool(reasons) == pending, reasons
    assert hs.check_sysctl(sysctl, "x = 1\n", 950000, proc_root=proc, qemu_conf=conf) == []  # not asked: not read


def test_rt_budget_warnings(tmp_path):
    rt_groups = str(tmp_path / "rt")
    write(rt_groups + "/fs/cgroup/cpu/cpu.rt_runtime_us", "950000\n")
    plain = str(tmp_path / "plain")
    os.makedirs(plain + "/fs/cgroup/cpu")
    conf = str(tmp_path / "qemu.conf")
    off = hs.rt_budget_warnings(-1, True, rt_groups, conf, None)
    assert len(off) == 1 and "turns RT throttling off on every CPU" in off[0] and "this kernel has it" in off[0]
    assert hs.rt_budget_warnings(-1, False, rt_groups, conf, None) == []  # not set by this run: said when it was
    refused = hs.rt_budget_warnings(950000, False, rt_groups, conf, None)  # no qemu.conf: libvirt uses cpu
    assert len(refused) == 1 and "fails to start" in refused[0]
    assert hs.rt_budget_warnings(950000, False, rt_groups, conf, ["cpuset", "memory"]) == []
    write(conf, 'cgroup_controllers = [ "cpuset", "memory" ]\n')
    assert hs.rt_budget_warnings(950000, False, rt_groups, conf, None) == []
    assert hs.rt_budget_warnings(950000, False, plain, conf, ["cpu"]) == []  # no RT group scheduling: no problem


def test_hook_layout_is_compared_as_data(tmp_path):
    hook = str(tmp_path / "hooks" / "qemu")
    layout_path = str(tmp_path / "hooks" / "layout.json")
    os.makedirs(os.path.dirname(hook), mode=0o755)
    os.chmod(os.path.dirname(hook), 0o755)
    layout = {"partitions": {"/rt": {"name": "/rt", "cpus": "0-3", "exclusive": False}}, "machine": {"cpus": "0-1"}}
    assert set(hs.check_hook(hook, "#!x\n", layout_path, layout)) == {
        "%s is missing" % hook, "%s is missing" % layout_path}
    write(hook, "#!x\n", 0o755)
    write(layout_path, json.dumps(layout, indent=4, sort_keys=True) + "\n", 0o644)
    assert hs.check_hook(hook, "#!x\n", layout_path, layout) == []
    changed = dict(layout, machine={"cpus": "0"})
    assert hs.check_hook(hook, "#!x\n", layout_path, changed) == ["%s does not describe this layout" % layout_path]
    assert hs.check_hook(hook, "#!y\n", layout_path, layout) == ["%s differs from what the role writes" % hook]


def test_hook_in_qemu_d_and_a_hook_of_ours_at_the_old_path_is_pending(tmp_path):
    hooks = tmp_path / "hooks"
    hook, legacy, layout_path = str(hooks / "qemu.d" / "rtvirt-kvm-partitions"), str(hooks / "qemu"), str(hooks / "l.json")
    layout = {"partitions": {}, "machine": {}}
    os.makedirs(str(hooks), mode=0o755)
    os.chmod(str(hooks), 0o755)
    assert hs.check_hook(hook, "#!x\n", layout_path, layout, legacy) == [
        "directory %s is missing" % os.path.dirname(hook), "%s is missing" % hook, "%s is missing" % layout_path]
    os.makedirs(os.path.dirname(hook), mode=0o755)
    os.chmod(os.path.dirname(hook), 0o755)
    write(hook, "#!x\n", 0o755)
    write(layout_path, json.dumps(layout), 0o644)
    assert hs.check_hook(hook, "#!x\n", layout_path, layout, legacy) == []
    # An earlier version's hook at the single-script path: pending until the role removes it.
    write(legacy, "#!/usr/bin/python3\n# Ansible managed\n%s: re-creates ...\n" % hs.HOOK_MARKER, 0o755)
    assert hs.legacy_hook(legacy) == "ours"
    assert hs.check_hook(hook, "#!x\n", layout_path, layout, legacy) == [
        "%s is host_prep's hook of an earlier version: it moves to %s" % (legacy, hook)]
    assert hs.hook_kept_note(legacy, "ours", hook) is None
    # The operator's (or OpenStack's, oVirt's) hook there: not pending, and said to be kept.
    write(legacy, "#!/bin/sh\necho \"$@\" >> /var/log/mine\n", 0o755)
    assert hs.legacy_hook(legacy) == "foreign"
    assert hs.check_hook(hook, "#!x\n", layout_path, layout, legacy) == []
    assert hs.hook_kept_note(legacy, "foreign", hook) == (
        "found %s, which is not host_prep's: kept as it is (libvirt runs it before %s/)" % (legacy, hooks / "qemu.d"))
    # The marker must be near the top: a script that only mentions it further down is not ours.
    write(legacy, "#!/bin/sh\n" + "# x\n" * 20 + hs.HOOK_MARKER + "\n", 0o755)
    assert hs.legacy_hook(legacy) == "foreign"


def test_summary_says_a_foreign_hook_is_kept():
    plan = dict(realtime_cpus="1", source="given", housekeeping_cpus="0", machine_cpus="0", emulator_cpus="0",
                emulator_mode="shared", partitions=[], pending={},
                hook_legacy={"path": "/h/qemu", "state": "foreign", "note": "found /h/qemu, which is not ours"})
    assert hs.summary(plan, True).endswith("; the host matches the plan; found /h/qemu, which is not ours")
    assert hs.summary(dict(plan, hook_legacy={"state": "absent", "note": None}), True).endswith("matches the plan")


def test_dpkg_status_and_commands(tmp_path):
    status = str(tmp_path / "status")
    write(status, "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n")
    assert hs.installed_packages(status) == {"a"}
    assert hs.installed_packages(str(tmp_path / "none")) is None
    write(str(tmp_path / "proc" / "42" / "comm"), "libvirtd\n")
    write(str(tmp_path / "proc" / "self" / "comm"), "python\n")
    assert hs.running_commands(str(tmp_path / "proc")) == {"libvirtd"}


def _v1_host(tmp_path, monkeypatch, cpus="0-3", mems="0", exclusive="0"):
    """A fake v1 host of plain files: cpuset and cpu hierarchies with /rt.partition in both, and the planner's
    Host pointed at it (the seam libvirt_partition's own unit tests use)."""
    root = tmp_path / "cg"
    mountinfo = ("30 25 0:26 / %s/cpuset rw - cgroup cgroup rw,cpuset\n"
                 "31 25 0:27 / %s/cpu rw - cgroup cgroup rw,cpu\n") % (root, root)
    write(str(tmp_path / "proc" / "self" / "mountinfo"), mountinfo)
    write(str(tmp_path / "proc" / "cgroups"), "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t1\t1\t1\n")
    for directory, knobs in ((root / "cpuset", {"cpuset.cpus": "0-3", "cpuset.mems": "0", "cpuset.cpu_exclusive": "1"}),
                             (root / "cpuset" / "rt.partition",
                              {"cpuset.cpus": cpus, "cpuset.mems": mems, "cpuset.cpu_exclusive": exclusive}),
                             (root / "cpu", {}), (root / "cpu" / "rt.partition", {})):
        for knob, value in dict(knobs, tasks="").items():
            write(str(directory / knob), value + "\n")
    for name, value in (("mountinfo", str(tmp_path / "proc" / "self" / "mountinfo")),
                        ("proc_cgroups", str(tmp_path / "proc" / "cgroups")), ("proc_root", str(tmp_path / "proc")),
                        ("qemu_run_dir", str(tmp_path / "run-qemu")), ("systemd_run_dir", str(tmp_path / "none")),
                        ("qemu_conf", str(tmp_path / "none")), ("lock_path", str(tmp_path / "lock")),
                        ("files", PlainFiles())):
        monkeypatch.setattr(Host, name, value)
    return root


@pytest.mark.parametrize("target, host", [
    ({"cpus": "0-3"}, {}),
    ({"cpus": "0-3", "exclusive": True}, {}),
    ({"cpus": "0-3", "exclusive": True}, {"exclusive": "1"}),
    ({"cpus": "2-3"}, {}),
    ({"cpus": "0-3"}, {"mems": ""}),
    ({"cpus": "0-3", "mems": "1"}, {}),
    ({"cpus": "0-7"}, {}),            # outside the parent: the planner refuses, so the area is pending
])
def test_partitions_are_libvirt_partitions_own_plan(tmp_path, monkeypatch, target, host):
    _v1_host(tmp_path, monkeypatch, **host)
    reasons = hs.check_partitions(None, [dict({"name": "/rt"}, **target)])
    checked = run_module(libvirt_partition, dict({"name": "/rt"}, **target), check_mode=True)
    if checked.get("failed"):
        assert reasons == ["/rt: not converged as it stands (%s)" % checked["msg"]]
        return
    assert reasons == ["/rt: %s" % step for step in checked["planned"]]
    assert bool(reasons) == checked["changed"]
    if reasons:
        applied = run_module(libvirt_partition, dict({"name": "/rt"}, **target))
        assert applied["changed"] and not applied.get("failed"), applied
    assert hs.check_partitions(None, [dict({"name": "/rt"}, **target)]) == []


def test_partition_missing_in_one_hierarchy_is_pending(tmp_path, monkeypatch, partition_record):
    root = _v1_host(tmp_path, monkeypatch)
    partition_record.write_text('{"version": 1, "partitions": {"/rt": {"cpus": "0-3"}}}')
    shutil.rmtree(str(root / "cpu" / "rt.partition"))
    reasons = hs.check_partitions(None, [{"name": "/rt", "cpus": "0-3"}])
    assert reasons == ["/rt: mkdir %s" % (root / "cpu" / "rt.partition")]


VIOLATIONS = [
    {"kind": "irq_default_affinity", "message": "default_smp_affinity includes 3"},
    {"kind": "irq_affinity", "irq": 30, "changeable": True, "message": "IRQ 30 on 3"},
    {"kind": "irq_affinity", "irq": 31, "changeable": True, "message": "IRQ 31 on 3 (refused EIO)"},
    {"kind": "irq_affinity", "irq": 36, "changeable": False, "message": "IRQ 36 on 3 (read-only)"},
    {"kind": "cgroup_cpuset", "offender": "/machine", "message": "/machine holds 3"},
    {"kind": "cgroup_cpuset", "offender": "/machine.slice", "message": "/machine.slice holds 3"},
    {"kind": "cgroup_cpuset", "offender": "/machine/qemu-1-g.libvirt-qemu", "message": "a guest holds 3"},
    {"kind": "thread_affinity", "message": "kworker on 3"},
]


def test_host_prep_violations_are_what_host_prep_answers_for():
    kept = hs.host_prep_violations(VIOLATIONS, hs.VERIFY_KINDS, unmovable_irqs=["31"])
    assert [v["message"] for v in kept] == ["default_smp_affinity includes 3", "IRQ 30 on 3", "/machine holds 3",
                                            "/machine.slice holds 3"]
    assert hs.host_prep_violations(VIOLATIONS, ["thread_affinity"]) == [VIOLATIONS[-1]]
    assert hs.host_prep_violations(VIOLATIONS, []) == []


def test_host_prep_violations_filter_is_the_same_selection():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.rtvirt.kvm.plugins.filter.host_prep import host_prep_violations

    facts = {"violations": VIOLATIONS}
    assert host_prep_violations(facts, list(hs.VERIFY_KINDS), [31]) == \
        hs.host_prep_violations(VIOLATIONS, hs.VERIFY_KINDS, ["31"])
    with pytest.raises(AnsibleFilterError, match="expects the cpu_isolation fact"):
        host_prep_violations([], ["irq_affinity"])


KINDS = list(hs.VERIFY_KINDS)
NO_VIOLATION = "; no irq_default_affinity/irq_affinity/cgroup_cpuset violation host_prep answers for on the realtime CPUs"


def test_verdict_of_a_converged_host_is_its_summary_and_what_verify_found():
    clean = hs.verdict("the plan", [], 0, KINDS)
    assert clean == {"ok": True, "msg": "the plan" + NO_VIOLATION, "failures": []}
    others = hs.verdict("the plan", [], 34, KINDS)["msg"]
    assert others.startswith("the plan" + NO_VIOLATION + " (34 others, e.g. threads")
    assert others.endswith("rtvirt.kvm.remediation reports them)")
    assert hs.verdict("the plan", [], 0, KINDS, verify=False) == {"ok": True, "msg": "the plan", "failures": []}


def test_verdict_fails_on_a_violation_except_in_check_mode():
    kept = hs.host_prep_violations(VIOLATIONS, hs.VERIFY_KINDS, unmovable_irqs=["31"])
    failed = hs.verdict("the plan", kept, 4, KINDS)
    assert not failed["ok"]
    assert failed["failures"] == ["default_smp_affinity includes 3", "IRQ 30 on 3", "/machine holds 3",
                                  "/machine.slice holds 3"]
    checked = hs.verdict("the plan", kept, 4, KINDS, check_mode=True)
    assert checked["ok"]
    assert checked["msg"] == ("the plan; a real run would still have to fix: default_smp_affinity includes 3; "
                              "IRQ 30 on 3; /machine holds 3; /machine.slice holds 3")


def test_verdict_after_a_change_names_the_areas_not_the_others():
    assert hs.verdict("the plan", [], 34, KINDS, areas=["irqs", "sysctl"])["msg"] == \
        "converged irqs, sysctl" + NO_VIOLATION
    assert hs.verdict("the plan", [], 0, KINDS, areas=["irqs"], check_mode=True)["msg"] == \
        "would converge irqs" + NO_VIOLATION


def test_host_prep_verdict_filter_selects_as_the_module_does():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.rtvirt.kvm.plugins.filter.host_prep import host_prep_verdict

    kept = hs.host_prep_violations(VIOLATIONS, hs.VERIFY_KINDS, unmovable_irqs=["31"])
    assert host_prep_verdict({"violations": VIOLATIONS}, KINDS, [31], summary="s", areas=["irqs"]) == \
        hs.verdict("s", kept, len(VIOLATIONS) - len(kept), KINDS, areas=["irqs"])
    # verify=false reads no facts (converge.yml gathers none then).
    assert host_prep_verdict({}, KINDS, summary="s", areas=["irqs"], verify=False) == \
        {"ok": True, "msg": "converged irqs", "failures": []}
    with pytest.raises(AnsibleFilterError, match="host_prep_verdict expects the cpu_isolation fact"):
        host_prep_verdict({}, KINDS)


def test_summary_names_the_plan_and_what_differs():
    plan = {"realtime_cpus": "2-3", "source": "given", "housekeeping_cpus": "0-1", "machine_cpus": "0",
            "emulator_cpus": "1", "emulator_mode": "dedicated",
            "partitions": [{"name": "/rt", "cpus": "1-3", "exclusive": True}, {"name": "/b", "cpus": "3", "exclusive": False}]}
    assert hs.summary(dict(plan, pending={}), True) == (
        "realtime CPUs 2-3 (given), housekeeping CPUs 0-1, /machine on 0, emulator threads on 1 (dedicated), "
        "partitions /rt on 1-3 (exclusive), /b on 3; the host matches the plan")
    text = hs.summary(dict(plan, pending={"sysctl": ["value 950000, not -1"], "irqs": ["IRQ 30 on 3", "banned"]}), False)
    assert text.endswith("/machine on its CPUs (left alone), emulator threads on 1 (dedicated), partitions /rt on 1-3 "
                         "(exclusive), /b on 3; differs: sysctl (value 950000, not -1); irqs (IRQ 30 on 3; banned)")


@pytest.mark.parametrize("value", [False, 5, 1.5, [1]])
def test_a_dict_option_given_a_scalar_fails_with_a_message(tmp_path, value):
    # Found by test_hostile_arguments: ansible-core's validator raised TypeError ("argument of type 'bool' is not
    # iterable") for a dict option with suboptions given anything but a dict or a string.
    from ansible_collections.rtvirt.kvm.plugins.modules import host_plan
    result = run_module(host_plan, {"cmdline": value, "sys_root": str(tmp_path / "sys")})
    assert result.get("failed"), result
    assert result["msg"].startswith("argument 'cmdline' is of type %s" % type(value).__name__), result["msg"]


def test_a_file_that_is_not_text_reads_as_absent_not_a_crash(irqs, tmp_path):
    # host_plan and the boot loader detection share one reader: a Latin-1 byte in irqbalance's config or a
    # binary where the sysctl file should be is "not what the role writes", never a UnicodeDecodeError.
    # irqbalance's file is read as lineinfile reads it, as bytes, so the plan and the task agree on it.
    proc, sys_root = irqs
    banned = tmp_path / "irqbalance"
    banned.write_bytes(b"# caf\xe9\nIRQBALANCE_BANNED_CPULIST=2-3\n")
    assert hs.check_irqs(frozenset([0]), str(banned), "2-3", proc_root=proc, sys_root=sys_root) == []
    banned.write_bytes(b"# caf\xe9\n")
    assert hs.check_irqs(frozenset([0]), str(banned), "2-3", proc_root=proc, sys_root=sys_root) == [
        "%s does not ban 2-3" % banned]
    sysctl = tmp_path / "90.conf"
    sysctl.write_bytes(b"\xff\xfe\x00")
    write(proc + "/sys/kernel/sched_rt_runtime_us", "-1\n")
    assert hs.check_sysctl(str(sysctl), "x = 1\n", -1, proc_root=proc) == ["%s is missing" % sysctl]


def test_partition_tunables_are_planned_and_bad_ones_fail_the_plan(tmp_path, monkeypatch):
    root = _v1_host(tmp_path, monkeypatch)
    write(str(root / "cpu" / "rt.partition" / "cpu.shares"), "1024\n")
    target = {"name": "/rt", "cpus": "0-3", "cpu_shares": 2048}
    checked = run_module(libvirt_partition, target, check_mode=True)
    assert not checked.get("failed"), checked.get("msg")
    assert hs.check_partitions(None, [target]) == ["/rt: %s" % step for step in checked["planned"]]
    # A value no order of the role's tasks can converge is bad input: it fails the plan, naming the rule.
    with pytest.raises(hs.TunableError, match=r"partition /rt: cpu_shares=1 is outside cpu.shares's range 2-262144"):
        hs.check_partitions(None, [dict(target, cpu_shares=1)])
    with pytest.raises(hs.TunableError, match="partition /rt: memory_hard_limit: 'lots' is not a size"):
        hs.check_partitions(None, [dict(target, memory_hard_limit="lots")])


def test_partition_targets_carry_the_tunables():
    plan = {"machine_cpus": "0", "partitions": [{"name": "/rt", "cpus": "1-3", "exclusive": False, "mems": None,
                                                 "cpu_shares": 512, "memory_hard_limit": "8G"}]}
    rt = hs.partition_targets(plan, narrow_machine=True)[1]
    assert rt == {"name": "/rt", "cpus": "1-3", "mems": None, "exclusive": False, "cpu_shares": 512,
                  "memory_hard_limit": "8G", "memory_soft_limit": None, "memory_swap_hard_limit": None,
                  "blkio_weight": None}
