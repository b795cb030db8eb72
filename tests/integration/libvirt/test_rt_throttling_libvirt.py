"""RT throttling kept on (kernel.sched_rt_runtime_us a number) on the real libvirtd: a SCHED_FIFO vCPU still starts
once the cpu controller is left out of qemu.conf's cgroup_controllers (host_prep_libvirt_cgroup_controllers).

This kernel has RT group scheduling (the v1 cpu hierarchy has cpu.rt_runtime_us): with libvirt's default
controllers every vCPU gets its own cpu cgroup with cpu.rt_runtime_us=0 and the FIFO start is refused, which the
test shows first, so that the second half proves the alternative and not a kernel without the feature.
"""
import pathlib
import sys

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import qemu_conf_controllers_line
from ansible_collections.rtvirt.kvm.plugins.modules import realtime_domain
from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module as ansible_module
from tests.support.fixtures_libvirt import SCHED_RT_RUNTIME, online_cpus, wait_for_free_pcpu

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "unit" / "plugins" / "modules"))
from _module_runner import run_module  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.libvirt

QEMU_CONF = pathlib.Path("/etc/libvirt/qemu.conf")
CPU_ROOT = pathlib.Path("/sys/fs/cgroup/cpu")
WITHOUT_CPU = ("cpuacct", "cpuset", "memory", "devices", "freezer", "blkio")


@pytest.fixture
def throttled():
    """RT throttling on, at the kernel's default budget, for the test; the old value after."""
    assert (CPU_ROOT / "cpu.rt_runtime_us").exists(), "this test is for a kernel with RT group scheduling"
    old = SCHED_RT_RUNTIME.read_text().strip()
    try:
        SCHED_RT_RUNTIME.write_text("950000")
    except OSError as exc:  # EBUSY: a FIFO task sits in a cpu cgroup with no RT time (a guest the guard missed)
        pytest.fail("cannot turn RT throttling on: %s" % exc)
    yield
    SCHED_RT_RUNTIME.write_text(old)


@pytest.fixture
def qemu_conf(libvirt_rig):
    """set(controllers): qemu.conf with that cgroup_controllers line and libvirtd restarted to read it; the old
    file (or none) and a restarted libvirtd after."""
    old = QEMU_CONF.read_text() if QEMU_CONF.exists() else None

    def set_controllers(controllers):
        QEMU_CONF.write_text((old or "") + "\n" + qemu_conf_controllers_line(controllers) + "\n")
        rig_lib.restart_libvirtd(libvirt_rig.state_dir)
    yield set_controllers
    if old is None:
        QEMU_CONF.unlink(missing_ok=True)
    else:
        QEMU_CONF.write_text(old)
    rig_lib.restart_libvirtd(libvirt_rig.state_dir)


def _vcpu(rig, name):
    """(policy, priority, cpu cgroup) of vCPU 0's thread."""
    tid = rig.threads(name).vcpus[0]
    task = pathlib.Path("/proc/%d/task/%d" % (rig.qemu_pid(name), tid))
    stat = (task / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cgroup = [line.split(":", 2)[2] for line in (task / "cgroup").read_text().splitlines()
              if "cpu" in line.split(":", 2)[1].split(",")]
    return int(fields[38]), int(fields[37]), cgroup[0]


def test_fifo_vcpu_starts_with_throttling_on_and_cpu_left_out(libvirt_rig, unique_name, throttled, qemu_conf):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), str(cpus[0])
    partition = "/%s" % unique_name
    wait_for_free_pcpu(unique_name, pool)
    args = dict(name=unique_name, vcpus=1, memory_mib=128, vcpupin={"0": pool}, emulator_cpus=housekeeping,
                fifo_priority=4, partition=partition, domain_type="kvm" if rig_lib.kvm_usable() else "qemu")
    made = ansible_module("rtvirt.kvm.libvirt_partition", {"name": partition})
    assert not made.get("failed"), made.get("msg")
    try:
        refused = run_module(realtime_domain, args)
        assert refused.get("failed"), refused
        assert "Operation not permitted" in refused["msg"] and "cgroup_controllers" in refused["msg"], refused["msg"]
        assert unique_name not in libvirt_rig.domains()

        qemu_conf(WITHOUT_CPU)
        started = run_module(realtime_domain, args)
        assert not started.get("failed"), started.get("msg")
        assert started["started"] and unique_name in libvirt_rig.domains(inactive=False)
        policy, priority, cgroup = _vcpu(libvirt_rig, unique_name)
        assert (policy, priority) == (1, 4)  # SCHED_FIFO at the asked priority
        # In libvirtd's own cpu cgroup, which has RT time, not in a per-vCPU one with none.
        assert int((CPU_ROOT / cgroup.lstrip("/") / "cpu.rt_runtime_us").read_text()) > 0, cgroup
        assert SCHED_RT_RUNTIME.read_text().strip() == "950000"
    finally:
        gone = run_module(realtime_domain, {"name": unique_name, "state": "absent"})
        removed = ansible_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    assert not removed.get("failed"), removed.get("msg")
