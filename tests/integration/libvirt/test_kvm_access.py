"""KVM for libvirt's QEMU user, on the real libvirtd: usable after the rig's (the distribution's) setup, and a kvm
guest refused, not quietly emulated, when QEMU cannot open /dev/kvm."""
import contextlib
import os
import pathlib

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils import _kvm
from tests.support.ansible_runner import run_module
from tests.support.fixtures_libvirt import online_cpus

pytestmark = pytest.mark.libvirt


@contextlib.contextmanager
def kvm_device_mode(mode, gid=0):
    """/dev/kvm as root:<gid> <mode> for the test (a host without udev, before host_prep); put back after."""
    device = pathlib.Path(_kvm.DEVICE)
    info = device.stat()
    os.chown(device, 0, gid)
    os.chmod(device, mode)
    try:
        yield
    finally:
        os.chown(device, info.st_uid, info.st_gid)
        os.chmod(device, info.st_mode & 0o7777)


def _guest_args(name, **extra):
    cpus = online_cpus()
    return dict(name=name, vcpus=1, memory_mib=64, vcpupin={"0": str(cpus[-1])}, emulator_cpus=str(cpus[0]),
                partition="/machine", fifo_priority=1, **extra)


def test_qemu_user_can_open_kvm_after_the_distribution_setup(libvirt_rig):
    user, problem = _kvm.read_access()
    assert (user, problem) == ("libvirt-qemu", None)
    conf = pathlib.Path(_kvm.QEMU_CONF)
    assert _kvm.conf_value(conf.read_text() if conf.exists() else "", "user") != "root"


def test_kvm_guest_is_refused_before_it_is_defined_when_qemu_cannot_open_kvm(libvirt_rig, unique_name):
    with kvm_device_mode(0o600):
        result = run_module("rtvirt.kvm.realtime_domain", _guest_args(unique_name))
        checked = run_module("rtvirt.kvm.realtime_domain", _guest_args(unique_name), check=True)
    assert result.get("failed"), result
    assert "KVM is not usable by QEMU" in result["msg"] and "not started under TCG" in result["msg"], result["msg"]
    assert "/dev/kvm is root:root 0600" in result["msg"] and unique_name in result["msg"]
    assert unique_name not in libvirt_rig.domains()
    # Check mode predicts it with a warning and changes nothing.
    assert not checked.get("failed"), checked
    assert "[WARNING]: guest %s: KVM is not usable by QEMU" % unique_name in checked["_stderr"], checked
    assert unique_name not in libvirt_rig.domains()


def test_tcg_guest_with_fifo_vcpus_draws_a_warning(libvirt_rig, unique_name):
    result = run_module("rtvirt.kvm.realtime_domain", _guest_args(unique_name, domain_type="qemu"), check=True)
    assert not result.get("failed"), result
    assert result["started"] is True
    assert "runs under TCG emulation (type=qemu) with SCHED_FIFO vCPUs" in result["_stderr"], result
    assert "not realtime" in result["_stderr"]
    assert unique_name not in libvirt_rig.domains()
