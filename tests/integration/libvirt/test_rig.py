"""The libvirt test rig against a real libvirtd and real QEMU/KVM guests.

The daemon lifecycle test comes first on purpose: run before the session rig exists, on a machine
with no other libvirt user (a CI run), it takes the path where the last owner stops the daemons.
With other users about (another session, xdist workers) it checks the handover instead.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.support import libvirt_rig as rig_lib

pytestmark = pytest.mark.libvirt

RIG_CLI = pathlib.Path(rig_lib.__file__)


def run_cli(action, state_dir):
    """The rig's CLI exactly as the Molecule create/destroy playbooks run it."""
    done = subprocess.run([sys.executable, str(RIG_CLI), action, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cgroup_mounts():
    """(mount point, fstype, mount options) of every cgroup hierarchy."""
    with open("/proc/self/mounts") as handle:
        rows = [line.split() for line in handle]
    return [(pathlib.Path(r[1]), r[2], set(r[3].split(","))) for r in rows if r[2] in ("cgroup", "cgroup2")]


def cgroup2_mount():
    mounts = [mount for mount, fstype, controllers in cgroup_mounts() if fstype == "cgroup2"]
    assert mounts, "this layer runs on hybrid hosts: no cgroup2 hierarchy mounted"
    return mounts[0]


def machine_dirs_named(name):
    """Directories below <hierarchy>/machine, in any hierarchy, whose name contains `name`."""
    return [path for mount, fstype, controllers in cgroup_mounts() for path in (mount / "machine").glob("**/*%s*" % name)
            if path.is_dir()]


def existing_machine_dirs():
    return {mount / "machine" for mount, fstype, controllers in cgroup_mounts() if (mount / "machine").is_dir()}


def cgroup_of(task, controller):
    """A task's cgroup path in one v1 controller, from /proc/<task>/cgroup."""
    for line in pathlib.Path("/proc/%s/cgroup" % task).read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError("task %s is in no %s cgroup" % (task, controller))


def domain_cgroup_dirs(pid):
    """The domain-level cgroup directory in every hierarchy where libvirt placed the QEMU pid."""
    dirs = []
    for line in pathlib.Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if not path.startswith("/machine/"):
            continue
        domain = path.split(".libvirt-qemu")[0] + ".libvirt-qemu"
        for mount, fstype, options in cgroup_mounts():
            same_kind = (hierarchy == "0") == (fstype == "cgroup2")
            if same_kind and set(filter(None, controllers.split(","))) <= options:
                dirs.append(mount / domain.lstrip("/"))
                break
    return dirs


def allowed_cpus(pid, tid):
    status = pathlib.Path("/proc/%d/task/%d/status" % (pid, tid)).read_text()
    return re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M).group(1)


@pytest.fixture
def own_rigs(tmp_path):
    """State dirs for rigs a test starts itself; all are stopped afterwards, pass or fail (in any
    order: a stopping owner hands the daemons to a rig still registered, the last one stops them)."""
    if os.geteuid() != 0:
        pytest.skip("the libvirt rig needs root")
    rig_lib.ensure_installed()
    dirs = {name: tmp_path / name for name in ("first", "second", "third", "abandoned")}
    yield dirs
    for state_dir in dirs.values():
        rig_lib.stop(state_dir)


def test_rigs_share_the_daemons_and_only_the_last_owner_stops_them(own_rigs, unique_name):
    dirs_before = existing_machine_dirs()

    first = run_cli("start", own_rigs["first"])
    # It owns libvirtd exactly when it started it (and wrote its pid file); whether one already
    # ran is not asked beforehand, another session may start one at any moment.
    pid_file = own_rigs["first"] / "libvirtd.pid"
    assert first["owns_libvirtd"] == pid_file.exists()
    if first["owns_libvirtd"]:
        assert int(pid_file.read_text()) == first["libvirtd_pid"]
    second = rig_lib.start(own_rigs["second"])
    third = rig_lib.start(own_rigs["third"], holder_pid=os.getpid())
    # A rig whose holder died (a killed pytest session) must never inherit the daemons.
    holder = subprocess.Popen(["sleep", "600"])
    try:
        rig_lib.start(own_rigs["abandoned"], holder_pid=holder.pid)
    finally:
        holder.kill()
        holder.wait()
    daemons = (first["libvirtd_pid"], first["virtlogd_pid"])
    for rig in (second, third):
        assert (rig.libvirtd_pid, rig.virtlogd_pid) == daemons
        assert not rig.owns_libvirtd and not rig.owns_virtlogd
    # A guest makes libvirt create its `machine` cgroup dirs, which the last owner must remove.
    with second.guest(unique_name):
        pass

    second_report = rig_lib.stop(own_rigs["second"])
    assert second_report["stopped"] == [] and second_report["handed_over"] == []
    assert run_cli("status", own_rigs["first"])["answering"]

    # Other rigs (third, maybe another session's) still use the daemons: nothing may stop.
    first_report = run_cli("stop", own_rigs["first"])
    assert first_report["stopped"] == []
    heirs = {entry.split(" -> ")[1] for entry in first_report["handed_over"]}
    assert len(heirs) == (1 if first["owns_libvirtd"] else 0)
    assert str(own_rigs["abandoned"]) not in heirs
    assert [rig_lib.process_running(pid) for pid in daemons] == [True, True]
    assert run_cli("status", own_rigs["third"])["answering"]

    third_report = rig_lib.stop(own_rigs["third"])
    assert third_report["guests_left_running"] == []
    if heirs != {str(own_rigs["third"])}:
        assert third_report["stopped"] == [] and third_report["handed_over"] == []
        assert [rig_lib.process_running(pid) for pid in daemons] == [True, True]
    elif third_report["handed_over"]:  # a rig of another session registered meanwhile
        assert [rig_lib.process_running(pid) for pid in daemons] == [True, True]
    else:  # the last user: the path a CI run (this file first, nothing else running) takes
        assert len(third_report["stopped"]) == 2
        assert [rig_lib.process_running(pid) for pid in daemons] == [False, False]
        assert third_report["kept_cgroup_dirs"] == []
        assert existing_machine_dirs() == dirs_before


def test_a_start_that_fails_stops_what_it_started(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the libvirt rig needs root")
    rig_lib.ensure_installed()
    before = [rig_lib.running_daemon_pid(daemon) for daemon in rig_lib.DAEMONS]
    with pytest.raises(rig_lib.RigError, match="libvirtd did not answer"):
        rig_lib.start(tmp_path, ready_timeout=0)
    assert [rig_lib.running_daemon_pid(daemon) for daemon in rig_lib.DAEMONS] == before
    assert not (tmp_path / rig_lib.STATE_FILE).exists()


def test_guest_runs_with_its_vcpu_threads_in_the_machine_cgroup(libvirt_rig, unique_name):
    with libvirt_rig.guest(unique_name, vcpus=2) as guest:
        threads = libvirt_rig.threads(unique_name)
        assert sorted(threads.vcpus) == [0, 1]
        assert guest.pid in threads.emulator
        domain = cgroup_of(guest.pid, "cpuset").rsplit("/", 1)[0]
        assert re.fullmatch(r"/machine/qemu-\d+-%s\.libvirt-qemu" % re.escape(unique_name), domain)
        assert cgroup_of(guest.pid, "cpuset") == domain + "/emulator"
        for index, tid in threads.vcpus.items():
            assert cgroup_of("%d/task/%d" % (guest.pid, tid), "cpuset") == "%s/vcpu%d" % (domain, index)
        created = domain_cgroup_dirs(guest.pid)
        assert pathlib.Path("/sys/fs/cgroup/cpuset" + domain) in created
        assert all(path.is_dir() for path in created)

    assert unique_name not in libvirt_rig.domains()
    assert not rig_lib.process_running(guest.pid)
    assert [path for path in created if path.exists()] == []


def test_cputune_pins_reach_the_threads(libvirt_rig, unique_name):
    cpus = sorted(os.sched_getaffinity(0))
    first, last = str(cpus[0]), str(cpus[-1])
    with libvirt_rig.guest(unique_name, vcpupins={0: first, 1: last}, emulatorpin=first) as guest:
        threads = libvirt_rig.threads(unique_name)
        assert allowed_cpus(guest.pid, threads.vcpus[0]) == first
        assert allowed_cpus(guest.pid, threads.vcpus[1]) == last
        assert allowed_cpus(guest.pid, guest.pid) == first


def test_guest_in_a_missing_partition_fails_with_libvirts_message(libvirt_rig, unique_name):
    with pytest.raises(rig_lib.RigError) as failure:
        with libvirt_rig.guest(unique_name, hook_ensures_partition=False, partition="/machine/%s" % unique_name):
            pass
    message = str(failure.value)
    assert "Failed to start domain '%s'" % unique_name in message
    # libvirt only creates the default /machine partition; it checks the v2 tree first here.
    assert ("Failed to create v2 cgroup '%s/machine/%s.partition/': No such file or directory"
            % (cgroup2_mount(), unique_name)) in message
    assert unique_name not in libvirt_rig.domains()
    assert machine_dirs_named(unique_name) == []


def test_tiny_domain_xml_is_a_diskless_guest():
    xml = rig_lib.tiny_domain_xml("g", vcpus=3, memory_mib=64, partition="/machine/rt", type="qemu",
                                  vcpupins={1: "1", 0: "0-1"}, emulatorpin="0",
                                  cputune="<vcpusched vcpus='0' scheduler='fifo' priority='1'/>")
    domain = ET.fromstring(xml)
    assert domain.get("type") == "qemu"
    assert (domain.findtext("name"), domain.findtext("vcpu"), domain.findtext("memory")) == ("g", "3", "64")
    assert domain.find("memory").get("unit") == "MiB"
    assert domain.findtext("resource/partition") == "/machine/rt"
    assert [(pin.get("vcpu"), pin.get("cpuset")) for pin in domain.iter("vcpupin")] == [("0", "0-1"), ("1", "1")]
    assert domain.find("cputune/emulatorpin").get("cpuset") == "0"
    assert domain.find("cputune/vcpusched").get("scheduler") == "fifo"
    assert [device.tag for device in domain.find("devices")] == ["memballoon"]
    assert domain.find("devices/memballoon").get("model") == "none"
    with_console = ET.fromstring(rig_lib.tiny_domain_xml("g", console=True))
    assert [device.tag for device in with_console.find("devices")] == ["serial", "console", "memballoon"]
    assert with_console.get("type") == ("kvm" if rig_lib.kvm_usable() else "qemu")
