"""host_prep_state: absent on the real kernel and libvirtd: the host goes back to how it was before host_prep (issue 20).

host_prep converges this machine once with every area it can change here: a throwaway partition
(``/rtvirt-t-<hex>``) on every CPU beside /machine, /machine narrowed to the housekeeping CPU, IRQs and
default_smp_affinity moved there, the qemu.d hook with its layout and the partition record, kernel.sched_rt_runtime_us
at -1 with its sysctl.d file (in tmp_path), and the kernel parameters in a GRUB defaults file and an irqbalance file of
the test's (no update-grub: host_prep_grub_update_command is empty). The operator's /etc/libvirt/hooks/qemu and
another executable in qemu.d are in place before. Then, in order:

1. absent while a guest runs in the partition: refused in the plan task, naming the guest and the partition,
   nothing changed;
2. absent in check mode: changes reported, nothing written;
3. absent: every item back (cpuset files, IRQs, default_smp_affinity, sysctl value and file, hook files, the
   operator's hooks byte for byte, the record gone, the GRUB and irqbalance files as before), and host_tuning's
   run-time tuning too: the unbound workqueue cpumask and every workqueue's own, kthreadd's affinity (moved by the
   present run), timer_migration and stat_interval, its modprobe.d and sysctl.d files (in tmp_path) as before;
4. absent again: nothing changed.

Before the present run the tuning is taken off by hand as a fresh boot has it (site.yml may have tuned this
machine), so the present run has something to move and the way back something to put back.

What the host guard snapshots (/machine, IRQs, sysctls, the hook files, the tuning knobs and kernel thread
affinities) is put back at the session's end; the fixtures put back the hook files, the tuning and the partition at
the test's end too.
"""
import os
import pathlib
import stat

import pytest

from tests.support import host_guard
from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module
from tests.support.playbook_runner import module_runs, run_playbook

pytestmark = pytest.mark.libvirt

HOOKS = pathlib.Path("/etc/libvirt/hooks")
OPERATOR = HOOKS / "qemu"
OURS = HOOKS / "qemu.d" / "rtvirt-kvm-partitions"
OTHER_QEMU_D = HOOKS / "qemu.d" / "50-operator"
LAYOUT = HOOKS / "rtvirt-kvm-layout.json"
RECORD = HOOKS / "rtvirt-kvm-partitions.json"
SAVED = (OPERATOR, OURS, OTHER_QEMU_D, LAYOUT, RECORD)
SYSCTL = pathlib.Path("/proc/sys/kernel/sched_rt_runtime_us")
DEFAULT_AFFINITY = pathlib.Path("/proc/irq/default_smp_affinity")
MACHINE = pathlib.Path("/sys/fs/cgroup/cpuset/machine/cpuset.cpus")
GRUB = 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n'
IRQBALANCE = "# irqbalance's defaults\n#IRQBALANCE_BANNED_CPULIST=\nIRQBALANCE_ONESHOT=\n"
OPERATOR_HOOK = b"#!/bin/sh\n# the operator's own qemu hook\nexit 0\n"
WORKQUEUES = pathlib.Path("/sys/devices/virtual/workqueue")
# The tuning sysctls whose kernel default host_tuning knows (the others it leaves, and says so).
KNOWN_SYSCTLS = {"kernel/timer_migration": "1", "vm/stat_interval": "1"}


def _online():
    return pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()


def _movable_irqs():
    """{irq: smp_affinity_list} of the IRQs whose affinity the kernel lets a write change."""
    found = {}
    for entry in pathlib.Path("/proc/irq").iterdir():
        if entry.name.isdigit() and (entry / "smp_affinity").stat().st_mode & 0o200:
            try:
                found[entry.name] = (entry / "smp_affinity_list").read_text().strip()
            except OSError:
                continue
    return found


def _workqueue_masks():
    """{path: cpumask} of the unbound workqueue cpumask and every workqueue's own."""
    paths = [WORKQUEUES / "cpumask"] + sorted(WORKQUEUES.glob("*/cpumask"))
    return {str(path): path.read_text().strip() for path in paths if path.is_file()}


def _untune():
    """The tuning as a fresh boot has it: workqueues and kthreadd on every online CPU, timers migrating."""
    online = {int(cpu) for cpu in range(int(_online().replace(",", "-").split("-")[-1]) + 1)}
    mask = "%x" % sum(1 << cpu for cpu in online)
    for path in _workqueue_masks():
        pathlib.Path(path).write_text(mask)
    os.sched_setaffinity(2, online)
    for name, value in KNOWN_SYSCTLS.items():
        pathlib.Path("/proc/sys", name).write_text(value)


def _leaf_dirs(partition):
    leaf = partition.lstrip("/") + ".partition"
    return [mount / leaf for mount in rig_lib.cgroup_mounts() if (mount / leaf).is_dir()]


@pytest.fixture
def host_before():
    """What host_prep changes outside tmp_path, put back after the test (the guard does it again at the end)."""
    saved = {path: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.is_file() else None
             for path in SAVED}
    had_qemu_d = OURS.parent.is_dir()
    knobs, kthreads = host_guard._knobs(), host_guard._kthread_affinities()
    before = {"machine": MACHINE.read_text().strip() if MACHINE.exists() else None,
              "sysctl": SYSCTL.read_text().strip(), "default": DEFAULT_AFFINITY.read_text().strip(),
              "irqs": _movable_irqs()}
    yield before
    for path, value in knobs.items():
        try:
            if pathlib.Path(path).read_text().strip() != value:
                pathlib.Path(path).write_text(value)
        except OSError:
            continue
    host_guard._restore_kthreads(kthreads, [])
    for path, record in saved.items():
        if record is None:
            if path.is_file() or path.is_symlink():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(record[0])
        os.chmod(path, record[1])
    if not had_qemu_d and OURS.parent.is_dir() and not any(OURS.parent.iterdir()):
        OURS.parent.rmdir()
    SYSCTL.write_text(before["sysctl"])
    DEFAULT_AFFINITY.write_text(before["default"])
    for irq, cpus in before["irqs"].items():
        try:
            pathlib.Path("/proc/irq/%s/smp_affinity_list" % irq).write_text(cpus)
        except OSError:
            continue


@pytest.fixture
def partition(unique_name, host_before):
    name = "/%s" % unique_name
    yield name
    removed = run_module("rtvirt.kvm.libvirt_partition", {"name": name, "state": "absent"})
    assert not removed.get("failed"), removed.get("msg")
    if host_before["machine"]:
        widened = run_module("rtvirt.kvm.libvirt_partition", {"name": "/machine", "cpus": host_before["machine"]})
        assert not widened.get("failed"), widened.get("msg")


def _host_prep(tmp_path, partition, state, check=False, diff=False):
    online = _online()
    role_vars = {
        "host_prep_state": state,
        "host_prep_realtime_cpus": online.replace("-", ",").split(",")[-1],
        "host_prep_partitions": [{"name": partition}],
        "host_prep_manage_cmdline": True,
        "host_prep_grub_file": str(tmp_path / "grub"),
        "host_prep_grub_update_command": [],
        "host_prep_install_libvirt": False,
        "host_prep_install_hook": True,
        "host_prep_manage_irqs": True,
        "host_prep_irqbalance_file": str(tmp_path / "irqbalance"),
        "host_prep_sysctl_file": str(tmp_path / "90-rtvirt-test.conf"),
        "host_prep_sched_rt_runtime_us": -1,
        "host_prep_modprobe_file": str(tmp_path / "modprobe.d" / "rtvirt-kvm.conf"),
        "host_prep_tuning_sysctl_file": str(tmp_path / "sysctl.d" / "91-rtvirt-kvm-tuning.conf"),
        "host_prep_verify": False,
    }
    play = [{"hosts": "localhost", "gather_facts": False,
             "roles": [{"role": "rtvirt.kvm.host_prep", "vars": role_vars}]}]
    return run_playbook(tmp_path, play, check=check, diff=diff, timeout=600)


def _prepared(partition):
    """What a host host_prep prepared shows (and a refused or checked way back leaves as it is)."""
    return {"leaves": sorted(map(str, _leaf_dirs(partition))), "machine": MACHINE.read_text().strip(),
            "ours": OURS.is_file(), "layout": LAYOUT.is_file(), "record": RECORD.read_text() if RECORD.exists() else None,
            "sysctl": SYSCTL.read_text().strip(), "default": DEFAULT_AFFINITY.read_text().strip()}


def test_absent_puts_the_host_back_refuses_while_a_guest_runs_and_is_idempotent(
        libvirt_rig, unique_name, partition, host_before, tmp_path):
    online = _online()
    grub, irqbalance, sysctl_file = tmp_path / "grub", tmp_path / "irqbalance", tmp_path / "90-rtvirt-test.conf"
    grub.write_text(GRUB)
    irqbalance.write_text(IRQBALANCE)
    OURS.parent.mkdir(parents=True, exist_ok=True)
    OPERATOR.write_bytes(OPERATOR_HOOK)
    os.chmod(OPERATOR, 0o750)
    OTHER_QEMU_D.write_bytes(OPERATOR_HOOK)
    os.chmod(OTHER_QEMU_D, 0o755)
    modprobe_file = tmp_path / "modprobe.d" / "rtvirt-kvm.conf"
    tuning_file = tmp_path / "sysctl.d" / "91-rtvirt-kvm-tuning.conf"
    _untune()
    tuning_before = {"workqueues": _workqueue_masks(), "kthreadd": sorted(os.sched_getaffinity(2)),
                     "sysctls": {name: pathlib.Path("/proc/sys", name).read_text().strip() for name in KNOWN_SYSCTLS},
                     "modprobe": modprobe_file.exists(), "tuning_file": tuning_file.exists()}

    present = _host_prep(tmp_path, partition, "present")
    assert present["rc"] == 0, present["out"][-5000:]
    realtime = online.replace("-", ",").split(",")[-1]
    prepared = _prepared(partition)
    assert prepared["leaves"] and prepared["ours"] and prepared["layout"] and partition in (prepared["record"] or "")
    assert prepared["machine"] != online and prepared["sysctl"] == "-1"
    assert "isolcpus=" in grub.read_text() and "IRQBALANCE_BANNED_CPULIST=%s\n" % realtime in irqbalance.read_text()
    assert sysctl_file.is_file()
    # The present run tuned: workqueues and kthreadd off the realtime CPU, the files written.
    assert _workqueue_masks() != tuning_before["workqueues"] and int(realtime) not in os.sched_getaffinity(2)
    assert modprobe_file.is_file() and tuning_file.is_file()
    assert pathlib.Path("/proc/sys/kernel/timer_migration").read_text().strip() == "0"

    # 1. A guest runs in the partition: refused by the plan task, naming both; nothing changed.
    guest = "%s-g" % unique_name
    with libvirt_rig.guest(guest, vcpus=1, partition=partition):
        # libvirt's start adds the partition in the hierarchies it manages the guest in.
        prepared = _prepared(partition)
        refused = _host_prep(tmp_path, partition, "absent")
        assert refused["rc"] != 0 and refused["failed"] == 1 and refused["changed"] == 0, refused["out"][-4000:]
        assert [t["action"] for t in module_runs(refused["tasks"])] == ["rtvirt.kvm.host_plan"]
        assert "partition %s: guest %s is defined in it" % (partition, guest) in refused["out"], refused["out"][-4000:]
        assert _prepared(partition) == prepared
    assert guest not in libvirt_rig.domains()
    prepared = _prepared(partition)

    # 2. Check mode with --diff: what would change is reported and shown; nothing is written.
    dry = _host_prep(tmp_path, partition, "absent", check=True, diff=True)
    assert dry["rc"] == 0 and dry["changed"] > 0, dry["out"][-5000:]
    for shown in ("--- before: %s" % grub, "-IRQBALANCE_BANNED_CPULIST=%s" % realtime, '"path": "%s"' % OURS,
                  "--- before: cgroup hierarchies"):
        assert shown in dry["out"], (shown, dry["out"][-6000:])
    assert "taking host_prep off: differs from the host before host_prep" in dry["out"], dry["out"][-5000:]
    assert _prepared(partition) == prepared
    assert "isolcpus=" in grub.read_text() and sysctl_file.is_file()
    assert "host_tuning" in dry["out"] and modprobe_file.is_file() and tuning_file.is_file()
    assert int(realtime) not in os.sched_getaffinity(2)

    # 3. The way back.
    back = _host_prep(tmp_path, partition, "absent")
    assert back["rc"] == 0 and back["changed"] > 0, back["out"][-5000:]
    assert _leaf_dirs(partition) == []
    assert MACHINE.read_text().strip() == online
    mask = (1 << (int(online.replace(",", "-").split("-")[-1]) + 1)) - 1
    assert int(DEFAULT_AFFINITY.read_text().strip().replace(",", ""), 16) == mask
    moved_back = _movable_irqs()
    assert moved_back and all(cpus == online for cpus in moved_back.values()), moved_back
    assert SYSCTL.read_text().strip() == "950000" and not sysctl_file.exists()
    assert not OURS.exists() and not LAYOUT.exists() and not RECORD.exists()
    assert OPERATOR.read_bytes() == OPERATOR_HOOK and stat.S_IMODE(OPERATOR.stat().st_mode) == 0o750
    assert OTHER_QEMU_D.read_bytes() == OPERATOR_HOOK
    assert grub.read_text() == GRUB and irqbalance.read_text() == IRQBALANCE
    assert "Not undone: " in back["out"] and "libvirt-qemu user and group" in back["out"], back["out"][-3000:]
    # host_tuning's way back: as before host_prep.
    assert _workqueue_masks() == tuning_before["workqueues"]
    assert sorted(os.sched_getaffinity(2)) == tuning_before["kthreadd"]
    assert {name: pathlib.Path("/proc/sys", name).read_text().strip()
            for name in KNOWN_SYSCTLS} == tuning_before["sysctls"]
    assert modprobe_file.exists() == tuning_before["modprobe"] and tuning_file.exists() == tuning_before["tuning_file"]
    assert "stay until the next boot" not in back["out"], back["out"][-3000:]

    # 4. Again: nothing left to take off, and the plan task is the only module run.
    again = _host_prep(tmp_path, partition, "absent")
    assert again["rc"] == 0 and again["changed"] == 0, again["out"][-5000:]
    assert [t["action"] for t in module_runs(again["tasks"])] == ["rtvirt.kvm.host_plan"], again["tasks"]
    assert "nothing of host_prep's is left" in again["out"]
