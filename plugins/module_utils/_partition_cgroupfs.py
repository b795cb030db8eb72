# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt partitions on hosts without systemd: plan and apply them in every cgroup hierarchy libvirt uses.

A partition is a directory per level in each hierarchy (``_partition.libvirt_hierarchies``), the cpuset
hierarchy's written by the cpuset engine (parents first, CPUs and nodes before a guest can enter), the
tunables on the deepest level of the hierarchies that carry them.  Everything is written through one
``WriteGate`` and applied as one ``Transaction``: a failure in any hierarchy undoes the others too.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock, Transaction
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CgroupFs, CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import MKDIR, RMDIR, WRITE, Op
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import Request, plan
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    DEFAULT_NOT_EXCLUSIVE,
    LIBVIRT_CONTROLLERS,
    UNLIMITED,
    V2_DOMAIN_CONTROLLERS,
    V2_NAMES,
    PartitionError,
    TunableError,
    check_ranges,
    guest_of_cgroup,
    libvirt_hierarchies,
    parse_qemu_conf_controllers,
    partition_request,
    removal_order,
)

PARTITION_FILE = "cpuset.cpus.partition"


# --------------------------------------------------------------------------------------------
# Reading the host

def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def walk(root):
    """Every directory below ``root`` (relative paths, root first), without following symlinks."""
    result = []
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        rel = os.path.relpath(dirpath, root)
        result.append("" if rel == "." else rel)
    return result


def tasks_of(directory, version):
    """Thread ids in one cgroup (v2: cgroup.threads, which threaded cgroups such as vcpu0 also answer)."""
    try:
        text = read_text(os.path.join(directory, "tasks" if version == 1 else "cgroup.threads")) or ""
    except OSError:
        text = ""
    return [int(word) for word in text.split()]


def _has_tasks_below(top):
    return any(tasks_of(os.path.join(top, rel) if rel else top, 1) for rel in walk(top))


def _cpus_of(directory):
    text = read_text(os.path.join(directory, "cpuset.cpus"))
    if text is None:
        text = read_text(os.path.join(directory, "cpuset.cpus.effective"))
    try:
        return frozenset(parse_cpulist(text.strip())) if text is not None else None
    except CpuListError:
        return None


def guests_in(host, roots):
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
        text = (read_text(os.path.join(host.qemu_run_dir, entry)) or "").strip()
        if not text.isdigit():
            continue
        cgroup_text = read_text(os.path.join(host.proc_root, text, "cgroup"))
        if cgroup_text is None:
            continue
        for line in cgroup_text.splitlines():
            path = line.split(":", 2)[-1]
            if any(path == root or path.startswith(root + "/") for root in roots):
                found.append({"name": entry[:-len(".pid")], "pid": int(text), "cgroup": path.lstrip("/")})
                break
    return found


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


def _hierarchies(host, layout, controllers):
    wanted = controllers
    if wanted is None:
        conf = read_text(host.qemu_conf)
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


# --------------------------------------------------------------------------------------------
# Tunables: libvirt's schedinfo cpu_shares, memtune hard/soft/swap_hard limit, blkiotune weight

def page_counter_max(page):
    """The largest memory limit the kernel holds, in bytes: PAGE_COUNTER_MAX (LONG_MAX / PAGE_SIZE) pages.  A v1
    ``memory.*limit_in_bytes`` reads back as this when unlimited (9223372036854771712 with 4 KiB pages)."""
    return (2 ** 63 - 1) // page * page


def memory_knob(value, page, version):
    """(what to write, what the kernel reads back) for a memory limit in bytes.  The kernel keeps whole pages
    (page_counter_memparse rounds down and clamps at PAGE_COUNTER_MAX); unlimited is written as ``-1`` and read
    back as that maximum on v1, and is ``max`` on v2.  Comparing the read-back form keeps a second run from
    rewriting a limit the kernel rounded."""
    top = page_counter_max(page)
    if value == UNLIMITED or value >= top:
        return ("-1", str(top)) if version == 1 else ("max", "max")
    return str(value), str(value // page * page)


def weight_shown(text):
    """The weight a BFQ or iocost weight file holds: ``100`` (v1 blkio.bfq.weight), ``default 100`` plus one
    line per device (v2 io.weight, io.bfq.weight)."""
    first = (text or "").strip().split("\n")[0]
    return first.replace("default ", "").strip()


@dataclass(frozen=True)
class TunableWrite:
    controller: str     # libvirt controller name
    file: str
    value: str          # what to write
    expect: str         # what reads back once it holds (the kernel rounds to pages)
    previous: str | None = None
    option: str = ""    # the module option it comes from, for messages


# Why a knob can be missing, per option: the partition names it with the files looked for.
MISSING_WHY = {
    "blkio_weight": ("v1 blkio.weight was CFQ's, which Linux 5.0 removed; blkio.bfq.weight and io.bfq.weight exist "
                     "only while the BFQ I/O scheduler is built in or loaded (modprobe bfq), io.weight only with "
                     "CONFIG_BLK_CGROUP_IOCOST; leave blkio_weight unset on this kernel"),
    "cpu_shares": "the cpu controller does not offer it here",
    "memory_swap_hard_limit": ("the kernel accounts no swap (no swap configured, or swapaccount=0 / "
                               "CONFIG_MEMCG_SWAP unset)"),
}


def _given(tunables, option):
    value = getattr(tunables, option)
    if option.startswith("memory_"):
        return "unlimited" if value == UNLIMITED else str(value)
    return str(value)


def plan_tunables(version, tunables, read, page_size=4096):
    """The tunable writes a partition needs, in an order the kernel accepts.

    ``read(controller, file)`` returns the current text of a knob or None when the file does not exist
    (``""``: it will exist, with the kernel's default, once its directory is made).
    Returns ``(writes, errors)``: writes whose current value, as the kernel shows it, differs from what the
    write would read back; and messages for tunables the host cannot take (a knob that is not there).
    """
    writes, errors = [], []

    def want(option, controller, candidates, value, expect, weight=False):
        for name in candidates:
            current = read(controller, name)
            if current is None:
                continue
            shown = weight_shown(current) if weight else current.strip()
            if current == "" or shown != expect:
                writes.append(TunableWrite(controller, name, value, expect, current.strip(), option))
            return
        errors.append("%s=%s: %s not found (%s)" % (
            option, _given(tunables, option), " nor ".join(candidates), MISSING_WHY.get(
                option, "the %s controller does not offer it here" % controller)))

    t = tunables
    if t.cpu_shares is not None:
        want("cpu_shares", "cpu", ["cpu.shares"] if version == 1 else ["cpu.weight"], str(t.cpu_shares),
             str(t.cpu_shares))
    if t.blkio_weight is not None:
        if version == 1:
            # libvirt (virCgroupV1SetBlkioWeight) prefers the BFQ file, then CFQ's.
            want("blkio_weight", "blkio", ["blkio.bfq.weight", "blkio.weight"], str(t.blkio_weight),
                 str(t.blkio_weight), weight=True)
        elif read("blkio", "io.bfq.weight") is not None:
            want("blkio_weight", "blkio", ["io.bfq.weight"], str(t.blkio_weight), str(t.blkio_weight), weight=True)
        else:
            want("blkio_weight", "blkio", ["io.weight"], "default %d" % t.blkio_weight, str(t.blkio_weight),
                 weight=True)
    memory = []
    if version == 1:
        if t.memory_soft_limit is not None:
            value, expect = memory_knob(t.memory_soft_limit, page_size, 1)
            want("memory_soft_limit", "memory", ["memory.soft_limit_in_bytes"], value, expect)
        hard = swap = None
        if t.memory_hard_limit is not None:
            value, expect = memory_knob(t.memory_hard_limit, page_size, 1)
            before = len(writes)
            want("memory_hard_limit", "memory", ["memory.limit_in_bytes"], value, expect)
            hard = writes.pop() if len(writes) > before else None
        if t.memory_swap_hard_limit is not None:
            value, expect = memory_knob(t.memory_swap_hard_limit, page_size, 1)
            before = len(writes)
            want("memory_swap_hard_limit", "memory", ["memory.memsw.limit_in_bytes"], value, expect)
            swap = writes.pop() if len(writes) > before else None
        # memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: raise memsw first when
        # the hard limit grows, lower the hard limit first when it shrinks (libvirt's own order).
        if hard and swap and _grows(hard):
            memory = [swap, hard]
        else:
            memory = [w for w in (hard, swap) if w]
    else:
        if t.memory_hard_limit is not None:
            value, expect = memory_knob(t.memory_hard_limit, page_size, 2)
            want("memory_hard_limit", "memory", ["memory.max"], value, expect)
        if t.memory_soft_limit is not None:
            # libvirt's soft_limit on cgroup v2 is memory.high (virCgroupV2SetMemorySoftLimit).
            value, expect = memory_knob(t.memory_soft_limit, page_size, 2)
            want("memory_soft_limit", "memory", ["memory.high"], value, expect)
        if t.memory_swap_hard_limit is not None:
            # libvirt writes memory.swap.max = swap_hard_limit - memory.max (virCgroupV2SetMemSwapHardLimit).
            if t.memory_swap_hard_limit == UNLIMITED:
                swap = UNLIMITED
            elif t.memory_hard_limit in (None, UNLIMITED):
                errors.append("memory_swap_hard_limit needs a finite memory_hard_limit on cgroup v2 (memory.swap.max "
                              "is the swap beyond memory.max)")
                swap = None
            elif t.memory_swap_hard_limit < t.memory_hard_limit:
                errors.append("memory_swap_hard_limit (memory + swap) is below memory_hard_limit")
                swap = None
            else:
                swap = t.memory_swap_hard_limit - t.memory_hard_limit
            if swap is not None:
                value, expect = memory_knob(swap, page_size, 2)
                want("memory_swap_hard_limit", "memory", ["memory.swap.max"], value, expect)
    return writes + memory, errors


def _grows(write):
    def number(text):
        try:
            return int(text)
        except (TypeError, ValueError):
            return -1
    new, old = number(write.expect), number(write.previous)
    return new > old >= 0 or write.value == "-1"


class TunableFs(CgroupFs):
    """A hierarchy whose tunables the run writes: a refused write names the partition and the module option."""

    def __init__(self, mountpoint, version, gate, partition, options):
        super().__init__(mountpoint, version, gate)
        self.partition = partition
        self.options = options      # file name -> "option=value as given"

    # Beside the knobs' own rules (KNOB_RULES): what an errno of any tunable write means.
    errno_rules = {
        _errno.ERANGE: "the value is outside the knob's range",
        _errno.EINVAL: "the kernel does not accept this value for the knob",
        _errno.ENOENT: "the knob does not exist (its controller is not enabled for the partition)",
        _errno.EACCES: "the knob does not exist or cannot be written (its controller is not enabled for it)",
        _errno.EBUSY: "the partition's tasks use more than the new limit and the kernel could not reclaim enough",
    }

    def errno_rule(self, op, err):
        rule = super().errno_rule(op, err)
        given = self.options.get(op.knob)
        return "partition %s, %s: %s" % (self.partition, given, rule) if given else rule


# --------------------------------------------------------------------------------------------
# Plan and apply

@dataclass
class CgroupfsPlan:
    """What a run does, in the order it does it: ``dirs`` (fs, op) in every hierarchy but cpuset's, then
    the engine's ``engine_plan`` on ``cpuset_fs``, then ``late`` (fs, op): tunables, and on a pure v2 host the
    controllers enabled above the partition once the engine has made its levels."""

    paths: dict
    cpuset_fs: CpusetFs | None = None
    engine_plan: object = None
    dirs: list = field(default_factory=list)
    late: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    guests: list = field(default_factory=list)
    before: dict = field(default_factory=dict)   # real path -> shown in the diff
    after: dict = field(default_factory=dict)

    @property
    def changed(self):
        return bool(self.dirs or self.late or (self.engine_plan is not None and self.engine_plan.changed))

    def record(self, path, was, will):
        self.before[path], self.after[path] = was, will

    def described(self):
        words = [fs.describe(op) for fs, op in self.dirs]
        if self.engine_plan is not None:
            words.extend("%s (in %s)" % (op.describe(self.cpuset_fs.version), self.cpuset_fs.mountpoint)
                         for op in self.engine_plan.ops)
        words.extend(fs.describe(op) for fs, op in self.late)
        return words

    def diff(self):
        before, after = [], []
        for path in sorted(self.before):
            before.append("%s = %s" % (path, self.before[path]))
            after.append("%s = %s" % (path, self.after[path]))
        if self.engine_plan is not None and self.engine_plan.changed:
            for entry in self.engine_plan.cgroups():
                real = self.cpuset_fs.real_path(entry["path"])
                before.extend("%s %s = %s" % (real, k, v) for k, v in sorted(entry["before"].items()))
                after.extend("%s %s = %s" % (real, k, v) for k, v in sorted(entry["after"].items()))
        return {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n",
                "before_header": "cgroup hierarchies", "after_header": "cgroup hierarchies"}

    def apply(self, gate):
        """Directories first (every hierarchy but cpuset), then the cpuset engine, then tunables; on absent
        the other hierarchies are emptied before cpuset.  A failure undoes this run's changes, newest first,
        in every hierarchy."""
        transaction = Transaction(gate)
        for fs, op in self.dirs:
            transaction.apply(fs, [op])
        if self.engine_plan is not None and self.engine_plan.changed:
            transaction.apply(self.cpuset_fs, self.engine_plan.ops, self.engine_plan.before)
        for fs, op in self.late:
            transaction.apply(fs, [op])
        return gate.writes


def _absent(host, gate, layout, desired, hierarchies, cpuset_h, result):
    pname, leaf = desired.pname, desired.pname.cgroup_path
    guests = result.guests = guests_in(host, ["/" + leaf])
    stray = []
    for hierarchy in hierarchies:
        top = os.path.join(hierarchy.mountpoint, leaf)
        if not os.path.isdir(top):
            continue
        for rel in walk(top):
            directory = os.path.join(top, rel) if rel else top
            found = guest_of_cgroup(os.path.basename(directory))
            tasks = tasks_of(directory, hierarchy.version)
            if found and tasks and not any(g["name"] == found[0] for g in guests):
                guests.append({"name": found[0], "pid": None,
                               "cgroup": os.path.relpath(directory, hierarchy.mountpoint)})
            if tasks:
                stray.append("%s: %s" % (directory, " ".join(map(str, tasks[:10]))))
    if guests:
        several = len(guests) > 1
        raise PartitionError("cannot remove partition %s: guest%s %s still run%s inside (%s); shut %s down or "
                             "move %s to another partition first" % (
                                 pname.name, "s" if several else "", ", ".join(g["name"] for g in guests),
                                 "" if several else "s", "; ".join("%s in %s" % (g["name"], g["cgroup"]) for g in guests),
                                 "them" if several else "it", "them" if several else "it"))
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
        fs = CgroupFs(hierarchy.mountpoint, hierarchy.version, gate)
        top = fs.real_path(leaf)
        if not os.path.isdir(top):
            continue
        for rel in removal_order(walk(top)):
            op = Op(RMDIR, os.path.join(leaf, rel) if rel else leaf)
            result.dirs.append((fs, op))
            result.record(fs.real_path(op.path), "exists", "absent")
    if result.cpuset_fs is not None:
        result.engine_plan = plan(result.cpuset_fs, [Request(path=leaf, state="absent")])
    return result


def _engine_requests(desired, cpuset_fs, cpuset_h):
    pname, cpus, mems, leaf = desired.pname, desired.cpus, desired.mems, desired.pname.cgroup_path
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
    exclusive = desired.exclusive
    if cpuset_fs.version == 2:
        # A kernel cpuset partition: local when the parent is a partition root (the root cgroup, for a
        # top-level partition such as /rt), remote (cpuset.cpus.exclusive top-down, 6.7+) otherwise.
        return [Request(path=leaf, cpus=cpus, mems=mems,
                        partition=partition_request(exclusive, cpuset_fs.kernel_release()))]
    requests = []
    for level in pname.levels:
        if level == leaf:
            requests.append(Request(path=level, cpus=cpus, mems=mems, cpu_exclusive=exclusive))
        elif exclusive:
            requests.append(Request(path=level, cpu_exclusive=True))
    return requests


def _knob_known(hierarchy, pname, name, sys_root="/sys"):
    """Will ``name`` exist in the partition's new (or not yet enabled) directory?  Known from its parent, or,
    for a level below the root (whose cgroup shows no weights and, on v2, no limits), from any cgroup beside it.
    A v2 controller the plan enables top-down shows its files only afterwards: cpu and memory knobs come with
    the controller, io.weight with iocost (whose io.cost.qos only the root shows), the BFQ weights with BFQ
    (offered in a block device's queue/scheduler once built in or loaded)."""
    parent = os.path.join(hierarchy.mountpoint, pname.parent_path)
    if pname.parent_path and os.path.exists(os.path.join(parent, name)):
        return True
    controller = name.split(".")[0]
    bfq = name.endswith("bfq.weight") and _bfq_offered(sys_root)
    if hierarchy.version == 2:
        root_controllers = (read_text(os.path.join(hierarchy.mountpoint, "cgroup.controllers")) or "").split()
        if controller in ("cpu", "memory"):
            return controller in root_controllers
        if name == "io.weight":
            return "io" in root_controllers and os.path.exists(os.path.join(hierarchy.mountpoint, "io.cost.qos"))
        if name == "io.bfq.weight":
            return "io" in root_controllers and bfq
    if bfq:
        return True
    try:
        siblings = sorted(os.listdir(parent))
    except OSError:
        return False
    return any(os.path.exists(os.path.join(parent, entry, name)) for entry in siblings
               if os.path.isdir(os.path.join(parent, entry)))


def _bfq_offered(sys_root):
    block = os.path.join(sys_root, "block")
    try:
        names = os.listdir(block)
    except OSError:
        return False
    return any("bfq" in (read_text(os.path.join(block, n, "queue", "scheduler")) or "").replace("[", " ").replace(
        "]", " ").split() for n in names)


def _refuse_limit_below_usage(hierarchy, pname, tunables):
    """cgroup v2 answers a memory.max below what the cgroup uses with reclaim and then the OOM killer, inside the
    partition's guests, where v1 refuses the write (EBUSY): refuse it before any write instead."""
    limit = tunables.memory_hard_limit
    if hierarchy.version != 2 or limit is None or limit == UNLIMITED:
        return
    text = read_text(os.path.join(hierarchy.mountpoint, pname.cgroup_path, "memory.current"))
    if text is None or not text.strip().isdigit():
        return
    used = int(text.strip())
    if limit < used:
        raise TunableError(
            "partition %s: memory_hard_limit=%d is below the %d bytes its tasks use now (memory.current): cgroup v2 "
            "would reclaim and then OOM-kill inside the partition to meet memory.max; stop or shrink its guests "
            "first, or give a higher limit; nothing was changed" % (pname.name, limit, used))


def bfq_devices(sys_root):
    """The block devices whose I/O scheduler is BFQ (``[bfq]`` in queue/scheduler)."""
    block = os.path.join(sys_root, "block")
    try:
        names = sorted(os.listdir(block))
    except OSError:
        return []
    return [name for name in names if "[bfq]" in (read_text(os.path.join(block, name, "queue", "scheduler")) or "")]


def _tunable_ops(gate, desired, hierarchies, result, sys_root="/sys"):
    """The tunables, on the deepest level of each hierarchy that carries them."""
    pname, tunables, leaf = desired.pname, desired.tunables, desired.pname.cgroup_path
    by_hierarchy = {}
    for controller in tunables.controllers():
        hierarchy = _controller_hierarchy(hierarchies, controller)
        by_hierarchy.setdefault(hierarchy.mountpoint, hierarchy)

    def read(hierarchy, controller, name):
        if controller not in hierarchy.controllers:
            return None
        directory = os.path.join(hierarchy.mountpoint, leaf)
        if os.path.isdir(directory):
            text = read_text(os.path.join(directory, name))
            if text is not None:
                return text
        # A new directory gets the kernel's defaults (and a v2 one the knob only once its controller is enabled).
        return "" if _knob_known(hierarchy, pname, name, sys_root) else None

    errors = []
    page = os.sysconf("SC_PAGE_SIZE")
    for _mountpoint, hierarchy in sorted(by_hierarchy.items()):
        mine = tunables.only(hierarchy.controllers)
        if "memory" in hierarchy.controllers:
            _refuse_limit_below_usage(hierarchy, pname, mine)
        writes, problems = plan_tunables(hierarchy.version, mine, lambda c, n, h=hierarchy: read(h, c, n), page)
        errors.extend(problems)
        fs = TunableFs(hierarchy.mountpoint, hierarchy.version, gate, pname.name,
                       {w.file: "%s=%s" % (w.option, _given(mine, w.option)) for w in writes})
        if any(w.file.endswith("bfq.weight") for w in writes) and not bfq_devices(sys_root):
            result.notes.append("blkio_weight goes to %s, BFQ's weight, but no block device uses the bfq scheduler "
                                "(%s/block/*/queue/scheduler): it takes effect on devices switched to bfq" % (
                                    next(w.file for w in writes if w.file.endswith("bfq.weight")), sys_root))
        for write in writes:
            op = Op(WRITE, leaf, knob=write.file, value=write.value, previous=write.previous or None)
            result.late.append((fs, op))
            result.record(fs.real_path(leaf, write.file), write.previous or "(new)", write.expect)
    if errors:
        raise TunableError("partition %s: %s; nothing was changed" % (pname.name, "; ".join(sorted(set(errors)))))


def plan_cgroupfs(host, gate, layout, desired):
    """The :class:`CgroupfsPlan` for ``desired`` (a ``_partition.Desired``) on this host; raise PartitionError
    (or the engine's PlanError) before anything is written when the host cannot take it."""
    pname, tunables, leaf = desired.pname, desired.tunables, desired.pname.cgroup_path
    hierarchies = _hierarchies(host, layout, desired.controllers)
    cpuset_h = _controller_hierarchy(hierarchies, "cpuset")
    for controller in tunables.controllers():
        if _controller_hierarchy(hierarchies, controller) is None:
            used = ", ".join(h.key for h in hierarchies)
            raise TunableError("partition %s: a %s tunable is set, but libvirt uses no %s controller on this host "
                               "(hierarchies: %s)" % (pname.name, controller, controller, used))
    if (desired.cpus is not None or desired.mems is not None or desired.exclusive is not None) and cpuset_h is None:
        raise PartitionError("cpus, mems and exclusive need the cpuset controller, which libvirt does not use on "
                             "this host (hierarchies: %s)" % ", ".join(h.key for h in hierarchies))
    if desired.exclusive and cpuset_h.version == 2 and pname.is_default:
        raise PartitionError(DEFAULT_NOT_EXCLUSIVE % pname.name)
    tunables_on_v2 = any(h.version == 2 and set(tunables.controllers()) & set(h.controllers) for h in hierarchies)
    check_ranges(tunables, 2 if tunables_on_v2 else 1, pname.name)

    paths = {}
    for hierarchy in hierarchies:
        real = os.path.join(hierarchy.mountpoint, leaf)
        if hierarchy.version == 2:
            paths["unified"] = real
        for controller in hierarchy.controllers:
            if hierarchy.version == 1:
                paths[controller] = real
    result = CgroupfsPlan(paths=paths,
                          cpuset_fs=CpusetFs(cpuset_h.mountpoint, cpuset_h.version, gate=gate) if cpuset_h else None)
    if desired.state == "absent":
        return _absent(host, gate, layout, desired, hierarchies, cpuset_h, result)

    if result.cpuset_fs is not None:
        result.engine_plan = plan(result.cpuset_fs, _engine_requests(desired, result.cpuset_fs, cpuset_h))
        result.notes.extend(result.engine_plan.notes)
    for hierarchy in hierarchies:
        fs = CgroupFs(hierarchy.mountpoint, hierarchy.version, gate)
        if hierarchy.version == 2:
            # Enable libvirt's v2 controllers top-down, so the partition's guests get them (libvirt enables them
            # itself only below the partition).  cpuset is the engine's (above).
            root_controllers = (fs.read("", "cgroup.controllers") or "").split()
            enable = [V2_NAMES.get(c, c) for c in hierarchy.controllers]
            enable = [c for c in V2_DOMAIN_CONTROLLERS if c in enable and c in root_controllers]
            for level in [""] + pname.levels[:-1]:
                current = (fs.read(level, "cgroup.subtree_control") or "").split()
                missing = [c for c in enable if c not in current]
                if missing:
                    # Enabling is not undone: a controller enabled above a partition harms nothing.
                    op = Op(WRITE, level, knob="cgroup.subtree_control", value=" ".join("+" + c for c in missing),
                            previous=None)
                    # On a pure v2 host the engine creates the levels first: enable after it.
                    (result.late if hierarchy is cpuset_h else result.dirs).append((fs, op))
                    result.record(fs.real_path(level, "cgroup.subtree_control"), " ".join(current) or "(none)",
                                  " ".join(current + missing))
        if hierarchy is cpuset_h:
            continue
        for level in pname.levels:
            if not fs.exists(level):
                result.dirs.append((fs, Op(MKDIR, level)))
                result.record(fs.real_path(level), "absent", "exists")
    if tunables.any():
        _tunable_ops(gate, desired, hierarchies, result, host.sys_root)
    return result


def converge_cgroupfs(host, gate, layout, desired, check_mode, lock_timeout, diff=False):
    """Plan and, unless ``check_mode``, apply under the host-wide lock; return the module's result."""
    def converge():
        planned = plan_cgroupfs(host, gate, layout, desired)
        if planned.changed and not check_mode:
            planned.apply(gate)
        return planned

    if check_mode:
        planned = converge()
    else:
        with HostLock(path=host.lock_path, timeout=lock_timeout):
            planned = converge()
    pname, cpuset_fs = desired.pname, planned.cpuset_fs
    result = dict(changed=planned.changed, name=pname.name, cgroup_path=pname.cgroup_path, paths=planned.paths,
                  writes=[{"file": f, "value": v} for f, v in gate.writes], planned=planned.described(),
                  notes=planned.notes, guests=planned.guests)
    if cpuset_fs is not None and cpuset_fs.version == 2 and desired.exclusive is not None \
            and desired.state == "present":
        result["partition"] = cpuset_fs.read(pname.cgroup_path, PARTITION_FILE) if not check_mode or \
            cpuset_fs.exists(pname.cgroup_path) else None
    if diff and planned.changed:
        result["diff"] = planned.diff()
    return result
