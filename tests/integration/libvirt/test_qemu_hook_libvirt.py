"""host_prep's qemu hook against a real libvirtd: the operator's hook is never lost, and only what the collection
manages is re-created (issue 20).

host_prep runs through ansible-playbook on this machine with the hook on and everything else it could change
off or in the test's temporary directory (no IRQs, no GRUB, no libvirt install, /machine left as it is, the
sysctl.d file in tmp_path at the value the host has). Its one realtime partition is the test's
(``/rtvirt-t-<hex>``). In order:

1. a hook of an earlier host_prep at /etc/libvirt/hooks/qemu (its marker line) is moved to qemu.d;
2. the operator's hook put there afterwards stays byte for byte through another run, which says it kept it;
3. a guest in the role's partition starts after the partition was deleted in every hierarchy: our hook
   re-created it, and the operator's hook ran for that start too;
4. a guest naming a partition nobody made is refused with our message, and nothing is created for it; the
   operator's hook ran for that attempt as well.

The hook files, the layout and the partition record are put back as they were (the host guard snapshots them
too, for a run that dies here).
"""
import os
import pathlib
import stat

import pytest

from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module
from tests.support.playbook_runner import run_playbook

pytestmark = pytest.mark.libvirt

HOOKS = pathlib.Path("/etc/libvirt/hooks")
LEGACY = HOOKS / "qemu"
OURS = HOOKS / "qemu.d" / "rtvirt-kvm-partitions"
SAVED = (LEGACY, OURS, HOOKS / "rtvirt-kvm-layout.json", HOOKS / "rtvirt-kvm-partitions.json")
SYSCTL = pathlib.Path("/proc/sys/kernel/sched_rt_runtime_us")
EARLIER_OURS = ("#!/bin/sh\n# Ansible managed\n# libvirt qemu hook from rtvirt.kvm.host_prep: re-creates a guest's "
                "resource partition at \"prepare\" (a test's stand-in for an earlier version)\nexit 0\n")


@pytest.fixture
def hook_files():
    """Put the hook files back as they were, whatever the test left."""
    saved = {path: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.is_file() else None
             for path in SAVED}
    had_qemu_d = OURS.parent.is_dir()
    yield
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


@pytest.fixture
def partition(unique_name):
    """The role's partition; the typo partition goes too, should a broken hook have made it."""
    name = "/%s" % unique_name
    yield name
    for leftover in (name, "%s-typo" % name):
        removed = run_module("rtvirt.kvm.libvirt_partition", {"name": leftover, "state": "absent"})
        assert not removed.get("failed"), removed.get("msg")


def _host_prep(tmp_path, partition):
    online = pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()
    role_vars = {
        "host_prep_realtime_cpus": online.replace("-", ",").split(",")[-1],
        "host_prep_partitions": [{"name": partition}],
        "host_prep_narrow_machine": False,
        "host_prep_manage_cmdline": False,
        "host_prep_install_libvirt": False,
        "host_prep_install_hook": True,
        "host_prep_manage_irqs": False,
        "host_prep_sysctl_file": str(tmp_path / "90-rtvirt-test.conf"),
        "host_prep_sched_rt_runtime_us": int(SYSCTL.read_text()),
        "host_prep_verify": False,
    }
    play = [{"hosts": "localhost", "gather_facts": False,
             "roles": [{"role": "rtvirt.kvm.host_prep", "vars": role_vars}]}]
    return run_playbook(tmp_path, play, timeout=600)


def _leaf_dirs(partition):
    leaf = partition.lstrip("/") + ".partition"
    return [mount / leaf for mount in rig_lib.cgroup_mounts() if (mount / leaf).is_dir()]


def test_operators_hook_is_kept_and_only_managed_partitions_are_recreated(
        libvirt_rig, unique_name, partition, hook_files, tmp_path):
    # 1. An earlier host_prep's hook at the single-script path moves to qemu.d.
    LEGACY.write_text(EARLIER_OURS)
    os.chmod(LEGACY, 0o755)
    moved = _host_prep(tmp_path, partition)
    assert moved["rc"] == 0, moved["out"][-4000:]
    assert not LEGACY.exists(), "host_prep left its earlier hook at %s: %s" % (LEGACY, moved["out"][-6000:])
    assert OURS.is_file() and os.access(OURS, os.X_OK)

    # 2. The operator's hook: one line per call, to a file of the test's.
    calls = tmp_path / "operator-hook.calls"
    operator = ("#!/bin/sh\n# the operator's own qemu hook\necho \"$1 $2 $3\" >> %s\nexit 0\n" % calls).encode()
    LEGACY.write_bytes(operator)
    os.chmod(LEGACY, 0o750)
    kept = _host_prep(tmp_path, partition)
    assert kept["rc"] == 0, kept["out"][-4000:]
    assert LEGACY.read_bytes() == operator and stat.S_IMODE(LEGACY.stat().st_mode) == 0o750
    assert "found %s, which is not host_prep's: kept as it is" % LEGACY in kept["out"], kept["out"][-4000:]

    # 3. Our partition, deleted in every hierarchy (as a reboot would), comes back at the guest's start.
    made = _leaf_dirs(partition)
    assert made, "host_prep made no %s" % partition
    for directory in made:
        directory.rmdir()
    assert _leaf_dirs(partition) == []
    with libvirt_rig.guest(unique_name, vcpus=1, partition=partition) as guest:
        cgroup = pathlib.Path("/proc/%d/cgroup" % guest.pid).read_text()
        assert ":cpuset:/%s.partition/" % unique_name in cgroup, cgroup
    assert {d.parent for d in _leaf_dirs(partition)} >= {d.parent for d in made}
    assert "%s prepare begin" % unique_name in calls.read_text().splitlines()

    # 4. A partition nobody made (a typo in a domain XML): refused with our message, nothing created.
    typo = "%s-typo" % partition
    other = "%s-b" % unique_name
    with pytest.raises(rig_lib.RigError) as refused:
        with libvirt_rig.guest(other, vcpus=1, partition=typo):
            pass
    message = str(refused.value)
    assert "rtvirt.kvm qemu hook: guest %s names partition %s, which does not exist" % (other, typo) in message, message
    assert "rtvirt.kvm.libvirt_partition" in message
    assert _leaf_dirs(typo) == []
    assert "%s prepare begin" % other in calls.read_text().splitlines()
    assert other not in libvirt_rig.domains()
