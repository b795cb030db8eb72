"""The realtime_vm role against a real libvirtd: a SCHED_FIFO guest pinned to a dedicated pCPU.

Runs the role through ansible-playbook on localhost, checks the placement independently from
/proc (not only through the role's own verify step), runs again (nothing changed), checks that bad
input fails before anything is defined, and removes the guest, its partition and the sysctl change.
"""
import pathlib
import re

import pytest

from tests.support.ansible_runner import run_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu
from tests.support.playbook_runner import run_playbook

pytestmark = pytest.mark.libvirt


def _play(tmp_path, guests, partition, pool, extra=None):
    return run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "roles": [{
        "role": "rtvirt.kvm.realtime_vm",
        "vars": dict({"realtime_vm_guests": guests, "realtime_vm_isolated_cpus": pool,
                      "realtime_vm_partition": partition,
                      "realtime_vm_cpu_map_path": str(tmp_path / "map" / "cpu-map.html")}, **(extra or {}))}]}])


def _threads(rig, name):
    pid = rig.qemu_pid(name)
    result = {}
    for task in pathlib.Path("/proc/%d/task" % pid).iterdir():
        comm = (task / "comm").read_text().strip()
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        result[int(task.name)] = dict(comm=comm, affinity=status["Cpus_allowed_list"].strip(),
                                      rt_priority=int(fields[37]), policy=int(fields[38]))
    return result


def _remove(tmp_path, name, partition, pool):
    """Undefine the test's guest through the role, then remove its partition (also where libvirt made it in
    cpuacct/devices, which libvirt_partition absent covers); returns the role run."""
    gone = _play(tmp_path, [{"name": name, "state": "absent"}], partition, pool, {"realtime_vm_cpu_map": False})
    run_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    return gone


def test_realtime_vm_defines_pins_fifo_and_is_idempotent(libvirt_rig, unique_name, tmp_path, fifo_allowed):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool = str(cpus[-1])
    housekeeping = ",".join(str(c) for c in cpus[:-1])
    partition = "/%s" % unique_name  # top level, beside /machine (docs/LAYOUT.md)
    guest = {"name": unique_name, "vcpus": 1, "memory_mib": 128, "fifo_priority": 7}
    wait_for_free_pcpu(unique_name, pool)
    try:
        first = _play(tmp_path, [guest], partition, pool)
        assert first["rc"] == 0 and first["failed"] == 0, first["out"][-4000:]
        assert first["changed"] > 0
        assert unique_name in libvirt_rig.domains(inactive=False)
        # Realtime guests autostart by default: they come back when libvirtd starts at boot.
        assert re.search(r"^Autostart:\s+enable$", libvirt_rig.virsh("dominfo", unique_name).stdout, re.MULTILINE)

        threads = _threads(libvirt_rig, unique_name)
        vcpus = [t for t in threads.values() if re.fullmatch(r"CPU \d+/(KVM|TCG)", t["comm"])]
        assert len(vcpus) == 1
        assert vcpus[0]["affinity"] == pool and vcpus[0]["policy"] == 1 and vcpus[0]["rt_priority"] == 7
        emulator = [t for t in threads.values() if t["comm"].startswith("qemu-system")]
        assert emulator and all(t["affinity"] == housekeeping or set(t["affinity"]) <= set(housekeeping)
                                for t in emulator)
        html = (tmp_path / "map" / "cpu-map.html").read_text()
        assert "%s vCPU0 fifo:7" % unique_name in html

        second = _play(tmp_path, [guest], partition, pool)
        assert second["rc"] == 0 and second["changed"] == 0, second["out"][-4000:]

        # Bad input: nothing is defined, the running guest keeps its pins.
        intruder = "%s-b" % unique_name
        for bad, message in (
                ([guest, {"name": intruder, "vcpus": 1, "memory_mib": 128}], "only 0 are free"),
                ([guest, {"name": intruder, "vcpus": 1, "pcpus": [housekeeping.split(",", 1)[0]]}], "pool"),
                ([guest, {"name": intruder, "vcpus": 1, "fifo_priority": 100}], "out of range"),
                ([guest, {"name": "bad/name", "vcpus": 1}], "is not accepted")):
            result = _play(tmp_path, bad, partition, pool)
            assert result["rc"] != 0 and message in result["out"], result["out"][-3000:]
            assert intruder not in libvirt_rig.domains() and "bad/name" not in libvirt_rig.domains()
        assert _threads(libvirt_rig, unique_name)[next(
            tid for tid, t in _threads(libvirt_rig, unique_name).items() if t["comm"].startswith("CPU 0/"))][
            "affinity"] == pool
    finally:
        gone = _remove(tmp_path, unique_name, partition, pool)
    assert gone["rc"] == 0, gone["out"][-3000:]
    assert unique_name not in libvirt_rig.domains()
    assert not list(pathlib.Path("/sys/fs/cgroup").glob("*/%s.partition" % unique_name))


def _failed_task(out):
    """The name of the task the play failed in (the last TASK header before the first failure)."""
    failure = re.search(r"^(fatal:|failed:|\[ERROR\]: Task failed)", out, re.MULTILINE)
    assert failure, out[-3000:]
    header = out.rindex("TASK [", 0, failure.start())
    return out[header:out.index("]", header)].split(" : ", 1)[1]


def _partition_dirs(partition):
    return sorted(str(p) for p in pathlib.Path("/sys/fs/cgroup").glob("*%s.partition" % partition))


def test_bad_guest_anywhere_in_the_list_defines_nothing(libvirt_rig, unique_name, tmp_path, fifo_allowed):
    """A good guest first, a bad one second: the whole list is refused before the first is defined,
    and the partition the run would have made is not made either."""
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool = str(cpus[-1])
    housekeeping = str(cpus[0])
    partition = "/%s-rt" % unique_name  # top level, beside /machine (docs/LAYOUT.md)
    first = {"name": unique_name, "vcpus": 1, "memory_mib": 128}
    second = "%s-b" % unique_name
    wait_for_free_pcpu(unique_name, pool)  # the cases count on the first guest taking the pool's one pCPU
    cases = (
        ([first, {"name": second, "vcpus": 1}],
         "guest '%s' needs 1 pCPU but only 0 are free" % second, "planned after %s of the same list" % unique_name),
        ([dict(first, pcpus=[pool]), {"name": second, "pcpus": [pool]}],
         "pcpus %s for guest '%s' are held by another guest: %s (%s)" % (pool, second, unique_name, pool), ""),
        ([first, {"name": second, "pcpus": [housekeeping]}],
         "pcpus %s for guest '%s' are outside the realtime pool %s" % (housekeeping, second, pool), ""),
        ([first, {"name": "bad/name", "vcpus": 1}], "is not accepted", ""),
        ([first, {"name": second, "vcpus": 1, "fifo_priority": 0}], "out of range", ""),
        ([dict(first, vcpus=0), {"name": second, "vcpus": 1}], "vcpus must be a number of at least 1", ""),
        ([first, {"name": second, "vcpus": 1, "emulator_cpus": "0-"}], "emulator_cpus of guest '%s'" % second, ""),
    )
    try:
        for guests, message, also in cases:
            result = _play(tmp_path, guests, partition, pool)
            assert result["rc"] != 0 and result["failed"] == 1, result["out"][-3000:]
            assert message in result["out"] and also in result["out"], result["out"][-3000:]
            assert _failed_task(result["out"]).startswith("Plan the guests")
            defined = libvirt_rig.domains()
            assert not {g["name"] for g in guests} & set(defined), (guests, defined)
            assert _partition_dirs(partition) == [], message
        # The same list without the bad guest converges: the refusals were about the bad guest only.
        good = _play(tmp_path, [first], partition, pool, {"realtime_vm_cpu_map": False})
        assert good["rc"] == 0, good["out"][-3000:]
        assert unique_name in libvirt_rig.domains(inactive=False)
        pid = libvirt_rig.qemu_pid(unique_name)

        # Removing the running guest and adding a bad one: refused before the removal, which must not happen.
        for bad, message, task in (
                ({"name": second, "vcpus": 1, "partition": "relative"}, "must be an absolute path",
                 "Plan the guests"),
                ({"name": second, "vcpus": 1, "base_xml": "<domain"}, "base_xml is not well-formed XML",
                 "Plan the guests")):
            result = _play(tmp_path, [{"name": unique_name, "state": "absent"}, bad], partition, pool)
            assert result["rc"] != 0 and message in result["out"], result["out"][-3000:]
            assert _failed_task(result["out"]).startswith(task), result["out"][-3000:]
            assert unique_name in libvirt_rig.domains(inactive=False) and second not in libvirt_rig.domains()
            assert libvirt_rig.qemu_pid(unique_name) == pid
    finally:
        gone = _remove(tmp_path, unique_name, partition, pool)
    assert gone["rc"] == 0, gone["out"][-3000:]
    assert unique_name not in libvirt_rig.domains()
    assert _partition_dirs(partition) == []
