# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cgroup hierarchies on disk: the engine's source of truth, and the collection's only write gate.

Reads are lazy (the planner asks only for what a plan needs), so converging a few cgroups in a
hierarchy of thousands reads a few files.  Every change a module makes to cgroupfs (any controller's
directories and files) and to the files beside it (systemd units) goes through one :class:`WriteGate`,
which records it; :class:`CgroupFs` and :class:`CpusetFs` are views of one hierarchy on top of it.

How bytes reach the tree is the gate's ``files``: :class:`KernelFiles` for cgroupfs, where a cgroup's
files come and go with its directory; :class:`PlainFiles` for a tree of plain files (a rehearsal
directory, a test's fake host), where they do not.  The caller picks one; nothing below guesses.
"""

from __future__ import annotations

import os
import stat
import tempfile

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import kernel_at_least
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ERRNO_RULES, KNOB_RULES
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import ABSENT, KNOBS, WRITE, Node

CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270
# The Linux release that added a v2 cpuset file, for when no cgroup shows cpuset files to probe.
FEATURE_SINCE = {"cpus_exclusive": (6, 7)}
_READ_SIZE = 65536


class CpusetPathError(ValueError):
    """A requested cgroup path that would leave the hierarchy or is not a plain directory."""


def normalize_cgroup_path(raw):
    """Validate a path relative to the hierarchy root and return it without surrounding slashes.

    Refuses absolute paths, ``..`` and ``.`` components, empty components and NUL bytes: a path
    must name a cgroup *inside* the hierarchy, spelled exactly as the kernel lists it (systemd's
    ``\\x2d`` escapes are literal backslashes in directory names and stay as they are).
    """
    if not isinstance(raw, str) or raw == "":
        raise CpusetPathError("a cgroup path must be a non-empty string relative to the hierarchy root")
    if raw.startswith("/"):
        raise CpusetPathError("cgroup path %r is absolute; give it relative to the hierarchy root "
                              "(e.g. 'machine/rt.partition')" % raw)
    if "\0" in raw or "\n" in raw:
        raise CpusetPathError("cgroup path %r contains a NUL or newline" % raw)
    trimmed = raw.rstrip("/")
    parts = trimmed.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise CpusetPathError("cgroup path %r has an empty, '.' or '..' component; it must stay inside "
                                  "the hierarchy" % raw)
    return trimmed


class KernelFiles:
    """cgroupfs as the kernel serves it, and the running kernel's own facts."""

    def __init__(self, sys_root="/sys"):
        self.sys_root = sys_root

    def write(self, target, data):
        # No O_CREAT: a missing knob must fail as the kernel says (ENOENT: the controller is not enabled).
        fd = os.open(target, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def mkdir(self, target):
        os.mkdir(target)

    def rmdir(self, target):
        os.rmdir(target)

    def online_cpus(self):
        """/sys's online CPU list, or None when it cannot be read."""
        try:
            with open(os.path.join(self.sys_root, "devices", "system", "cpu", "online")) as handle:
                return parse_cpulist(handle.read().strip())
        except (OSError, ValueError):
            return None

    def has_kernel(self, since):
        """Whether the running kernel is at least ``since`` (for files no cgroup shows yet)."""
        return kernel_at_least(os.uname().release, since)


class PlainFiles(KernelFiles):
    """A tree of plain files standing in for cgroupfs: knob files are created and truncated by a write
    (a shorter value must not leave the old one's tail) and removed with their directory (the kernel
    does that on cgroupfs).  It has no /sys and no kernel of its own: what it holds is all it knows."""

    def write(self, target, data):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def rmdir(self, target):
        for entry in os.listdir(target):
            if os.path.isfile(os.path.join(target, entry)):
                os.unlink(os.path.join(target, entry))
        os.rmdir(target)

    def online_cpus(self):
        return None

    def has_kernel(self, since):
        return None


class WriteGate:
    """Every write of a run, in order, through one ``files`` backend; ``writes`` is what the modules
    report: (file or command, value) with ``<mkdir>``, ``<rmdir>``, ``<unit file>``, ``<unlink>``,
    ``<symlink TARGET>``, ``<run>`` for what is not a value."""

    def __init__(self, files=None):
        self.files = files if files is not None else KernelFiles()
        self.writes = []

    def write(self, target, value):
        # An empty write(2) never reaches the kernel's handler; a bare newline means "empty".
        self.files.write(target, (value + "\n").encode())
        self.writes.append((target, value))

    def mkdir(self, target):
        self.files.mkdir(target)
        self.writes.append((target, "<mkdir>"))

    def rmdir(self, target):
        self.files.rmdir(target)
        self.writes.append((target, "<rmdir>"))

    def replace_file(self, target, text, mode=0o644):
        """A regular file (a unit file) replaced atomically: systemd never reads half of it."""
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(target))
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        self.writes.append((target, "<unit file>"))

    def unlink(self, target):
        os.unlink(target)
        self.writes.append((target, "<unlink>"))

    def symlink(self, target, points_to):
        """A symlink (a unit's .wants/ entry) made or replaced atomically, as ``systemctl enable`` makes it."""
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, ".%s.%d" % (os.path.basename(target), os.getpid()))
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(points_to, tmp)
        os.replace(tmp, target)
        self.writes.append((target, "<symlink %s>" % points_to))

    def remove_dir(self, target):
        """An empty directory that is not a cgroup (a .wants/ left empty)."""
        os.rmdir(target)
        self.writes.append((target, "<rmdir>"))

    def ran(self, command):
        """A command that changed the host (systemctl), recorded among the writes in its place."""
        self.writes.append((command, "<run>"))


class CgroupFs:
    """One hierarchy of any controller, at ``mountpoint``: directories and files by name, through ``gate``."""

    # What an errno means for a write here, in an operator's words (the cpuset rules are CpusetFs').
    errno_rules = {}

    def __init__(self, mountpoint, version, gate=None):
        self.mountpoint = os.path.abspath(mountpoint)
        self.version = version
        self.gate = gate if gate is not None else WriteGate()

    @property
    def writes(self):
        return self.gate.writes

    def real_path(self, path, name=None):
        full = os.path.join(self.mountpoint, path) if path else self.mountpoint
        return os.path.join(full, name) if name else full

    def exists(self, path):
        return os.path.isdir(self.real_path(path))

    def read(self, path, name):
        """The file's text without the trailing newline, or None when it does not exist."""
        return _read_at(self.real_path(path, name))

    def errno_rule(self, op, err):
        """What errno ``err`` of ``op`` means, in an operator's words, or None: the knob's own rule first."""
        rule = KNOB_RULES.get((op.knob, err)) if op.kind == WRITE else None
        if rule is None and self.errno_rules:
            rule = self.errno_rules.get(err, "the kernel refused it")
        return rule

    def describe(self, op):
        """An engine Op on this hierarchy in words, with real paths (there is no one cpuset root to be
        relative to)."""
        if op.kind == WRITE:
            return "write %r to %s" % (op.value, self.real_path(op.path, op.knob))
        return "%s %s" % (op.kind, self.real_path(op.path))

    # ---- the write gate ------------------------------------------------------------------
    def write(self, path, knob, value):
        """Write one value to one file (``knob`` is the file's name here), as one write(2)."""
        self.gate.write(self.real_path(path, self._file_of(knob)), value)

    def mkdir(self, path):
        self.gate.mkdir(self.real_path(path))

    def rmdir(self, path):
        self.gate.rmdir(self.real_path(path))

    def _file_of(self, knob):
        return knob


# cgroup v2 controllers that work in threaded subtrees (cgrp_dfl_threaded_ss_mask); every other one is a domain
# controller, to which the no internal process rule applies.
THREADED_CONTROLLERS = frozenset(("cpuset", "cpu", "perf_event", "pids"))


class CpusetFs(CgroupFs):
    """The cpuset hierarchy mounted at ``mountpoint`` (cgroup ``version`` 1 or 2); writes by engine knob."""

    errno_rules = ERRNO_RULES

    def __init__(self, mountpoint, version, features=None, gate=None):
        super().__init__(mountpoint, version, gate)
        self.knobs = KNOBS[version]
        self._features = dict(features or {})
        self._plain_dirs = set()  # directories check_no_symlink has already seen to be plain
        self._lists = {}          # knob text -> frozenset: a tree of guests repeats a few values

    # ---- source interface for CpusetModel ----------------------------------------------
    def describe(self, op):
        return op.describe(self.version)

    def check_no_symlink(self, path):
        """Refuse a path whose existing components include a symlink (cgroupfs has none)."""
        if not path:
            return
        parts = path.split("/")
        current = self.mountpoint
        start = 0
        parent = self.real_path(path.rsplit("/", 1)[0]) if len(parts) > 1 else None
        if parent in self._plain_dirs:
            # The parent of an earlier path (siblings share ancestors): only the last name is new.
            current, start = parent, len(parts) - 1
        for part in parts[start:]:
            current = current + "/" + part
            if current in self._plain_dirs:
                continue        # checked for an earlier path of this run
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISLNK(mode):
                raise CpusetPathError("cgroup path %r: %s is a symlink; refusing to follow it out of %s" % (
                    path, current, self.mountpoint))
            if not stat.S_ISDIR(mode):
                raise CpusetPathError("cgroup path %r: %s is not a directory" % (path, current))
            self._plain_dirs.add(current)

    def children(self, path):
        try:
            with os.scandir(self.real_path(path)) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def read_node(self, path, known_false=()):
        """The cgroup's knobs (``exists=False`` when there is no such cgroup); the v1 flags in
        ``known_false`` are not read and come back False."""
        knobs = self.knobs
        # One directory fd and openat() per knob: the kernel resolves the cgroup's path once, not
        # once per file; the open also answers whether the cgroup exists.
        try:
            dir_fd = os.open(self.real_path(path), os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return ABSENT

        def read(key):
            return _read_at(knobs[key], dir_fd)

        def read_list(key):
            text = read(key) or ""
            parsed = self._lists.get(text)
            if parsed is None:
                parsed = self._lists[text] = parse_cpulist(text)
            return parsed

        try:
            if self.version == 1:
                return Node(
                    cpus=read_list("cpus"),
                    mems=read_list("mems"),
                    cpu_exclusive="cpu_exclusive" not in known_false and read("cpu_exclusive") == "1",
                    mem_exclusive="mem_exclusive" not in known_false and read("mem_exclusive") == "1",
                    sched_load_balance=read("sched_load_balance") != "0",
                )
            subtree = (read("subtree_control") or "").split()
            return Node(
                cpus=read_list("cpus"),
                mems=read_list("mems"),
                cpus_exclusive=read_list("cpus_exclusive"),
                partition=read("partition") or "member",
                subtree_cpuset="cpuset" in (word.lstrip("+") for word in subtree),
                subtree_domain=any(word.lstrip("+") not in THREADED_CONTROLLERS for word in subtree),
            )
        finally:
            os.close(dir_fd)

    def tasks(self, path):
        text = self.read(path, "tasks" if self.version == 1 else "cgroup.procs") or ""
        return [int(word) for word in text.split()]

    def online_cpus(self):
        if self.version == 2:
            # The v2 root's cpuset.cpus.effective loses the CPUs its child partitions take (an
            # isolated partition on 2-3 leaves it 0-1); the online CPUs are still every CPU.
            online = self.gate.files.online_cpus()
            if online is not None:
                return online
        name = "cpuset.effective_cpus" if self.version == 1 else "cpuset.cpus.effective"
        return parse_cpulist(self.read("", name) or self.read("", "cpuset.cpus") or "")

    def memory_nodes(self):
        name = "cpuset.effective_mems" if self.version == 1 else "cpuset.mems.effective"
        return parse_cpulist(self.read("", name) or self.read("", "cpuset.mems") or "")

    def clone_children(self, path):
        return self.read(path, "cgroup.clone_children") == "1"

    def has_feature(self, name):
        if name not in self._features:
            probe = {"cpus_exclusive": "cpuset.cpus.exclusive", "partition": "cpuset.cpus.partition"}[name]
            children = self.children("")[:8]
            known = None
            if name in FEATURE_SINCE and self.version == 2 and not any(
                    os.path.exists(self.real_path(child, "cpuset.cpus")) for child in children):
                # No child has cpuset files yet (systemd enables only cpu, memory, pids in the root's
                # subtree_control): the kernel version tells instead.
                known = self.gate.files.has_kernel(FEATURE_SINCE[name])
            if known is None:
                known = any(os.path.exists(self.real_path(child, probe)) for child in children)
            self._features[name] = known
        return self._features[name]

    def threads_of(self, pid):
        """Every thread of a process (empty when it does not exist)."""
        try:
            return sorted(int(tid) for tid in os.listdir("/proc/%d/task" % int(pid)))
        except OSError:
            return []

    @staticmethod
    def kernel_release():
        return os.uname().release

    def cgroup_of(self, task):
        """The task's cgroup in this hierarchy, from /proc (for rollback of a move)."""
        try:
            with open("/proc/%d/cgroup" % task) as handle:
                for line in handle:
                    _hid, controllers, path = line.rstrip("\n").split(":", 2)
                    if (self.version == 2 and controllers == "") or "cpuset" in controllers.split(","):
                        return path.strip("/")
        except OSError:
            return None
        return None

    def _file_of(self, knob):
        return self.knobs.get(knob) or {"procs": "cgroup.procs",
                                        "threads": "tasks" if self.version == 1 else "cgroup.threads"}[knob]


def _read_at(name, dir_fd=None):
    """A small kernel file's text without surrounding whitespace, or None when it does not exist.

    os.open/os.read rather than open(): for these tiny files a buffered text file costs more than
    the kernel's own work.
    """
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        # A read that comes back short of the buffer has reached the end (kernfs' seq_file fills
        # the whole buffer while it has data; so does a regular file): no second read(2) for EOF.
        chunks = []
        while True:
            chunk = os.read(fd, _READ_SIZE)
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
    finally:
        os.close(fd)
    return b"".join(chunks).decode().strip()


def is_cgroup_mount(mountpoint):
    """Whether ``mountpoint`` is where a cgroup or cgroup2 filesystem is mounted."""
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                left, _sep, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and fields[4] == mountpoint and right.split()[0] in ("cgroup", "cgroup2"):
                    return True
    except OSError:
        return False
    return False
