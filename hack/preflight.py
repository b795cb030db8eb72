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

# What hack/site.sh keeps on this machine (the demo guest on the realtime CPU, /machine on the housekeeping CPUs) is
# parked and given back around the session by tests/support/host_guard.py; nothing to check for it here.
qemu_conf = "/etc/libvirt/qemu.conf"
if os.path.exists(qemu_conf):
    with open(qemu_conf) as handle:
        if any(line.strip().replace(" ", "").startswith('user="root"') for line in handle):
            print("note: %s runs QEMU as root (user = \"root\"): neither the main job nor the tests write that "
                  "any more, and it hides whether host_prep made KVM usable for libvirt-qemu; remove the line "
                  "unless you set it on purpose" % qemu_conf)
if not os.path.exists("/dev/kvm"):
    print("note: /dev/kvm is missing; libvirt test guests will use TCG (type='qemu')")
if problems:
    print("preflight FAILED:\n  - " + "\n  - ".join(problems), file=sys.stderr)
    sys.exit(1)
print("preflight ok: root, writable cpuset hierarchy%s" % (", /dev/kvm" if os.path.exists("/dev/kvm") else ""))
