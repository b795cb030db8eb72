"""libvirt_partition against a real libvirtd and KVM guests (hybrid host without systemd).

Each test uses its own partition /machine/rtvirt-p-<hex> and guest, and removes both.
"""
import os
import pathlib
import uuid

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist
from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module as ansible_module

pytestmark = pytest.mark.libvirt

MODULE = "rtvirt.kvm.libvirt_partition"


@pytest.fixture
def partition():
    """A unique partition name; whatever is left of it in any hierarchy is removed afterwards."""
    name = "/machine/rtvirt-p-%s" % uuid.uuid4().hex[:8]
    yield name
    leaf = name.rsplit("/", 1)[1] + ".partition"
    for mount in rig_lib.cgroup_mounts():
        top = mount / "machine" / leaf
        if top.is_dir():
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(dirpath)


def run(args, check=False, diff=False):
    result = ansible_module(MODULE, args, check=check, diff=diff)
    return result


def cgroup_lines(tid, pid):
    """{hierarchy key: path} of one thread: v1 controllers by name, cgroup2 as 'unified'."""
    result = {}
    for line in pathlib.Path("/proc/%d/task/%d/cgroup" % (pid, tid)).read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            result["unified"] = path
        for controller in filter(None, controllers.split(",")):
            result[controller] = path
    return result


def test_guest_starts_only_once_the_partition_exists(libvirt_rig, unique_name, partition):
    leaf = partition.rsplit("/", 1)[1] + ".partition"
    with pytest.raises(rig_lib.RigError) as failed:
        with libvirt_rig.guest(unique_name, hook_ensures_partition=False, partition=partition):
            pass
    # On this hybrid host libvirt looks in the cgroup2 tree first.
    assert "Failed to create v2 cgroup '/sys/fs/cgroup/unified/machine/%s/': No such file or directory" % leaf \
        in str(failed.value)

    checked = run({"name": partition}, check=True, diff=True)
    assert not checked.get("failed"), checked.get("msg")
    assert checked["changed"] and checked["writes"] == []
    assert not any((mount / "machine" / leaf).exists() for mount in rig_lib.cgroup_mounts())

    created = run({"name": partition}, diff=True)
    assert not created.get("failed"), created.get("msg")
    assert created["changed"] and created["planned"] == checked["planned"]
    paths = created["paths"]
    assert set(paths) >= {"unified", "cpu", "cpuset", "memory", "freezer"}
    for path in paths.values():
        assert os.path.isdir(path)

    second = run({"name": partition})
    assert not second["changed"] and second["writes"] == []

    with libvirt_rig.guest(unique_name, partition=partition) as guest:
        threads = libvirt_rig.threads(guest.name)
        prefix = "/machine/%s/" % leaf
        for tid in list(threads.emulator) + list(threads.vcpus.values()):
            where = cgroup_lines(tid, guest.pid)
            for key in paths:
                assert where[key].startswith(prefix), (tid, key, where)
        for vcpu, tid in threads.vcpus.items():
            assert cgroup_lines(tid, guest.pid)["cpuset"].endswith("/vcpu%d" % vcpu)

        refused = run({"name": partition, "state": "absent"})
        assert refused.get("failed")
        assert "guest %s still runs inside" % guest.name in refused["msg"]
        assert all(os.path.isdir(path) for path in paths.values())

    removed_check = run({"name": partition, "state": "absent"}, check=True)
    assert removed_check["changed"] and all(os.path.isdir(p) for p in paths.values())
    removed = run({"name": partition, "state": "absent"})
    assert not removed.get("failed"), removed.get("msg")
    assert not any(os.path.exists(p) for p in paths.values())
    assert not run({"name": partition, "state": "absent"})["changed"]


def test_repairs_a_partition_missing_in_one_hierarchy(libvirt_rig, unique_name, partition):
    created = run({"name": partition})
    assert not created.get("failed"), created.get("msg")
    freezer = created["paths"]["freezer"]
    os.rmdir(freezer)
    repaired = run({"name": partition})
    assert repaired["changed"]
    assert repaired["writes"] == [{"file": freezer, "value": "<mkdir>"}]
    with libvirt_rig.guest(unique_name, partition=partition) as guest:
        assert cgroup_lines(guest.pid, guest.pid)["freezer"].startswith("/machine/%s.partition/" % partition.rsplit("/", 1)[1])
    assert not run({"name": partition, "state": "absent"}).get("failed")


def test_libvirt_removes_the_other_hierarchies_when_one_is_missing(libvirt_rig, unique_name, partition):
    """The trap the module repairs: a failed start deletes the partition everywhere else."""
    created = run({"name": partition})
    os.rmdir(created["paths"]["freezer"])
    with pytest.raises(rig_lib.RigError) as failed:
        with libvirt_rig.guest(unique_name, hook_ensures_partition=False, partition=partition):
            pass
    assert "Failed to create v1 controller freezer for group: No such file or directory" in str(failed.value)
    assert not any(os.path.exists(p) for p in created["paths"].values())
    assert run({"name": partition})["changed"]
    assert not run({"name": partition, "state": "absent"}).get("failed")


def test_partition_limited_to_one_cpu_holds_its_vcpus(libvirt_rig, unique_name, partition):
    online = parse_cpulist(pathlib.Path("/sys/fs/cgroup/cpuset/machine/cpuset.cpus").read_text().strip())
    cpu = max(online)
    created = run({"name": partition, "cpus": str(cpu)})
    assert not created.get("failed"), created.get("msg")
    cpuset = pathlib.Path(created["paths"]["cpuset"])
    assert parse_cpulist((cpuset / "cpuset.cpus").read_text().strip()) == {cpu}
    with libvirt_rig.guest(unique_name, partition=partition) as guest:
        threads = libvirt_rig.threads(guest.name)
        for vcpu, tid in threads.vcpus.items():
            path = cgroup_lines(tid, guest.pid)["cpuset"]
            cpus = (pathlib.Path("/sys/fs/cgroup/cpuset") / path.lstrip("/") / "cpuset.cpus").read_text().strip()
            assert parse_cpulist(cpus) <= {cpu}, (vcpu, path, cpus)
            status = pathlib.Path("/proc/%d/task/%d/status" % (guest.pid, tid)).read_text()
            allowed = [line.split(":", 1)[1].strip() for line in status.splitlines()
                       if line.startswith("Cpus_allowed_list")][0]
            assert parse_cpulist(allowed) <= {cpu}
    again = run({"name": partition, "cpus": str(cpu)})
    assert not again["changed"]
    assert not run({"name": partition, "state": "absent"}).get("failed")


@pytest.fixture
def top_partition():
    """A unique top-level partition /rtvirt-p-<hex> (beside /machine, as host_prep lays them out); removed after."""
    name = "/rtvirt-p-%s" % uuid.uuid4().hex[:8]
    yield name
    for mount in rig_lib.cgroup_mounts():
        top = mount / (name.lstrip("/") + ".partition")
        if top.is_dir():
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(dirpath)


def cpuset_snapshot(top):
    return {dirpath: (pathlib.Path(dirpath) / "cpuset.cpus").read_text() for dirpath, _d, _f in os.walk(top)}


def test_top_level_partition_and_narrowing_refuses_a_pinned_guest(libvirt_rig, unique_name, top_partition):
    created = run({"name": top_partition, "cpus": "0-1"})
    assert not created.get("failed"), created.get("msg")
    leaf = top_partition.lstrip("/") + ".partition"
    assert created["paths"]["cpuset"] == "/sys/fs/cgroup/cpuset/" + leaf
    with libvirt_rig.guest(unique_name, vcpus=1, partition=top_partition, vcpupins={0: "1"}, emulatorpin="0") as guest:
        threads = libvirt_rig.threads(guest.name)
        assert cgroup_lines(threads.vcpus[0], guest.pid)["cpuset"].startswith("/%s/qemu-" % leaf)
        before = cpuset_snapshot(created["paths"]["cpuset"])
        refused = run({"name": top_partition, "cpus": "0"})
        assert refused.get("failed"), refused
        assert unique_name in refused["msg"] and "vcpu0 on 1" in refused["msg"], refused["msg"]
        assert "nothing was changed" in refused["msg"]
        assert cpuset_snapshot(created["paths"]["cpuset"]) == before
    # Without the pinned guest the partition narrows.
    narrowed = run({"name": top_partition, "cpus": "0"})
    assert narrowed["changed"] and not narrowed.get("failed"), narrowed.get("msg")
    assert (pathlib.Path(created["paths"]["cpuset"]) / "cpuset.cpus").read_text().strip() == "0"
    assert not run({"name": top_partition, "state": "absent"}).get("failed")
    left = [str(mount / leaf) for mount in rig_lib.cgroup_mounts() if (mount / leaf).exists()]
    assert not left, left


def test_an_unpinned_guest_follows_its_narrowed_partition(libvirt_rig, unique_name, top_partition):
    assert not run({"name": top_partition, "cpus": "0-1"}).get("failed")
    with libvirt_rig.guest(unique_name, vcpus=1, partition=top_partition) as guest:
        narrowed = run({"name": top_partition, "cpus": "0"})
        assert narrowed["changed"] and not narrowed.get("failed"), narrowed.get("msg")
        tid = libvirt_rig.threads(guest.name).vcpus[0]
        status = pathlib.Path("/proc/%d/task/%d/status" % (guest.pid, tid)).read_text()
        allowed = [line.split(":", 1)[1].strip() for line in status.splitlines()
                   if line.startswith("Cpus_allowed_list")][0]
        assert parse_cpulist(allowed) == {0}
    assert not run({"name": top_partition, "state": "absent"}).get("failed")
