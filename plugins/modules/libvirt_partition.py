#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_partition
short_description: Create and remove libvirt resource partitions (cgroups or systemd slices)
version_added: 0.1.0
description:
  - Makes the resource partition a domain names in C(<resource><partition>) exist wherever libvirt looks
    for it, so that the domain starts. libvirt creates only its default C(/machine) itself; any other
    partition fails the start until the administrator creates it.
  - On hosts without systemd (cgroup v1, hybrid, or v2) it creates one directory per level, named as
    libvirt names them (C(/machine/tenant/rt) is C(machine/tenant.partition/rt.partition)), in every
    hierarchy libvirt 9.0 uses on this host, detected from the mounts rather than assumed. On a hybrid
    host that includes the cgroup2 tree. The cpuset hierarchy is written through the collection's cpuset
    engine, parents first, so every level has CPUs and memory nodes before a guest can be put in it.
  - A partition that is present in only some hierarchies (libvirt removes the other ones when a start
    fails because one is missing) is repaired; what is already there is left alone.
  - On systemd hosts (C(/run/systemd/system) exists) it writes the slice unit libvirt asks systemd for
    (C(/machine/tenant/rt) is C(machine-tenant-rt.slice), C(/rt) is C(rt.slice)) under C(/etc/systemd/system),
    reloads systemd and starts the slice. For C(/machine) it writes a drop-in,
    C(/etc/systemd/system/machine.slice.d/50-rtvirt-kvm.conf), and never replaces systemd's own C(machine.slice).
  - V(absent) refuses while a guest (or any other task) runs inside the partition and names it.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - The partition exactly as the domain XML's C(<partition>) spells it, for example C(/machine/production)
        or C(/machine/tenant/rt).
      - It must be absolute. Realtime partitions belong at the top level beside libvirt's default C(/machine)
        (C(/rt) is C(rt.partition) in every v1 controller and C(rt.slice) on systemd hosts), so that C(/machine)
        can be kept off the realtime CPUs; partitions below C(/machine) work too.
      - C(/machine) itself can be given with O(cpus) and O(mems) to keep ordinary guests on the housekeeping
        CPUs; libvirt creates and removes it, so V(absent) is refused for it.
      - C(/system/...) and C(/user/...) are refused because on systemd hosts they map into systemd's own
        C(system.slice) and C(user.slice), whose C(system-*.slice) and C(user-*.slice) names systemd and logind
        already use.
      - Each level may hold letters, digits, C(_), C(-), C(.) and C(:). Empty levels, C(.), C(..) and
        names of libvirt domain or systemd unit cgroups are refused.
    type: str
    required: true
  state:
    description:
      - V(present) creates (or repairs) the partition and sets what is asked; V(absent) removes its deepest
        level (with anything below it, deepest first) from every hierarchy, or stops and deletes its slice unit.
      - Levels above the partition are created when missing and never removed.
    type: str
    choices: [present, absent]
    default: present
  cpus:
    description:
      - The partition's CPUs in the kernel's list syntax (C(cpuset.cpus), or C(AllowedCPUs=) on systemd hosts).
      - When omitted, a new partition gets its parent's CPUs and an existing one keeps its own.
      - Must lie within the parent's CPUs.
    type: str
  mems:
    description:
      - The partition's NUMA memory nodes (C(cpuset.mems), or C(AllowedMemoryNodes=)). Omitted works as for O(cpus).
    type: str
  exclusive:
    description:
      - Kernel-enforced exclusivity of the partition's CPUs. No sibling may overlap them.
      - cgroup v1 (and hybrid hosts without systemd) C(cpuset.cpu_exclusive) on every level of the partition,
        C(/machine) included (the kernel only lets a cpuset be exclusive when its parent is).
      - cgroup v2, with or without systemd, makes the partition a kernel cpuset partition,
        C(cpuset.cpus.partition=isolated) (Linux 5.15 and later, no load balancing and no scheduler domain) or
        C(root) on older kernels, through the collection's cpuset engine. A top-level partition (C(/rt)) is a
        local partition (its parent is the root cgroup); one below C(/machine) is a remote partition and needs
        C(cpuset.cpus.exclusive) written top-down (Linux 6.7 and later; refused naming the kernel before).
        Requests the kernel would mark invalid (CPUs shared with a sibling, the parent's last CPUs, no CPUs,
        parent not a partition) are refused before anything is written, naming the rule; an invalid state the
        kernel reports anyway is read back, reported with the kernel's reason and rolled back.
      - On systemd hosts the slice's CPUs go through systemd (C(AllowedCPUs=) in the unit) but
        C(cpuset.cpus.partition) is written directly on the slice's cgroup, because systemd has no property for
        it. A C(systemctl daemon-reload) keeps it; C(systemctl restart) (or stop and start) of the slice makes
        systemd remove and re-create the cgroup, which comes back as a C(member). The next run of this module
        (and host_prep's qemu hook before a guest starts) detects that and writes it again, saying so in RV(notes).
      - V(false) turns a partition back into a member (v2) or clears the flag (v1); omitted leaves it as it is.
        Clearing comes before any CPU change in the same call (v1 C(cpu_exclusive=0) before the CPUs widen; on
        systemd hosts C(member) is written before systemd gets the new C(AllowedCPUs=)), so a partition can widen
        onto CPUs a sibling holds in one call. On a systemd host without cpuset on the unified hierarchy, where
        no slice can be a partition, V(false) does nothing.
      - Refused for C(/machine) on cgroup v2, where every guest without a C(<partition>) runs.
    type: bool
  cpu_shares:
    description:
      - The partition's CPU weight, as C(virsh schedinfo cpu_shares) sets it for a domain. cgroup v1 C(cpu.shares)
        (2-262144), cgroup v2 C(cpu.weight) (1-10000), systemd C(CPUWeight=).
    type: int
  memory_hard_limit:
    description:
      - As C(virsh memtune --hard-limit). Bytes, a size with a binary unit (C(4G), C(512MiB)), or C(unlimited).
        cgroup v1 C(memory.limit_in_bytes), v2 C(memory.max), systemd C(MemoryMax=).
    type: str
  memory_soft_limit:
    description:
      - As C(virsh memtune --soft-limit). cgroup v1 C(memory.soft_limit_in_bytes), v2 C(memory.high) (what
        libvirt uses for it), systemd C(MemoryHigh=).
    type: str
  memory_swap_hard_limit:
    description:
      - As C(virsh memtune --swap-hard-limit), memory plus swap. cgroup v1 C(memory.memsw.limit_in_bytes);
        on v2 C(memory.swap.max) and on systemd C(MemorySwapMax=) get the difference to O(memory_hard_limit),
        as libvirt writes them, so there O(memory_hard_limit) is needed too.
    type: str
  blkio_weight:
    description:
      - As C(virsh blkiotune --weight). cgroup v1 C(blkio.bfq.weight) or C(blkio.weight) (1-1000), v2
        C(io.bfq.weight) or C(io.weight), systemd C(IOWeight=). Needs the blkio/io controller.
    type: int
  controllers:
    description:
      - libvirt's controllers to create the partition for, as qemu.conf C(cgroup_controllers) lists them.
      - When omitted, the C(cgroup_controllers) of C(/etc/libvirt/qemu.conf) when it sets one, else all of
        libvirt's (cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls, perf_event) that are mounted.
    type: list
    elements: str
    choices: [cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls, perf_event]
  lock_timeout:
    description:
      - Seconds to wait for another run holding the collection's host-wide cgroup lock.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    details: Plans every directory, knob and unit change; writes, runs and locks nothing.
  diff_mode:
    support: full
    details: Every directory and knob before and after (the unit file on systemd hosts), with real paths.
  platform:
    platforms: linux
notes:
  - Needs root. Reads C(/proc/self/mountinfo), C(/proc/cgroups), C(/etc/libvirt/qemu.conf) and
    C(/run/libvirt/qemu/*.pid).
  - The directory names follow libvirt's C(virCgroupSetPartitionSuffix) and C(virCgroupPartitionEscape), the
    slice names C(virSystemdMakeSliceName).
seealso:
  - name: libvirt control groups
    description: Resource partitions and how libvirt maps them to cgroups and slices.
    link: https://libvirt.org/cgroups.html
  - module: rtvirt.kvm.cgroup_cpuset
"""

EXAMPLES = r"""
- name: A partition for production guests on CPUs 2-7, with its parent's memory nodes
  rtvirt.kvm.libvirt_partition:
    name: /machine/production
    cpus: 2-7

- name: A nested partition with libvirt-style tunables
  rtvirt.kvm.libvirt_partition:
    name: /machine/tenant/rt
    cpus: "3"
    cpu_shares: 2048
    memory_hard_limit: 8G

- name: Remove it again (refused while guests run inside)
  rtvirt.kvm.libvirt_partition:
    name: /machine/tenant/rt
    state: absent
"""

RETURN = r"""
name:
  description: The partition, as given.
  returned: always
  type: str
  sample: /machine/production
cgroup_path:
  description: Its cgroup below each hierarchy's root (the slice chain on systemd hosts).
  returned: always
  type: str
  sample: machine/production.partition
paths:
  description:
    - The partition's directory in every hierarchy libvirt uses, by controller; C(unified) is the cgroup2 tree.
      Present or planned; on V(absent), where it was.
  returned: always
  type: dict
  sample:
    cpu: /sys/fs/cgroup/cpu/machine/production.partition
    cpuset: /sys/fs/cgroup/cpuset/machine/production.partition
    memory: /sys/fs/cgroup/memory/machine/production.partition
    freezer: /sys/fs/cgroup/freezer/machine/production.partition
    unified: /sys/fs/cgroup/unified/machine/production.partition
unit:
  description: The slice unit, on systemd hosts.
  returned: when systemd manages the host
  type: str
  sample: machine-production.slice
partition:
  description:
    - C(cpuset.cpus.partition) of the partition as read back after the run (before it in check mode), on cgroup
      v2 when O(exclusive) is given; C(null) when the cgroup does not exist yet.
  returned: when O(exclusive) is given on a cgroup v2 host
  type: str
  sample: isolated
unit_file:
  description: The slice's unit file, on systemd hosts (the drop-in for C(/machine)).
  returned: when systemd manages the host
  type: str
  sample: /etc/systemd/system/machine-production.slice
writes:
  description:
    - What was changed, in order, as file (or command) and value (C(<mkdir>), C(<rmdir>), C(<run>)). Empty when
      nothing changed and in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: /sys/fs/cgroup/freezer/machine/production.partition, value: <mkdir>}
planned:
  description: The planned changes in words; the same in check mode and in a real run.
  returned: always
  type: list
  elements: str
  sample: ["mkdir /sys/fs/cgroup/freezer/machine/production.partition"]
notes:
  description: Decisions taken on the way, such as a partition filled with its parent's CPUs.
  returned: always
  type: list
  elements: str
  sample: ["filled the empty cpus of '/machine/production.partition' with its parent's (0-1)"]
guests:
  description: Guests found inside the partition (name, QEMU pid when running, cgroup).
  returned: always
  type: list
  elements: dict
  sample: [{name: rt1, pid: 4242, cgroup: machine/production.partition/qemu-3-rt1.libvirt-qemu}]
"""

import errno as _errno
import os
import tempfile
from dataclasses import replace

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError, discover_layout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import (
    LOCK_PATH,
    ApplyError,
    HostLock,
    LockTimeout,
    rollback as _cpuset_rollback,
    execute,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import CpusetModel, Node, parent_of
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError, Request, plan
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    DROP_IN_NAME,
    LIBVIRT_CONTROLLERS,
    V2_DOMAIN_CONTROLLERS,
    V2_NAMES,
    PartitionNameError,
    Tunables,
    guest_of_cgroup,
    libvirt_hierarchies,
    parse_name,
    parse_proc_cgroups,
    parse_qemu_conf_controllers,
    parse_size,
    partition_kind,
    plan_tunables,
    removal_order,
    render_slice_dropin,
    render_slice_unit,
)


class Host:
    """Where this host keeps what the module reads; unit tests point these at a fake tree."""

    mountinfo = "/proc/self/mountinfo"
    proc_cgroups = "/proc/cgroups"
    proc_root = "/proc"
    qemu_run_dir = "/run/libvirt/qemu"
    systemd_run_dir = "/run/systemd/system"
    unit_dir = "/etc/systemd/system"
    qemu_conf = "/etc/libvirt/qemu.conf"
    lock_path = LOCK_PATH


class PartitionError(Exception):
    """Bad input or a state the module will not change; nothing has been written."""


def get_argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        cpus=dict(type="str"),
        mems=dict(type="str"),
        exclusive=dict(type="bool"),
        cpu_shares=dict(type="int"),
        memory_hard_limit=dict(type="str"),
        memory_soft_limit=dict(type="str"),
        memory_swap_hard_limit=dict(type="str"),
        blkio_weight=dict(type="int"),
        controllers=dict(type="list", elements="str", choices=list(LIBVIRT_CONTROLLERS)),
        lock_timeout=dict(type="int", default=60),
    )


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


# --------------------------------------------------------------------------------------------
# The write gate for everything the cpuset engine does not write

class Gate:
    """Every directory, knob and unit-file change outside the cpuset engine goes through here."""

    def __init__(self, writes):
        self.writes = writes

    def mkdir(self, path):
        os.mkdir(path)
        self.writes.append((path, "<mkdir>"))

    def rmdir(self, path):
        if _is_fake_dir(path):
            # A rehearsal tree's knobs are plain files; on cgroupfs they vanish with the directory.
            for entry in os.listdir(path):
                if os.path.isfile(os.path.join(path, entry)):
                    os.unlink(os.path.join(path, entry))
        os.rmdir(path)
        self.writes.append((path, "<rmdir>"))

    def write(self, path, value):
        # A fake tree's plain file must be truncated, or a shorter value leaves the old one's tail behind.
        fd = os.open(path, os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if _is_fake_dir(os.path.dirname(path)) else 0))
        try:
            os.write(fd, (value + "\n").encode())
        finally:
            os.close(fd)
        self.writes.append((path, value))

    def write_file(self, path, text):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        self.writes.append((path, "<unit file>"))

    def unlink(self, path):
        os.unlink(path)
        self.writes.append((path, "<unlink>"))


def _is_fake_dir(path):
    """True outside cgroupfs (unit tests' fake trees): knob files are then plain files we create."""
    return _fstype(path) not in ("cgroup", "cgroup2")


def _fstype(path):
    """The filesystem type of the mount holding ``path``, from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                left, _sep, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4:
                    mountpoint = fields[4]
                    if (path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")) and len(mountpoint) > len(best):
                        best, best_type = mountpoint, right.split()[0]
    except OSError:
        return None
    return best_type


class Op:
    """One change outside the cpuset engine, with what undoes it."""

    def __init__(self, kind, path, value="", previous=None):
        self.kind, self.path, self.value, self.previous = kind, path, value, previous

    def describe(self):
        if self.kind == "write":
            return "write %r to %s" % (self.value, self.path)
        return "%s %s" % (self.kind, self.path)


def _do(gate, op):
    if op.kind == "mkdir":
        gate.mkdir(op.path)
    elif op.kind == "rmdir":
        gate.rmdir(op.path)
    else:
        gate.write(op.path, op.value)


def _undo(gate, op):
    if op.kind == "mkdir":
        gate.rmdir(op.path)
    elif op.kind == "rmdir":
        gate.mkdir(op.path)
    elif op.previous is not None:
        gate.write(op.path, op.previous)


def _run_ops(gate, ops, done):
    for op in ops:
        try:
            _do(gate, op)
        except OSError as exc:
            raise _OpFailed(op, exc) from None
        done.append(op)


class _OpFailed(Exception):
    def __init__(self, op, exc):
        super().__init__(op.describe())
        self.op, self.exc = op, exc


# --------------------------------------------------------------------------------------------
# Reading the host

def _cpu_set(value, what):
    if value is None:
        return None
    try:
        return frozenset(parse_cpulist(value, what=what))
    except CpuListError as exc:
        raise PartitionError(str(exc)) from None


def _size(value, what):
    if value is None:
        return None
    try:
        return parse_size(value, what)
    except ValueError as exc:
        raise PartitionError(str(exc)) from None


def _tunables(params):
    return Tunables(cpu_shares=params["cpu_shares"],
                    memory_hard_limit=_size(params["memory_hard_limit"], "memory_hard_limit"),
                    memory_soft_limit=_size(params["memory_soft_limit"], "memory_soft_limit"),
                    memory_swap_hard_limit=_size(params["memory_swap_hard_limit"], "memory_swap_hard_limit"),
                    blkio_weight=params["blkio_weight"])


def _check_ranges(tunables, version):
    if tunables.cpu_shares is not None:
        low, high, knob = (2, 262144, "cpu.shares") if version == 1 else (1, 10000, "cpu.weight")
        if not low <= tunables.cpu_shares <= high:
            raise PartitionError("cpu_shares=%d is outside %s's range %d-%d" % (tunables.cpu_shares, knob, low, high))
    if tunables.blkio_weight is not None:
        high = 1000 if version == 1 else 10000
        if not 1 <= tunables.blkio_weight <= high:
            raise PartitionError("blkio_weight=%d is outside 1-%d" % (tunables.blkio_weight, high))


def _refuse_moving_pinned_guests(mountpoint, pname, cpus):
    """Narrowing a partition rewrites every cgroup below it (the kernel requires children within parents).
    For a guest libvirt placed with its parent's CPUs that is the point (ordinary guests leave the realtime CPUs);
    a guest pinned to CPUs the partition gives up would lose its pinning behind libvirt's back (the domain XML
    and the cgroup files then disagree), or be left with no CPU at all: refuse before any write, naming it."""
    top = os.path.join(mountpoint, pname.cgroup_path)
    if not os.path.isdir(top):
        return
    pinned = {}
    # os.walk is top-down: every directory's CPUs are read once and looked up again as its children's parent.
    cpus_by_dir = {os.path.dirname(top): _cpus_of(os.path.dirname(top))}
    for current, dirs, _files in os.walk(top):
        own = cpus_by_dir[current] = _cpus_of(current)
        rel = os.path.relpath(current, mountpoint)
        guest = next(filter(None, map(guest_of_cgroup, rel.split("/"))), None)
        if guest is None or own is None or own <= cpus:
            continue
        if own != cpus_by_dir[os.path.dirname(current)] or not own & cpus:
            pinned.setdefault(guest[0], []).append("%s on %s" % (rel, format_cpulist(own)))
        if not own & cpus:
            dirs[:] = []
    if pinned:
        raise PartitionError(
            "cannot keep %s on CPUs %s: guest(s) pinned to CPUs it would give up: %s; move each to a partition that "
            "holds those CPUs (<partition> in the domain XML, then restart it), or re-pin it first (virsh vcpupin/"
            "emulatorpin --live --config); nothing was changed" % (
                pname.name, format_cpulist(cpus),
                "; ".join("%s (%s)" % (name, ", ".join(pinned[name])) for name in sorted(pinned))))


def _has_tasks_below(top):
    return any(_tasks_of(os.path.join(top, rel) if rel else top, 1) for rel in _walk(top))


def _cpus_of(directory):
    text = _read(os.path.join(directory, "cpuset.cpus"))
    if text is None:
        text = _read(os.path.join(directory, "cpuset.cpus.effective"))
    try:
        return frozenset(parse_cpulist(text.strip())) if text is not None else None
    except CpuListError:
        return None


def _guests_in(host, roots):
    """Guests whose QEMU runs below any of ``roots`` ('/machine/x.partition' style cgroup paths),
    from libvirt's pid files and /proc/PID/cgroup."""
    found = []
    try:
        entries = sorted(os.listdir(host.qemu_run_dir))
    except OSError:
        return found
    for entry in entries:
        if not entry.endswith(".pid") or entry == "driver.pid":
            continue
        text = (_read(os.path.join(host.qemu_run_dir, entry)) or "").strip()
        if not text.isdigit():
            continue
        cgroup_text = _read(os.path.join(host.proc_root, text, "cgroup"))
        if cgroup_text is None:
            continue
        for line in cgroup_text.splitlines():
            path = line.split(":", 2)[-1]
            if any(path == root or path.startswith(root + "/") for root in roots):
                found.append({"name": entry[:-len(".pid")], "pid": int(text), "cgroup": path.lstrip("/")})
                break
    return found


# --------------------------------------------------------------------------------------------
# Hosts without systemd

class _PartitionCpusetFs(CpusetFs):
    """CpusetFs whose rmdir also works on a rehearsal tree (where knobs are plain files)."""

    def rmdir(self, path):
        full = self.real_path(path)
        if self._is_fake():
            for entry in os.listdir(full):
                if os.path.isfile(os.path.join(full, entry)):
                    os.unlink(os.path.join(full, entry))
        super().rmdir(path)


def _hierarchies(host, layout, params):
    wanted = params["controllers"]
    if wanted is None:
        conf = _read(host.qemu_conf)
        wanted = parse_qemu_conf_controllers(conf) if conf else None
    result = libvirt_hierarchies(layout.mounts, wanted)
    for hierarchy in result:
        mount = next(m for m in layout.mounts if m.mountpoint == hierarchy.mountpoint)
        if mount.root != "/":
            raise PartitionError("the %s hierarchy at %s is mounted from %s, not its root (a cgroup namespace?); "
                                 "run the module where libvirtd sees the hierarchies" % (
                                     hierarchy.key, mount.mountpoint, mount.root))
    if not result:
        raise PartitionError("none of libvirt's controllers (%s) is mounted on this host" % ", ".join(wanted or LIBVIRT_CONTROLLERS))
    return result


def _controller_hierarchy(hierarchies, controller):
    for hierarchy in hierarchies:
        if controller in hierarchy.controllers:
            return hierarchy
    return None


def _walk(root):
    """Every directory below ``root`` (relative paths, root first), without following symlinks."""
    result = []
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        rel = os.path.relpath(dirpath, root)
        result.append("" if rel == "." else rel)
    return result


def _tasks_of(directory, version):
    """Thread ids in one cgroup (v2: cgroup.threads, which threaded cgroups such as vcpu0 also answer)."""
    try:
        text = _read(os.path.join(directory, "tasks" if version == 1 else "cgroup.threads")) or ""
    except OSError:
        text = ""
    return [int(word) for word in text.split()]


def _parent_cpus(cpuset_fs, pname):
    """The CPUs and nodes the partition's nearest existing ancestor holds (effective on v2)."""
    levels = [""] + pname.levels[:-1]
    for path in reversed(levels):
        if cpuset_fs.exists(path):
            if cpuset_fs.version == 1 and path:
                node = cpuset_fs.read_node(path)
                if node.cpus or node.mems:
                    return path, node.cpus, node.mems
                continue
            if path == "":
                return path, frozenset(cpuset_fs.online_cpus()), frozenset(cpuset_fs.memory_nodes())
            cpus = cpuset_fs.read(path, "cpuset.cpus.effective")
            mems = cpuset_fs.read(path, "cpuset.mems.effective")
            if cpus is not None and mems is not None:
                return path, frozenset(parse_cpulist(cpus)), frozenset(parse_cpulist(mems))
    return "", frozenset(cpuset_fs.online_cpus()), frozenset(cpuset_fs.memory_nodes())


_PARTITION_FILE = "cpuset.cpus.partition"
_DEFAULT_NOT_EXCLUSIVE = ("exclusive: %s is libvirt's default partition, where every guest without a <partition> "
                          "runs: it cannot be a cpuset partition of its own; give it the housekeeping CPUs and make "
                          "the realtime partition beside it exclusive")


def _partition_request(exclusive, release):
    if exclusive is None:
        return None
    return partition_kind(release) if exclusive else "member"


def plan_cgroups(host, layout, pname, params, cpus, mems, tunables):
    hierarchies = _hierarchies(host, layout, params)
    state = params["state"]
    cpuset_h = _controller_hierarchy(hierarchies, "cpuset")
    for controller in tunables.controllers():
        if _controller_hierarchy(hierarchies, controller) is None:
            raise PartitionError("a %s tunable is set, but libvirt uses no %s controller on this host (mounted: %s)" % (
                controller, controller, ", ".join(h.key for h in hierarchies)))
    if (cpus is not None or mems is not None or params["exclusive"] is not None) and cpuset_h is None:
        raise PartitionError("cpus, mems and exclusive need the cpuset controller, which libvirt does not use on "
                             "this host (hierarchies: %s)" % ", ".join(h.key for h in hierarchies))
    if params["exclusive"] and cpuset_h.version == 2 and pname.is_default:
        raise PartitionError(_DEFAULT_NOT_EXCLUSIVE % pname.name)
    tunables_on_v2 = any(h.version == 2 and set(tunables.controllers()) & set(h.controllers) for h in hierarchies)
    _check_ranges(tunables, 2 if tunables_on_v2 else 1)

    paths = {}
    for hierarchy in hierarchies:
        real = os.path.join(hierarchy.mountpoint, pname.cgroup_path)
        if hierarchy.version == 2:
            paths["unified"] = real
        for controller in hierarchy.controllers:
            if hierarchy.version == 1:
                paths[controller] = real

    cpuset_fs = _PartitionCpusetFs(cpuset_h.mountpoint, cpuset_h.version) if cpuset_h else None
    ops, notes, guests = [], [], []
    before, after = {}, {}
    engine_plan = None
    leaf = pname.cgroup_path

    def record(path, was, will):
        before[path], after[path] = was, will

    if state == "absent":
        roots = ["/" + leaf]
        guests = _guests_in(host, roots)
        stray = []
        for hierarchy in hierarchies:
            top = os.path.join(hierarchy.mountpoint, leaf)
            if not os.path.isdir(top):
                continue
            for rel in _walk(top):
                directory = os.path.join(top, rel) if rel else top
                found = guest_of_cgroup(os.path.basename(directory))
                if found and not any(g["name"] == found[0] for g in guests):
                    tasks = _tasks_of(directory, hierarchy.version)
                    if tasks:
                        guests.append({"name": found[0], "pid": None,
                                       "cgroup": os.path.relpath(directory, hierarchy.mountpoint)})
                tasks = _tasks_of(directory, hierarchy.version)
                if tasks:
                    stray.append("%s: %s" % (directory, " ".join(map(str, tasks[:10]))))
        if guests:
            raise PartitionError("cannot remove partition %s: guest%s %s still run%s inside (%s); shut %s down or "
                                 "move %s to another partition first" % (
                                     pname.name, "s" if len(guests) > 1 else "",
                                     ", ".join(g["name"] for g in guests), "" if len(guests) > 1 else "s",
                                     "; ".join("%s in %s" % (g["name"], g["cgroup"]) for g in guests),
                                     "them" if len(guests) > 1 else "it", "them" if len(guests) > 1 else "it"))
        if stray:
            raise PartitionError("cannot remove partition %s: tasks still run inside (%s); move them out first" % (
                pname.name, "; ".join(stray)))
        # libvirt also leaves the partition's directory in hierarchies it does not manage the partition in (on a
        # hybrid host the v1 cpuacct and devices trees, which its v2 backend claims): remove those too.
        managed = {h.mountpoint for h in hierarchies}
        others = [m for m in layout.mounts if m.mountpoint not in managed and m.version == 1
                  and os.path.isdir(os.path.join(m.mountpoint, leaf))
                  and not _has_tasks_below(os.path.join(m.mountpoint, leaf))]
        for hierarchy in [h for h in hierarchies if h is not cpuset_h] + others:
            top = os.path.join(hierarchy.mountpoint, leaf)
            if not os.path.isdir(top):
                continue
            for rel in removal_order(_walk(top)):
                directory = os.path.join(top, rel) if rel else top
                ops.append(Op("rmdir", directory))
                record(directory, "exists", "absent")
        if cpuset_fs is not None:
            engine_plan = plan(cpuset_fs, [Request(path=leaf, state="absent")])
        return dict(hierarchies=hierarchies, paths=paths, ops=ops, cpuset_fs=cpuset_fs, engine_plan=engine_plan,
                    tunable_ops=[], notes=notes, guests=guests, before=before, after=after)

    # ---- present ---------------------------------------------------------------------
    if cpuset_fs is not None:
        parent, parent_cpus, parent_mems = _parent_cpus(cpuset_fs, pname)
        where = "'/%s'" % parent if parent else "the root cpuset"
        if cpus is not None and not cpus <= parent_cpus:
            raise PartitionError("cpus=%s is not within the parent %s's CPUs (%s): CPUs %s are outside; widen the "
                                 "parent first" % (format_cpulist(cpus), where, format_cpulist(parent_cpus),
                                                   format_cpulist(cpus - parent_cpus)))
        if mems is not None and not mems <= parent_mems:
            raise PartitionError("mems=%s is not within the parent %s's memory nodes (%s)" % (
                format_cpulist(mems), where, format_cpulist(parent_mems)))
        if cpus is not None:
            _refuse_moving_pinned_guests(cpuset_h.mountpoint, pname, cpus)
        requests = []
        exclusive = params["exclusive"]
        if cpuset_fs.version == 2:
            # A kernel cpuset partition: local when the parent is a partition root (the root cgroup, for a
            # top-level partition such as /rt), remote (cpuset.cpus.exclusive top-down, 6.7+) otherwise.
            requests.append(Request(path=leaf, cpus=cpus, mems=mems,
                                    partition=_partition_request(exclusive, cpuset_fs.kernel_release())))
        else:
            for level in pname.levels:
                is_leaf = level == leaf
                if is_leaf:
                    requests.append(Request(path=level, cpus=cpus, mems=mems, cpu_exclusive=exclusive))
                elif exclusive:
                    requests.append(Request(path=level, cpu_exclusive=True))
        engine_plan = plan(cpuset_fs, requests)
        notes.extend(engine_plan.notes)

    late_ops = []
    for hierarchy in hierarchies:
        if hierarchy.version == 2:
            # Enable libvirt's v2 controllers top-down, so the partition's guests get them (libvirt enables them
            # itself only below the partition).  cpuset is the engine's (above).
            root_controllers = (_read(os.path.join(hierarchy.mountpoint, "cgroup.controllers")) or "").split()
            enable = [V2_NAMES.get(c, c) for c in hierarchy.controllers]
            enable = [c for c in V2_DOMAIN_CONTROLLERS if c in enable and c in root_controllers]
            for level in [""] + pname.levels[:-1]:
                directory = os.path.join(hierarchy.mountpoint, level) if level else hierarchy.mountpoint
                current = (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
                missing = [c for c in enable if c not in current]
                if missing:
                    # On a pure v2 host the engine creates the levels first: enable after it.
                    (late_ops if hierarchy is cpuset_h else ops).append(
                        Op("write", os.path.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in missing)))
                    record(os.path.join(directory, "cgroup.subtree_control"), " ".join(current) or "(none)",
                           " ".join(current + missing))
        if hierarchy is cpuset_h:
            continue
        for level in pname.levels:
            directory = os.path.join(hierarchy.mountpoint, level)
            if not os.path.isdir(directory):
                ops.append(Op("mkdir", directory))
                record(directory, "absent", "exists")

    # Tunables, on the deepest level of each hierarchy that carries them.
    tunable_ops = late_ops
    if tunables.any():
        by_hierarchy = {}
        for controller in tunables.controllers():
            hierarchy = _controller_hierarchy(hierarchies, controller)
            by_hierarchy.setdefault(hierarchy.mountpoint, hierarchy)

        def read(controller, name):
            hierarchy = _controller_hierarchy(hierarchies, controller)
            directory = os.path.join(hierarchy.mountpoint, leaf)
            if os.path.isdir(directory):
                return _read(os.path.join(directory, name))
            # A new directory gets the kernel's defaults; what exists is known from its parent.
            parent = os.path.join(hierarchy.mountpoint, pname.parent_path)
            return "" if os.path.exists(os.path.join(parent, name)) else None

        errors = []
        page = os.sysconf("SC_PAGE_SIZE")
        for mountpoint, hierarchy in sorted(by_hierarchy.items()):
            writes, problems = plan_tunables(hierarchy.version, tunables,
                                             lambda c, n, h=hierarchy: read(c, n) if c in h.controllers else None,
                                             page)
            errors.extend(p for p in problems if p.split(":")[0] in hierarchy.controllers or ":" not in p)
            for write in writes:
                path = os.path.join(hierarchy.mountpoint, leaf, write.file)
                tunable_ops.append(Op("write", path, write.value, previous=write.previous or None))
                record(path, write.previous or "(new)", write.expect)
        if errors:
            raise PartitionError("partition %s: %s" % (pname.name, "; ".join(sorted(set(errors)))))
    return dict(hierarchies=hierarchies, paths=paths, ops=ops, cpuset_fs=cpuset_fs, engine_plan=engine_plan,
                tunable_ops=tunable_ops, notes=notes, guests=guests, before=before, after=after)


def apply_cgroups(result, state):
    """Directories first (every hierarchy but cpuset), then the cpuset engine, then tunables; on absent the
    other hierarchies are emptied before cpuset.  A failure undoes this run's changes, newest first."""
    writes = []
    gate = Gate(writes)
    done = []
    cpuset_fs = result["cpuset_fs"]
    engine_plan = result["engine_plan"]
    engine_done = False
    try:
        _run_ops(gate, result["ops"], done)
        if engine_plan is not None and engine_plan.changed:
            try:
                execute(cpuset_fs, engine_plan.ops, before=engine_plan.before)
            finally:
                writes.extend(cpuset_fs.writes)
            engine_done = True
        _run_ops(gate, result["tunable_ops"], done)
    except (_OpFailed, ApplyError) as exc:
        restored, failures = [], []
        if isinstance(exc, _OpFailed):
            err = exc.exc.errno or 0
            message = "%s failed: %s (%s)" % (exc.op.describe(), exc.exc.strerror or exc.exc,
                                              _errno.errorcode.get(err, err))
        else:
            message = exc.message
            restored.extend(exc.rolled_back)
            failures.extend(exc.rollback_failures)
        if engine_done:
            undone, failed = _cpuset_rollback(cpuset_fs, list(engine_plan.ops), engine_plan.before)
            restored.extend(undone)
            failures.extend(failed)
        for op in reversed(done):
            try:
                _undo(gate, op)
                restored.append(op.describe())
            except OSError as undo_exc:
                failures.append("could not undo %s: %s" % (op.describe(), undo_exc.strerror or undo_exc))
        if restored:
            message += "; rolled back %d earlier change(s)" % len(restored)
        if failures:
            message += "; ROLLBACK INCOMPLETE: %s" % "; ".join(failures)
        raise ApplyError(message, list(writes), restored, failures) from None
    return writes


# --------------------------------------------------------------------------------------------
# systemd hosts

def _systemctl(module, *args, check=True):
    argv = [module.get_bin_path("systemctl", required=True)] + list(args)
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
    if check and rc != 0:
        raise PartitionError("%s failed with exit code %d: %s" % (" ".join(argv), rc, (err or out).strip()))
    return rc, out


class _SystemdView:
    """The unified hierarchy as the cpuset engine should see it once systemd has applied the slice unit:
    the slice chain exists with cpuset enabled above it, and the slice holds the unit's AllowedCPUs=.
    Used to plan (and refuse) a partition before anything is written, and in check mode."""

    def __init__(self, fs, overrides):
        self._fs = fs
        self._overrides = overrides
        self.version = 2

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def exists(self, path):
        return path in self._overrides or self._fs.exists(path)

    def read_node(self, path, known_false=()):
        return self._overrides.get(path) or self._fs.read_node(path, known_false)

    def children(self, path):
        names = set(self._fs.children(path))
        names.update(p.rsplit("/", 1)[-1] for p in self._overrides if p and parent_of(p) == path)
        return sorted(names)

    def tasks(self, path):
        return self._fs.tasks(path) if self._fs.exists(path) else []


def _unit_allowed(text, key):
    """A set property (AllowedCPUs=, AllowedMemoryNodes=) of a unit file's text, or None."""
    value = None
    for line in (text or "").splitlines():
        if line.startswith(key + "="):
            value = line.split("=", 1)[1].strip()
    if value is None:
        return None
    try:
        return frozenset(parse_cpulist(value))
    except CpuListError:
        return None


def _systemd_view(fs, pname, cpus, mems):
    levels = ["/".join(pname.slices[:index]) for index in range(1, len(pname.slices) + 1)]
    overrides = {"": replace(fs.read_node(""), subtree_cpuset=True)}
    for path in levels[:-1]:
        overrides[path] = replace(fs.read_node(path) if fs.exists(path) else Node(), subtree_cpuset=True)
    leaf = fs.read_node(levels[-1]) if fs.exists(levels[-1]) else Node()
    overrides[levels[-1]] = replace(leaf, cpus=cpus if cpus is not None else frozenset(),
                                    mems=mems if mems is not None else leaf.mems)
    return _SystemdView(fs, overrides)


def _unit_target(host, pname):
    """The file this module owns for ``pname``: its own slice unit, or for libvirt's default /machine a
    drop-in for the machine.slice systemd ships (never a replacement unit file)."""
    if pname.is_default:
        return os.path.join(host.unit_dir, pname.slice + ".d", DROP_IN_NAME), True
    return os.path.join(host.unit_dir, pname.slice), False


def run_systemd(module, host, layout, pname, params, cpus, mems, tunables):
    unified = layout.unified
    exclusive = params["exclusive"]
    cpuset_fs = None
    if unified is not None and "cpuset" in (_read(os.path.join(unified.mountpoint, "cgroup.controllers")) or "").split():
        cpuset_fs = _PartitionCpusetFs(unified.mountpoint, 2)
    if exclusive is False and cpuset_fs is None:
        # No cpuset on the unified hierarchy (a systemd host with v1 controllers): the slice cannot be a v2
        # partition, so there is nothing to dissolve.
        exclusive = None
    if exclusive is not None and params["state"] == "present":
        if exclusive and pname.is_default:
            raise PartitionError(_DEFAULT_NOT_EXCLUSIVE % pname.name)
        if cpuset_fs is None:
            raise PartitionError("exclusive makes the slice a cgroup v2 cpuset partition (cpuset.cpus.partition); this "
                                 "systemd host has no cpuset controller on the unified hierarchy (cgroup v1 or hybrid "
                                 "layout: AllowedCPUs= does not reach a v1 cpuset, and systemd has no exclusive "
                                 "property)")
    unit_file, drop_in = _unit_target(host, pname)
    paths = {}
    if unified is not None:
        paths["unified"] = os.path.join(unified.mountpoint, pname.slice_path)
    for mount in layout.mounts:
        if mount.version == 1:
            for controller in mount.controllers:
                if controller in LIBVIRT_CONTROLLERS:
                    paths[controller] = os.path.join(mount.mountpoint, pname.slice_path)
    current = _read(unit_file)
    guests, planned, writes, notes = [], [], [], []
    if cpuset_fs is not None and (cpus is not None or mems is not None):
        # What the parent can give (v2 effective sets, with this slice counted as a member: a partition
        # this slice already is has taken its CPUs out of the parent's cpuset.cpus.effective).
        model = CpusetModel(cpuset_fs)
        parent_path = "/".join(pname.slices[:-1])
        parent_name = pname.slices[-2] if len(pname.slices) > 1 else "the root cgroup"
        parent_cpus = model.effective_cpus(parent_path, excluding=pname.slice_path)
        parent_mems = model.effective_mems(parent_path)
        if cpus is not None and not cpus <= parent_cpus:
            raise PartitionError("cpus=%s is not within the parent slice %s's CPUs (%s)" % (
                format_cpulist(cpus), parent_name, format_cpulist(parent_cpus)))
        if mems is not None and not mems <= parent_mems:
            raise PartitionError("mems=%s is not within the parent slice %s's memory nodes (%s)" % (
                format_cpulist(mems), parent_name, format_cpulist(parent_mems)))
    gate = Gate(writes)
    partition_state = None
    if params["state"] == "absent":
        slice_dir = paths.get("unified") or next(iter(paths.values()), None)
        if slice_dir and os.path.isdir(slice_dir):
            for rel in _walk(slice_dir):
                found = guest_of_cgroup(os.path.basename(rel)) if rel else None
                if found and _tasks_of(os.path.join(slice_dir, rel), 2 if unified else 1):
                    guests.append({"name": found[0], "pid": None, "cgroup": os.path.join(pname.slice_path, rel)})
        guests.extend(g for g in _guests_in(host, ["/" + pname.slice_path])
                      if not any(g["name"] == other["name"] for other in guests))
        if guests:
            raise PartitionError("cannot remove partition %s (%s): guest%s %s still run%s inside; shut %s down first" % (
                pname.name, pname.slice, "s" if len(guests) > 1 else "", ", ".join(g["name"] for g in guests),
                "" if len(guests) > 1 else "s", "them" if len(guests) > 1 else "it"))
        rc, _out = _systemctl(module, "is-active", pname.slice, check=False)
        if rc == 0:
            planned.append("systemctl stop %s" % pname.slice)
        if current is not None:
            planned.extend(["remove %s" % unit_file, "systemctl daemon-reload"])
        new = None
        if planned and not module.check_mode:
            if rc == 0:
                _systemctl(module, "stop", pname.slice)
                writes.append(("systemctl stop %s" % pname.slice, "<run>"))
            if current is not None:
                gate.unlink(unit_file)
                _systemctl(module, "daemon-reload")
                writes.append(("systemctl daemon-reload", "<run>"))
    else:
        render = render_slice_dropin if drop_in else render_slice_unit
        try:
            new = render(pname, cpus, mems, tunables)
        except ValueError as exc:
            raise PartitionError(str(exc)) from None
        if cpus is None and mems is None and current is not None:
            # Keep what the unit already says when cpus/mems are not given.
            kept = [line for line in current.splitlines() if line.startswith(("AllowedCPUs=", "AllowedMemoryNodes="))]
            if kept:
                new = new.rstrip("\n").split("\n")
                index = new.index("[Slice]") + 1
                new = "\n".join(new[:index] + kept + new[index:]) + "\n"
        if new != current:
            planned.extend(["write %s" % unit_file, "systemctl daemon-reload"])
        rc, _out = _systemctl(module, "is-active", pname.slice, check=False)
        if rc != 0:
            planned.append("systemctl start %s" % pname.slice)
        kind = None
        if exclusive is not None:
            kind = _partition_request(exclusive, cpuset_fs.kernel_release())
            unit_cpus = cpus if cpus is not None else _unit_allowed(new, "AllowedCPUs")
            unit_mems = mems if mems is not None else _unit_allowed(new, "AllowedMemoryNodes")
            # Planned on the state systemd will leave: a partition the kernel would mark invalid is
            # refused here, before the unit is written.
            predicted = plan(_systemd_view(cpuset_fs, pname, unit_cpus, unit_mems),
                             [Request(path=pname.slice_path, partition=kind)])
            partition_state = cpuset_fs.read(pname.slice_path, _PARTITION_FILE)
            if predicted.changed:
                partition_ops = ["%s (in %s; systemd has no property for it)" % (op.describe(2), cpuset_fs.mountpoint)
                                 for op in predicted.ops]
                # A partition is dissolved before systemd changes the slice's CPUs (AllowedCPUs= growing onto a
                # sibling's CPUs while this slice is still a partition would be refused or invalidate it), and
                # formed after them.
                planned[:0 if kind == "member" else len(planned)] = partition_ops
                if new == current and rc == 0 and partition_state is not None:
                    notes.append(
                        "%s reads %r: systemd creates a slice's cgroup afresh (a member) whenever the slice is "
                        "stopped and started again (systemctl restart, or the last unit in it going away after a "
                        "stop), and it has no property for cpuset.cpus.partition; written again" % (
                            os.path.join(cpuset_fs.mountpoint, pname.slice_path, _PARTITION_FILE), partition_state))
        if planned and not module.check_mode:
            with HostLock(path=host.lock_path, timeout=params["lock_timeout"]):
                partition_state = _apply_systemd(module, gate, writes, pname, unit_file, current, new, rc, cpuset_fs,
                                                 kind)
    result = dict(changed=bool(planned), name=pname.name, cgroup_path=pname.slice_path, paths=paths,
                  unit=pname.slice, unit_file=unit_file, planned=planned, notes=notes, guests=guests,
                  writes=[{"file": f, "value": v} for f, v in writes])
    if partition_state is not None and params["state"] == "present":
        result["partition"] = partition_state
    if module._diff and planned:
        result["diff"] = {"before": current or "", "after": new or "",
                          "before_header": unit_file, "after_header": unit_file}
    return result


def _apply_systemd(module, gate, writes, pname, unit_file, current, new, was_active, cpuset_fs, kind):
    """Unit file, daemon-reload and start through systemd; then the partition file on the slice's cgroup
    (planned again on what systemd really left).  A partition the kernel refuses or marks invalid undoes
    the partition write and the unit change.  Returns cpuset.cpus.partition as read back.

    ``kind == "member"`` (exclusive: false) goes the other way round: the running slice's partition is
    dissolved first, while its CPUs are still the ones the partition was formed with, and only then does
    systemd get the new unit."""
    unit_changed = new != current
    if kind == "member" and was_active == 0:
        fs = _PartitionCpusetFs(cpuset_fs.mountpoint, 2)
        try:
            engine_plan = plan(fs, [Request(path=pname.slice_path, partition=kind)])
            if engine_plan.changed:
                execute(fs, engine_plan.ops, before=engine_plan.before)
        except PlanError as exc:
            raise ApplyError("%s: %s; nothing was changed" % (pname.slice, exc), list(writes), [], []) from None
        finally:
            writes.extend(fs.writes)
        kind = None
        member_state = fs.read(pname.slice_path, _PARTITION_FILE)
    else:
        member_state = None
    if unit_changed:
        gate.write_file(unit_file, new)
        _systemctl(module, "daemon-reload")
        writes.append(("systemctl daemon-reload", "<run>"))
    if was_active != 0:
        _systemctl(module, "start", pname.slice)
        writes.append(("systemctl start %s" % pname.slice, "<run>"))
    if kind is None:
        return member_state
    fs = _PartitionCpusetFs(cpuset_fs.mountpoint, 2)
    try:
        try:
            engine_plan = plan(fs, [Request(path=pname.slice_path, partition=kind)])
            if engine_plan.changed:
                execute(fs, engine_plan.ops, before=engine_plan.before)
        finally:
            writes.extend(fs.writes)
    except (PlanError, ApplyError) as exc:
        message = str(exc) if isinstance(exc, PlanError) else exc.message
        restored = list(getattr(exc, "rolled_back", []))
        failures = list(getattr(exc, "rollback_failures", []))
        try:
            if was_active != 0:
                _systemctl(module, "stop", pname.slice)
                writes.append(("systemctl stop %s" % pname.slice, "<run>"))
                restored.append("systemctl start %s" % pname.slice)
            if unit_changed:
                if current is None:
                    gate.unlink(unit_file)
                else:
                    gate.write_file(unit_file, current)
                _systemctl(module, "daemon-reload")
                writes.append(("systemctl daemon-reload", "<run>"))
                restored.append("write %s" % unit_file)
        except (OSError, PartitionError) as undo_exc:
            failures.append("could not restore %s: %s" % (unit_file, undo_exc))
        message = "%s: %s; %s" % (pname.slice, message,
                                  "unit change and slice start undone" if not failures else
                                  "ROLLBACK INCOMPLETE: %s" % "; ".join(failures))
        raise ApplyError(message, list(writes), restored, failures) from None
    return fs.read(pname.slice_path, _PARTITION_FILE)


# --------------------------------------------------------------------------------------------

def _diff(result, cpuset_fs):
    before, after = [], []
    for path in sorted(result["before"]):
        before.append("%s = %s" % (path, result["before"][path]))
        after.append("%s = %s" % (path, result["after"][path]))
    engine_plan = result["engine_plan"]
    if engine_plan is not None and engine_plan.changed:
        for entry in engine_plan.cgroups():
            real = cpuset_fs.real_path(entry["path"])
            before.extend("%s %s = %s" % (real, k, v) for k, v in sorted(entry["before"].items()))
            after.extend("%s %s = %s" % (real, k, v) for k, v in sorted(entry["after"].items()))
    return {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n",
            "before_header": "cgroup hierarchies", "after_header": "cgroup hierarchies"}


def run(module, host):
    params = module.params
    subsystems = parse_proc_cgroups(_read(host.proc_cgroups) or "")
    try:
        pname = parse_name(params["name"], subsystems)
    except PartitionNameError as exc:
        raise PartitionError(str(exc)) from None
    cpus = _cpu_set(params["cpus"], "cpus")
    mems = _cpu_set(params["mems"], "mems")
    tunables = _tunables(params)
    if pname.is_default and params["state"] == "absent":
        raise PartitionError("%s is libvirt's default partition: libvirt creates it at the first guest start and "
                             "keeps every guest without a <partition> there; only its cpus and mems can be managed"
                             % pname.name)
    if params["state"] == "absent" and (cpus is not None or mems is not None or tunables.any()
                                        or params["exclusive"] is not None):
        raise PartitionError("state=absent takes no cpus, mems, exclusive or tunables")
    if cpus is not None and not cpus:
        raise PartitionError("cpus is empty: a partition without CPUs cannot hold a guest")
    if mems is not None and not mems:
        raise PartitionError("mems is empty: a partition without memory nodes cannot hold a guest")
    layout = discover_layout(host.mountinfo)

    if os.path.isdir(host.systemd_run_dir):
        _check_ranges(tunables, 2)
        return run_systemd(module, host, layout, pname, params, cpus, mems, tunables)

    def converge():
        planned = plan_cgroups(host, layout, pname, params, cpus, mems, tunables)
        writes = []
        changed = bool(planned["ops"] or planned["tunable_ops"] or (planned["engine_plan"] and planned["engine_plan"].changed))
        if changed and not module.check_mode:
            writes = apply_cgroups(planned, params["state"])
        return planned, writes, changed

    if module.check_mode:
        planned, writes, changed = converge()
    else:
        with HostLock(path=host.lock_path, timeout=params["lock_timeout"]):
            planned, writes, changed = converge()
    cpuset_fs = planned["cpuset_fs"]
    engine_plan = planned["engine_plan"]
    described = [op.describe() for op in planned["ops"]]
    if engine_plan is not None:
        described.extend("%s (in %s)" % (op.describe(cpuset_fs.version), cpuset_fs.mountpoint) for op in engine_plan.ops)
    described.extend(op.describe() for op in planned["tunable_ops"])
    result = dict(changed=changed, name=pname.name, cgroup_path=pname.cgroup_path, paths=planned["paths"],
                  writes=[{"file": f, "value": v} for f, v in writes], planned=described,
                  notes=planned["notes"], guests=planned["guests"])
    if cpuset_fs is not None and cpuset_fs.version == 2 and params["exclusive"] is not None \
            and params["state"] == "present":
        result["partition"] = cpuset_fs.read(pname.cgroup_path, _PARTITION_FILE) if not module.check_mode or \
            cpuset_fs.exists(pname.cgroup_path) else None
    if module._diff and changed:
        result["diff"] = _diff(planned, cpuset_fs)
    return result


def main():
    module = AnsibleModule(argument_spec=get_argument_spec(), supports_check_mode=True)
    try:
        result = run(module, Host())
    except (PartitionError, PlanError, CgroupDiscoveryError, LockTimeout) as exc:
        module.fail_json(msg=str(exc), changed=False)
    except ApplyError as exc:
        module.fail_json(msg=exc.message, changed=bool(exc.rollback_failures),
                         writes=[{"file": f, "value": v} for f, v in exc.writes],
                         rolled_back=exc.rolled_back, rollback_failures=exc.rollback_failures)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
