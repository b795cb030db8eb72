"""cpu_isolation_facts against a real libvirtd and a tiny KVM guest (tests/support/libvirt_rig.py).

CPU 1 plays the isolated CPU (isolated_cpus=1). The guest pins vCPU 0 to CPU 1, vCPU 1 and the
emulator to CPU 0. The facts must show each thread with the cgroup libvirt made, that cgroup's
cpuset.cpus and the thread's real affinity, all equal to the domain XML. A hand write to vCPU 0's
cgroup cpuset.cpus (found through /proc/<qemu pid>/task/<tid>/cgroup) must then show up as a
pinning_drift violation.
"""
import os
import pathlib

import pytest

from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.libvirt

MODULE = "rtvirt.kvm.cpu_isolation_facts"
CPUSET_ROOT = pathlib.Path("/sys/fs/cgroup/cpuset")


def _facts(**args):
    result = run_module(MODULE, dict({"isolated_cpus": "1"}, **args))
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["cpu_isolation"]


def _guest(facts, name):
    matches = [g for g in facts["guests"] if g["name"] == name]
    assert len(matches) == 1, (name, [g["name"] for g in facts["guests"]], facts["warnings"])
    return matches[0]


def _cpuset_cgroup_of(pid, tid):
    for line in pathlib.Path("/proc/%d/task/%d/cgroup" % (pid, tid)).read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            return CPUSET_ROOT / path.lstrip("/")
    pytest.fail("no v1 cpuset line in /proc/%d/task/%d/cgroup" % (pid, tid))


@pytest.fixture
def pinned_guest(libvirt_rig, unique_name):
    if not CPUSET_ROOT.is_dir() or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a v1 cpuset hierarchy and two CPUs")
    with libvirt_rig.guest(unique_name, vcpus=2, vcpupins={0: "1", 1: "0"}, emulatorpin="0") as guest:
        yield guest, libvirt_rig.threads(unique_name)


def test_guest_threads_match_xml_cgroup_and_affinity(pinned_guest):
    guest, threads = pinned_guest
    facts = _facts()
    found = _guest(facts, guest.name)
    assert found["pid"] == guest.pid
    assert found["pinning"]["vcpus"] == {"0": "1", "1": "0"}
    assert found["pinning"]["emulator"] == "0"
    by_tid = {t["tid"]: t for t in found["threads"]}
    for vcpu, tid in threads.vcpus.items():
        thread = by_tid[tid]
        expected = "1" if vcpu == 0 else "0"
        assert (thread["role"], thread["id"]) == ("vcpu", vcpu)
        assert thread["cgroup"].endswith("/vcpu%d" % vcpu)
        assert thread["cpuset"] == expected
        assert thread["affinity"] == expected
        assert thread["pinning"] == expected
        # the cgroup file itself, read independently
        assert _cpuset_cgroup_of(guest.pid, tid).joinpath("cpuset.cpus").read_text().strip() == expected
    for tid in threads.emulator:
        if tid not in by_tid:
            continue  # a short-lived QEMU worker
        thread = by_tid[tid]
        assert thread["role"] == "emulator"
        assert thread["cgroup"].endswith("/emulator")
        assert (thread["cpuset"], thread["affinity"], thread["pinning"]) == ("0", "0", "0")
    drift = [v for v in facts["violations"] if v["kind"] == "pinning_drift" and v["guest"] == guest.name]
    assert drift == []
    leaks = [v for v in facts["violations"] if v["kind"] == "cgroup_cpuset" and guest.name in v["offender"]]
    assert leaks == [], leaks


def _affinity(pid, tid):
    for line in pathlib.Path("/proc/%d/task/%d/status" % (pid, tid)).read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return None


@pytest.mark.parametrize("written", ["0", "0-1"])
def test_hand_written_cgroup_cpuset_is_pinning_drift(pinned_guest, written):
    """Moving vCPU 0 off its pinned CPU ("0") or widening its cgroup ("0-1") behind libvirt's back.

    Seen on Linux 6.18 (v1 cpuset): narrowing moves the thread's affinity with the cgroup, widening
    leaves it at the CPU libvirt asked with sched_setaffinity (the kernel keeps the user-requested
    mask). Either way the cgroup file no longer matches the domain XML: pinning_drift.
    """
    guest, threads = pinned_guest
    tid = threads.vcpus[0]
    cpus_file = _cpuset_cgroup_of(guest.pid, tid) / "cpuset.cpus"
    cpus_file.write_text(written + "\n")
    affinity = _affinity(guest.pid, tid)
    facts = _facts()
    drift = [v for v in facts["violations"] if v["kind"] == "pinning_drift" and v["guest"] == guest.name]
    assert [(v["role"], v["id"], v["tid"], v["xml"], v["cpuset"], v["affinity"]) for v in drift] == [
        ("vcpu", 0, tid, "1", written, affinity)]
    assert drift[0]["cgroup"].endswith("/vcpu0")
    assert drift[0]["offender"].startswith("guest %s vcpu 0" % guest.name)
