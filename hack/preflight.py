"""Fail loudly, before any test runs, when this machine cannot run the real-system test layers.

The real-kernel, libvirt and v2-host tests must run in CI rather than skip; this says what is
missing in one message instead of a wall of skipped tests.
"""
import os
import sys
import uuid

problems = []
if os.geteuid() != 0:
    problems.append("the tests need root (cgroupfs writes, libvirtd, QEMU)")
cpuset = "/sys/fs/cgroup/cpuset"
if os.path.isdir(cpuset):
    probe = os.path.join(cpuset, "rtvirt-preflight-" + uuid.uuid4().hex[:8])
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        problems.append("the cgroup v1 cpuset hierarchy at %s is not writable: %s" % (cpuset, exc.strerror))
elif not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
    problems.append("no cpuset hierarchy found under /sys/fs/cgroup")

# The tests share this machine's libvirt and cgroups. What hack/site.sh leaves behind on purpose (the demo guest
# pinned to the realtime CPU, /machine kept on the housekeeping CPUs) would make the realtime tests fail far
# from the cause: say so here, with the commands that undo it.
config_dir = "/etc/libvirt/qemu"
pinned = []
if os.path.isdir(config_dir):
    import xml.etree.ElementTree as ET
    for entry in sorted(os.listdir(config_dir)):
        if entry.endswith(".xml"):
            try:
                root = ET.parse(os.path.join(config_dir, entry)).getroot()
            except (OSError, ET.ParseError):
                continue
            if root.find("./cputune/vcpupin") is not None:
                pinned.append(root.findtext("name") or entry[:-4])
if pinned:
    problems.append("defined guest(s) %s hold pinned pCPUs the realtime tests need (e.g. the demo guest of "
                    "hack/site.sh); remove them: %s" % (", ".join(pinned), "; ".join(
                        "virsh -c qemu:///system destroy %s; virsh -c qemu:///system undefine %s" % (n, n)
                        for n in pinned)))
machine_cpus = os.path.join(cpuset, "machine", "cpuset.cpus")
if os.path.exists(machine_cpus):
    with open(machine_cpus) as handle, open(os.path.join(cpuset, "cpuset.cpus")) as root_handle:
        machine, everything = handle.read().strip(), root_handle.read().strip()
    if machine != everything:
        problems.append("/machine holds CPUs %s, not every CPU (%s): hack/site.sh keeps it on the housekeeping "
                        "CPUs, and tests pin guests there to the others; give it back: echo %s > %s" % (
                            machine, everything, everything, machine_cpus))
if not os.path.exists("/dev/kvm"):
    print("note: /dev/kvm is missing; libvirt test guests will use TCG (type='qemu')")
if problems:
    print("preflight FAILED:\n  - " + "\n  - ".join(problems), file=sys.stderr)
    sys.exit(1)
print("preflight ok: root, writable cpuset hierarchy%s" % (", /dev/kvm" if os.path.exists("/dev/kvm") else ""))
