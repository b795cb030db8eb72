"""Can libvirt's QEMU open /dev/kvm: the owner/mode/group rules and qemu.conf's user."""
import os
import stat

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils import _kvm


def _stat(uid, gid, mode, kind=stat.S_IFCHR):
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


QEMU = ("libvirt-qemu", 999, 995)


@pytest.mark.parametrize("device, groups, allowed", [
    (_stat(0, 0, 0o600), {995}, False),          # the kernel's node on a host without udev
    (_stat(0, 994, 0o660), {995, 994}, True),    # what the udev rule makes, QEMU's user in group kvm
    (_stat(0, 994, 0o660), {995}, False),        # group kvm, but the user is not in it
    (_stat(0, 994, 0o666), {995}, True),         # systemd's newer default rule: world read-write
    (_stat(999, 0, 0o600), {995}, True),         # owned by QEMU's user
    (_stat(0, 994, 0o640), {994}, False),        # read-only for the group: QEMU opens it read-write
])
def test_access_follows_owner_group_and_mode(device, groups, allowed):
    problem = _kvm.access_problem(device, QEMU, groups)
    assert (problem is None) == allowed, problem
    if not allowed:
        assert "libvirt-qemu is not allowed to open it" in problem


def test_root_and_missing_or_odd_devices():
    assert _kvm.access_problem(_stat(0, 0, 0o600), ("root", 0, 0), {0}) is None
    assert "does not exist" in _kvm.access_problem(None, QEMU, {995})
    assert "not a character device" in _kvm.access_problem(_stat(0, 0, 0o666, stat.S_IFREG), QEMU, set())


def test_conf_value_takes_the_last_active_assignment():
    text = '# user = "root"\nuser = "qemu"\n  user="libvirt-qemu"\ngroup = "kvm"\n'
    assert _kvm.conf_value(text, "user") == "libvirt-qemu"
    assert _kvm.conf_value('#user = "root"\n', "user") is None
    assert _kvm.conf_value("", "group") is None


def test_qemu_user_prefers_qemu_conf_then_the_distribution_defaults():
    known = {"qemu": ("qemu", 107, 107), "libvirt-qemu": ("libvirt-qemu", 999, 995), "root": ("root", 0, 0)}
    assert _kvm.qemu_user('user = "root"\n', known.get) == ("root", 0, 0)
    assert _kvm.qemu_user("", known.get) == ("libvirt-qemu", 999, 995)
    assert _kvm.qemu_user("", {"qemu": known["qemu"]}.get) == ("qemu", 107, 107)
    assert _kvm.qemu_user('user = "nobody-here"\n', known.get) is None
