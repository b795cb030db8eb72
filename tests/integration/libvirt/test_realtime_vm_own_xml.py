"""The realtime_vm role with the operator's own domain XML against a real libvirtd: a qcow2 disk on an I/O thread,
a virtio NIC, QEMU pass-through arguments and metadata in their own namespaces.

One guest for the whole file (one boot): running with its vCPU FIFO on the realtime CPU and its emulator and I/O
thread on the housekeeping CPUs (read from /proc and the iothread cgroup, not from the role), the disk and NIC
attached, the operator's namespaced elements kept; a second run changes nothing; a changed disk attribute in the
operator's XML is redefined without touching the pins or restarting the guest; bad XML defines nothing; state:
absent leaves the disk byte for byte.
"""
import hashlib
import pathlib
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

from tests.support.ansible_runner import run_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu
from tests.support.playbook_runner import run_playbook

pytestmark = pytest.mark.libvirt

VIRSH = ["virsh", "-c", "qemu:///system"]
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
BASE = """<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <!-- the operator's own definition -->
  <metadata>
    <ops:owner xmlns:ops="urn:example:rtvirt-test">control team</ops:owner>
  </metadata>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback' iothread='1'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:5e:17:01'/>
      <model type='virtio'/>
      <rom bar='off'/>
    </interface>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:env name='RTVIRT_TEST_GUEST' value='{name}'/>
  </qemu:commandline>
</domain>
"""


def _virsh(*args):
    done = subprocess.run(VIRSH + list(args), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _threads(pid):
    """{comm: [(tid, affinity, policy, rt_priority, cpuset cgroup)]} of a QEMU process."""
    result = {}
    for task in pathlib.Path("/proc/%d/task" % pid).iterdir():
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cgroup = next(line.split(":", 2)[2] for line in (task / "cgroup").read_text().splitlines()
                      if "cpuset" in line.split(":", 2)[1].split(","))
        result.setdefault((task / "comm").read_text().strip(), []).append(
            (int(task.name), status["Cpus_allowed_list"].strip(), int(fields[38]), int(fields[37]), cgroup))
    return result


def _cputune(name):
    root = ET.fromstring(_virsh("dumpxml", "--inactive", name))
    return ET.tostring(root.find("cputune"), encoding="unicode"), root


@pytest.fixture
def disk_dir():
    """A directory QEMU's user can reach (pytest's tmp_path is private to root), removed afterwards."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="rtvirt-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_own_xml_with_disk_nic_and_iothread(libvirt_rig, unique_name, tmp_path, fifo_allowed, disk_dir):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), ",".join(str(c) for c in cpus[:-1])
    partition = "/%s" % unique_name  # top level, beside /machine (docs/LAYOUT.md)
    disk = disk_dir / "system.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    disk_before = _sha256(disk)
    base = BASE.format(name=unique_name, disk=disk)
    guest = {"name": unique_name, "vcpus": 1, "memory_mib": 128, "fifo_priority": 7, "iothreads": 1, "base_xml": base}

    def play(guests, **extra):
        return run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "roles": [{
            "role": "rtvirt.kvm.realtime_vm",
            "vars": dict({"realtime_vm_guests": guests, "realtime_vm_isolated_cpus": pool,
                          "realtime_vm_partition": partition, "realtime_vm_cpu_map": False}, **extra)}]}])

    wait_for_free_pcpu(unique_name, pool)
    try:
        # Bad input first, to the planning call the role makes and to the module that defines: nothing is defined.
        # (The role's own refusal of a bad plan before any task is tests/integration/libvirt/test_realtime_vm.py's.)
        missing = disk_dir / "missing.qcow2"
        result = run_module("rtvirt.kvm.guest_plan", {
            "guests": [dict(guest, base_xml=base.replace(str(disk), str(missing)))], "isolated_cpus": pool,
            "partition": partition, "verify": False})
        assert result.get("failed") and result["msg"] == (
            "guest %s: base_xml disk vda: source %s does not exist; create the image first (the collection never "
            "creates or deletes a guest's disks)" % (unique_name, missing)), result
        result = run_module("rtvirt.kvm.realtime_domain", {
            "name": unique_name, "vcpus": 1, "memory_mib": 128, "vcpupin": {"0": pool}, "emulator_cpus": "",
            "iothreads": 1, "partition": partition, "base_xml": base})
        assert result.get("failed") and "guest %s: iothreads 1 need emulator CPUs" % unique_name in result["msg"]
        assert unique_name not in libvirt_rig.domains()

        first = play([guest])
        assert first["rc"] == 0 and first["changed"] > 0, first["out"][-4000:]
        assert unique_name in libvirt_rig.domains(inactive=False)
        pid = libvirt_rig.qemu_pid(unique_name)
        threads = _threads(pid)
        (vcpu,) = [t for comm, ts in threads.items() if re.fullmatch(r"CPU 0/(KVM|TCG)", comm) for t in ts]
        assert vcpu[1:4] == (pool, 1, 7)
        (iothread,) = threads["IO iothread1"]
        assert iothread[1] == housekeeping and iothread[2] == 0
        assert iothread[4].endswith("/iothread1")
        assert pathlib.Path("/sys/fs/cgroup/cpuset" + iothread[4], "cpuset.cpus").read_text().strip() == housekeeping
        emulator = [t for comm, ts in threads.items() if comm.startswith("qemu-system") for t in ts]
        assert emulator and all(t[1] == housekeeping for t in emulator)
        blk = _virsh("domblklist", unique_name)
        assert re.search(r"^\s*vda\s+%s\s*$" % re.escape(str(disk)), blk, re.M), blk
        nics = _virsh("domiflist", unique_name)
        assert re.search(r"\buser\b.*\bvirtio\b.*52:54:00:5e:17:01", nics), nics
        pins, root = _cputune(unique_name)
        assert root.find("{%s}commandline/{%s}env" % (QEMU_NS, QEMU_NS)).get("value") == unique_name
        assert root.findtext("metadata/{urn:example:rtvirt-test}owner") == "control team"
        assert root.find("devices/disk/driver").get("iothread") == "1"

        second = play([guest])
        assert second["rc"] == 0 and second["changed"] == 0, second["out"][-4000:]

        # Only a disk attribute changes: redefined, the pins as they were, the guest not restarted.
        changed = play([dict(guest, base_xml=base.replace("cache='writeback'", "cache='writethrough'"))])
        assert changed["rc"] == 0 and changed["changed"] > 0, changed["out"][-4000:]
        assert "its definition differs in base_xml" in changed["out"]
        now, root = _cputune(unique_name)
        assert root.find("devices/disk/driver").get("cache") == "writethrough"
        assert now == pins
        assert libvirt_rig.qemu_pid(unique_name) == pid
        after = _threads(pid)
        assert [t[:4] for t in after["CPU 0/KVM" if "CPU 0/KVM" in after else "CPU 0/TCG"]] == [vcpu[:4]]
        assert after["IO iothread1"] == [iothread]
        # The next run has nothing to do: the definition records the new base_xml.
        plan = run_module("rtvirt.kvm.guest_plan", {
            "guests": [dict(guest, base_xml=base.replace("cache='writeback'", "cache='writethrough'"))],
            "isolated_cpus": pool, "partition": partition})
        assert not plan.get("failed") and plan["changes"] == [], plan
        renamed = run_module("rtvirt.kvm.guest_plan", {
            "guests": [dict(guest, base_xml=base.replace("<name>%s<" % unique_name, "<name>other<"))],
            "isolated_cpus": pool, "partition": partition})
        assert renamed.get("failed") and "guest %s: base_xml names the domain 'other'" % unique_name in renamed["msg"]
    finally:
        gone = play([{"name": unique_name, "state": "absent"}])
        run_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert gone["rc"] == 0, gone["out"][-3000:]
    assert unique_name not in libvirt_rig.domains()
    assert _sha256(disk) == disk_before
