# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt resource partitions: names, the hierarchies libvirt uses, and what a run is asked for.  Pure: no I/O.

How a partition is made is the backends': ``_partition_cgroupfs`` (hosts without systemd: directories,
cpuset and tunables in every hierarchy) and ``_partition_systemd`` (slice units).

A partition is what a domain's ``<resource><partition>`` names (``/machine/production``).  libvirt
never creates one except its default ``/machine``; the operator has to, in every place libvirt looks:

* hosts without systemd: a directory per level in every cgroup hierarchy libvirt uses, named by
  ``virCgroupSetPartitionSuffix`` + ``virCgroupPartitionEscape`` (src/util/vircgroup.c):
  the first level ``machine``/``system``/``user`` stays as it is; every other level gets the suffix
  ``.partition`` unless it already holds a dot; then a level that starts with ``cgroup.``, ``_``,
  ``.`` or ``<controller>.`` (any name in /proc/cgroups) gets a ``_`` prefix.
  ``/machine/tenant/rt`` → ``machine/tenant.partition/rt.partition``; ``/machine/cpu`` →
  ``machine/_cpu.partition``.
* systemd hosts: the slice unit ``virSystemdMakeSliceName`` names (src/util/virsystemd.c): the name
  without its leading ``/``, ``/`` → ``-``, and ``-``, ``\\``, a leading ``.`` and anything but
  ``[A-Za-z0-9:_.]`` escaped as ``\\xNN`` (the same rule as ``systemd-escape``):
  ``/machine/tenant/rt`` → ``machine-tenant-rt.slice``, ``/machine/my-rt`` → ``machine-my\\x2drt.slice``.

Which hierarchies libvirt 9.0 uses (vircgroupv1.c/vircgroupv2.c ``DetectControllers``): its
controllers are cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls and perf_event,
optionally narrowed by qemu.conf ``cgroup_controllers``.  When a cgroup2 hierarchy is mounted the v2
backend claims first: cpuacct always (cpu.stat stands in for it), devices (BPF), and those named in
the cgroup2 root's ``cgroup.controllers``; the v1 backend takes the rest that are mounted.  A missing
blkio directory is the only one libvirt tolerates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import kernel_at_least
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, parse_cpulist

# libvirt's controllers, in its enum order (VIR_CGROUP_CONTROLLER_*), with their v2 names.
LIBVIRT_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "net_cls",
                       "perf_event")
V2_NAMES = {"blkio": "io"}
# The v2 controllers libvirt_partition enables top-down in cgroup.subtree_control above a partition (when libvirt
# uses them and the root offers them), so that the partition's guests get them.
V2_DOMAIN_CONTROLLERS = ("cpu", "memory", "io", "perf_event")
# A mkdir failure in these is ignored by libvirt (virCgroupV1MakeGroup): the partition may lack them.
OPTIONAL_CONTROLLERS = ("blkio",)
# libvirt's fixed first levels (no .partition suffix).  /machine is libvirt's default partition;
# /system and /user map into systemd's own slices and are refused.
FIXED_TOP_LEVELS = ("machine", "system", "user")
DEFAULT_PARTITION = "/machine"
# Characters a partition level may hold.  libvirt would take more, but each of these survives every
# place the name goes unchanged: the domain XML, a cgroupfs directory, /proc/PID/cgroup lines, a
# systemd unit name (after escaping) and an Ansible variable.
_LEVEL_CHARS = re.compile(r"[A-Za-z0-9_.:-]+")
_NAME_MAX = 255             # one directory entry (NAME_MAX) and a unit name (UNIT_NAME_MAX - 1)


class PartitionNameError(ValueError):
    """A partition name libvirt or systemd cannot represent, or one this module refuses to manage."""


class PartitionError(Exception):
    """Bad input or a state libvirt_partition will not change; nothing has been written."""


class TunableError(PartitionError):
    """A tunable this host's kernel cannot take (out of its knob's range, a knob the kernel lacks, a limit below
    what the partition uses): bad input, never something a later task of the same run could fix."""


# --------------------------------------------------------------------------------------------
# Names

def needs_escaping(level, subsystems):
    """virCgroupPartitionNeedsEscaping: would libvirt prefix this directory name with '_'?"""
    if level.startswith("cgroup.") or level[:1] in ("_", "."):
        return True
    return any(level.startswith(name + ".") for name in subsystems)


def escape_level(level, subsystems):
    """virCgroupPartitionEscape."""
    return "_" + level if needs_escaping(level, subsystems) else level


def cgroup_levels(name, subsystems):
    """virCgroupSetPartitionSuffix: the directory name of each level of partition ``name``."""
    parts = name.strip("/").split("/")
    result = []
    for index, part in enumerate(parts):
        if index == 0 and part in FIXED_TOP_LEVELS:
            result.append(part)
            continue
        if "." not in part:
            part += ".partition"
        result.append(escape_level(part, subsystems))
    return result


_SYSTEMD_PLAIN = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:_.")


def systemd_escape(text):
    """virSystemdEscapeName (= ``systemd-escape``): '/' → '-', the rest \\xNN-escaped as needed."""
    out = []
    for index, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif (index == 0 and char == ".") or char not in _SYSTEMD_PLAIN:
            out.extend("\\x%02x" % byte for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def systemd_unescape(text):
    """Undo \\xNN escapes (for scope names such as machine-qemu\\x2d3\\x2drt1.scope)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def slice_name(name):
    """virSystemdMakeSliceName: ``/machine/tenant/rt`` → ``machine-tenant-rt.slice``."""
    return systemd_escape(name.lstrip("/")) + ".slice"


@dataclass(frozen=True)
class PartitionName:
    """A validated partition name and everything derived from it."""

    name: str                   # as libvirt's XML spells it: /machine/tenant/rt
    parts: tuple                # ("machine", "tenant", "rt")
    dirs: tuple                 # ("machine", "tenant.partition", "rt.partition")

    @property
    def is_default(self):
        """libvirt's own /machine: it creates and removes it; only its CPUs and memory nodes are ours."""
        return self.name == DEFAULT_PARTITION

    @property
    def cgroup_path(self):
        """Relative to a hierarchy's root: machine/tenant.partition/rt.partition."""
        return "/".join(self.dirs)

    @property
    def levels(self):
        """The cgroup path of every level, top first: machine, machine/tenant.partition, ..."""
        return ["/".join(self.dirs[:index]) for index in range(1, len(self.dirs) + 1)]

    @property
    def parent_path(self):
        return "/".join(self.dirs[:-1])

    @property
    def slices(self):
        """The slice unit of every level, top first: machine.slice, machine-tenant.slice, ..."""
        return [slice_name("/".join(self.parts[:index])) for index in range(1, len(self.parts) + 1)]

    @property
    def slice(self):
        return self.slices[-1]

    @property
    def slice_path(self):
        """The slice's cgroup below the v2 root: machine.slice/machine-tenant.slice/machine-tenant-rt.slice."""
        return "/".join(self.slices)


def parse_name(name, subsystems=()):
    """Validate ``name`` and derive its directories and slice; raise PartitionNameError.

    ``subsystems``: the controller names of /proc/cgroups (libvirt escapes levels starting with them).
    """
    if not isinstance(name, str) or not name:
        raise PartitionNameError("the partition name is empty; write it as libvirt's <partition> does, "
                                 "e.g. /machine/production")
    if not name.startswith("/"):
        raise PartitionNameError("partition %r is not absolute: libvirt refuses it ('Resource partition must "
                                 "start with /'); write /machine/%s" % (name, name.strip("/")))
    if name != "/" and name.endswith("/"):
        raise PartitionNameError("partition %r ends with '/': libvirt would look for an empty last level; "
                                 "drop the trailing slash" % name)
    parts = name[1:].split("/")
    for part in parts:
        if part == "":
            raise PartitionNameError("partition %r has an empty level ('//'); libvirt would look for a "
                                     "directory with an empty name" % name)
        if part in (".", ".."):
            raise PartitionNameError("partition %r has a %r level: it would leave the partition's hierarchy" % (
                name, part))
        if not _LEVEL_CHARS.fullmatch(part):
            bad = sorted(set(c for c in part if not _LEVEL_CHARS.fullmatch(c)))
            raise PartitionNameError(
                "partition %r: level %r holds %s; use letters, digits, '_', '-', '.' and ':' only (whitespace, "
                "'\\\\', control and non-ASCII characters do not survive the domain XML, /proc/PID/cgroup and "
                "systemd unit names unchanged)" % (name, part, ", ".join(repr(c) for c in bad)))
        if ".libvirt-" in part or part.endswith((".scope", ".slice", ".service")):
            raise PartitionNameError("partition %r: level %r looks like a libvirt domain or systemd unit cgroup; "
                                     "choose another name" % (name, part))
    if parts[0] in FIXED_TOP_LEVELS and parts[0] != "machine":
        raise PartitionNameError(
            "partition %r: on systemd hosts /%s maps into systemd's own %s.slice (%s-<...>.slice names are taken "
            "by systemd and logind); name it /%s or /machine/%s" % (
                name, parts[0], parts[0], parts[0], "/".join(parts[1:]) or "rt", "/".join(parts[1:]) or "rt"))
    dirs = tuple(cgroup_levels(name, subsystems))
    pname = PartitionName(name=name, parts=tuple(parts), dirs=dirs)
    for level in dirs:
        if len(level.encode()) > _NAME_MAX:
            raise PartitionNameError("partition %r: directory %r is longer than %d bytes" % (name, level, _NAME_MAX))
    if len(pname.slice.encode()) > _NAME_MAX:
        raise PartitionNameError("partition %r: its slice unit name %s is longer than systemd's %d characters" % (
            name, pname.slice, _NAME_MAX))
    return pname


def parse_proc_cgroups(text):
    """Controller names from /proc/cgroups (first column; the header line starts with '#')."""
    return tuple(line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#"))


_DOMAIN_DIR = re.compile(r"^_?(?P<driver_prefix>[a-z]+)-(?P<id>-?\d+)-(?P<name>.+)\.libvirt-(?P<driver>[a-z]+)$")
_DOMAIN_SCOPE = re.compile(r"^machine-(?P<driver>[a-z]+)\\x2d(?P<id>\d+)\\x2d(?P<name>.+)\.scope$")


def guest_of_cgroup(dirname):
    """``qemu-3-rt1.libvirt-qemu`` → ("rt1", 3); a systemd scope ``machine-qemu\\x2d3\\x2drt1.scope`` too."""
    match = _DOMAIN_DIR.match(dirname)
    if match:
        return match.group("name"), int(match.group("id"))
    match = _DOMAIN_SCOPE.match(dirname)
    if match:
        return systemd_unescape(match.group("name")), int(match.group("id"))
    return None


# --------------------------------------------------------------------------------------------
# Hierarchies libvirt uses

@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy the partition must exist in."""

    mountpoint: str
    version: int
    controllers: tuple          # libvirt's controllers it carries for the partition ("unified" tree: may be v2-only)
    optional: bool = False      # libvirt starts a guest without it (blkio)

    @property
    def key(self):
        """The name results use: the v1 controllers joined with ',', or 'unified' for cgroup2."""
        return "unified" if self.version == 2 else ",".join(self.controllers)


def parse_qemu_conf_controllers(text):
    """The ``cgroup_controllers = [ ... ]`` list of qemu.conf, or None when it is not set."""
    clean = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    match = re.search(r"^\s*cgroup_controllers\s*=\s*\[(?P<body>[^\]]*)\]", clean, re.MULTILINE)
    if not match:
        return None
    return tuple(re.findall(r"\"([^\"]*)\"", match.group("body")))


def libvirt_hierarchies(mounts, wanted=None, v2_devices=True):
    """The hierarchies libvirt 9.0 puts a partition's guests in, and which controllers each carries.

    ``mounts``: CgroupMount-like objects (``mountpoint``, ``version``, ``controllers``); for cgroup2,
    ``controllers`` is the root's cgroup.controllers.  ``wanted``: qemu.conf ``cgroup_controllers``
    (None: all).  Returns a list of :class:`Hierarchy`, cgroup2 first.
    """
    allowed = set(LIBVIRT_CONTROLLERS if wanted is None else wanted) & set(LIBVIRT_CONTROLLERS)
    result = []
    claimed = set()
    unified = next((m for m in mounts if m.version == 2), None)
    if unified is not None:
        offered = set()
        for controller in LIBVIRT_CONTROLLERS:
            if V2_NAMES.get(controller, controller) in unified.controllers:
                offered.add(controller)
        offered.add("cpuacct")
        if v2_devices:
            offered.add("devices")
        mine = tuple(c for c in LIBVIRT_CONTROLLERS if c in offered & allowed)
        if mine:
            result.append(Hierarchy(unified.mountpoint, 2, mine))
            claimed.update(mine)
    seen = set()
    for mount in mounts:
        if mount.version != 1 or mount.mountpoint in seen:
            continue
        mine = tuple(c for c in mount.controllers if c in allowed and c not in claimed)
        if not mine:
            continue
        seen.add(mount.mountpoint)
        claimed.update(mine)
        result.append(Hierarchy(mount.mountpoint, 1, mine, optional=all(c in OPTIONAL_CONTROLLERS for c in mine)))
    return result


# --------------------------------------------------------------------------------------------
# Tunables: libvirt's schedinfo cpu_shares, memtune hard/soft/swap_hard limit, blkiotune weight

@dataclass(frozen=True)
class Tunables:
    cpu_shares: int | None = None
    memory_hard_limit: int | None = None        # bytes; -1 = unlimited
    memory_soft_limit: int | None = None
    memory_swap_hard_limit: int | None = None    # memory + swap, as libvirt's swap_hard_limit
    blkio_weight: int | None = None

    def any(self):
        values = (self.cpu_shares, self.memory_hard_limit, self.memory_soft_limit,
                  self.memory_swap_hard_limit, self.blkio_weight)
        return any(v is not None for v in values)

    def controllers(self):
        """Which of libvirt's controllers these tunables need."""
        needed = []
        if self.cpu_shares is not None:
            needed.append("cpu")
        if (self.memory_hard_limit, self.memory_soft_limit, self.memory_swap_hard_limit) != (None, None, None):
            needed.append("memory")
        if self.blkio_weight is not None:
            needed.append("blkio")
        return needed

    def only(self, controllers):
        """These tunables without those of controllers not in ``controllers`` (what one v1 hierarchy carries)."""
        keep = set(controllers)
        memory = "memory" in keep
        return Tunables(cpu_shares=self.cpu_shares if "cpu" in keep else None,
                        memory_hard_limit=self.memory_hard_limit if memory else None,
                        memory_soft_limit=self.memory_soft_limit if memory else None,
                        memory_swap_hard_limit=self.memory_swap_hard_limit if memory else None,
                        blkio_weight=self.blkio_weight if "blkio" in keep else None)


UNLIMITED = -1
_SIZE = re.compile(r"^\s*(?P<number>\d+)\s*(?P<unit>[KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(value, what):
    """Bytes from ``4G``/``512MiB``/``1048576``/``unlimited``; binary units as libvirt uses."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("%s: %d is negative; give bytes or 'unlimited'" % (what, value))
        return value
    text = str(value).strip()
    if text.lower() in ("unlimited", "max", "infinity", "-1"):
        return UNLIMITED
    match = _SIZE.match(text)
    if not match:
        raise ValueError("%s: %r is not a size; write bytes or a number with K, M, G or T (binary), or "
                         "'unlimited'" % (what, value))
    return int(match.group("number")) * _UNITS[match.group("unit").upper()]


def removal_order(paths):
    """Deepest first, then by name: the only order rmdir accepts."""
    return sorted(paths, key=lambda p: (-(p.count("/") + 1 if p else 0), p))


def partition_kind(release):
    """The cgroup v2 partition type ``exclusive`` asks for: ``isolated`` (no load balancing, no scheduler
    domain: Linux 5.15+), else ``root``."""
    return "isolated" if kernel_at_least(release, (5, 15)) else "root"


def partition_request(exclusive, release):
    """What ``exclusive`` asks of cpuset.cpus.partition: nothing (None), ``member``, or :func:`partition_kind`."""
    if exclusive is None:
        return None
    return partition_kind(release) if exclusive else "member"


DEFAULT_NOT_EXCLUSIVE = ("exclusive: %s is libvirt's default partition, where every guest without a <partition> "
                         "runs: it cannot be a cpuset partition of its own; give it the housekeeping CPUs and make "
                         "the realtime partition beside it exclusive")


# --------------------------------------------------------------------------------------------
# What a run is asked for

@dataclass(frozen=True)
class Desired:
    """libvirt_partition's options, validated and in the backends' terms."""

    pname: PartitionName
    state: str                  # present or absent
    cpus: frozenset | None
    mems: frozenset | None
    exclusive: bool | None
    tunables: Tunables
    controllers: tuple | None   # qemu.conf cgroup_controllers as given, None: from qemu.conf or all


def _cpu_set(value, what):
    if value is None:
        return None
    try:
        return frozenset(parse_cpulist(value, what=what))
    except CpuListError as exc:
        raise PartitionError(str(exc)) from None


def _size(value, what, partition):
    if value is None:
        return None
    try:
        return parse_size(value, what)
    except ValueError as exc:
        raise TunableError("partition %s: %s" % (partition, exc)) from None


def parse_desired(params, subsystems):
    """The module's ``params`` as a :class:`Desired`; raise PartitionError for what no host can take.

    ``subsystems``: the controller names of /proc/cgroups (see :func:`parse_name`).
    """
    try:
        pname = parse_name(params["name"], subsystems)
    except PartitionNameError as exc:
        raise PartitionError(str(exc)) from None
    cpus = _cpu_set(params["cpus"], "cpus")
    mems = _cpu_set(params["mems"], "mems")
    tunables = Tunables(cpu_shares=params["cpu_shares"],
                        memory_hard_limit=_size(params["memory_hard_limit"], "memory_hard_limit", pname.name),
                        memory_soft_limit=_size(params["memory_soft_limit"], "memory_soft_limit", pname.name),
                        memory_swap_hard_limit=_size(params["memory_swap_hard_limit"], "memory_swap_hard_limit",
                                                     pname.name),
                        blkio_weight=params["blkio_weight"])
    state = params["state"]
    if pname.is_default and state == "absent":
        raise PartitionError("%s is libvirt's default partition: libvirt creates it at the first guest start and "
                             "keeps every guest without a <partition> there; only its cpus and mems can be managed"
                             % pname.name)
    if state == "absent" and (cpus is not None or mems is not None or tunables.any()
                              or params["exclusive"] is not None):
        raise PartitionError("state=absent takes no cpus, mems, exclusive or tunables")
    if cpus is not None and not cpus:
        raise PartitionError("cpus is empty: a partition without CPUs cannot hold a guest")
    if mems is not None and not mems:
        raise PartitionError("mems is empty: a partition without memory nodes cannot hold a guest")
    controllers = params["controllers"]
    return Desired(pname=pname, state=state, cpus=cpus, mems=mems, exclusive=params["exclusive"], tunables=tunables,
                   controllers=None if controllers is None else tuple(controllers))


# The kernel's range of each knob (kernel/sched/core.c, block/bfq-cgroup.c, block/blk-iocost.c): cpu.shares is
# clamped silently outside it, so a value outside is refused here rather than written and read back as another.
RANGES = {
    ("cpu_shares", 1): ("cpu.shares", 2, 262144),
    ("cpu_shares", 2): ("cpu.weight", 1, 10000),
    ("blkio_weight", 1): ("blkio.bfq.weight", 1, 1000),
    ("blkio_weight", 2): ("io.weight", 1, 10000),
}


def check_ranges(tunables, version, partition=None):
    """Refuse a tunable outside its knob's range on cgroup ``version`` (v2 ranges for systemd properties too)."""
    where = "partition %s: " % partition if partition else ""
    for option in ("cpu_shares", "blkio_weight"):
        value = getattr(tunables, option)
        if value is None:
            continue
        knob, low, high = RANGES[(option, version)]
        if not low <= value <= high:
            raise TunableError("%s%s=%d is outside %s's range %d-%d on cgroup v%d%s" % (
                where, option, value, knob, low, high, version,
                " (the kernel would silently clamp it)" if knob == "cpu.shares" else ""))
