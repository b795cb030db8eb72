# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cpuset hierarchy as the kernel sees it, and the rules the kernel enforces on each write.

:class:`CpusetModel` is a copy-on-read view of a hierarchy (read through a *source*: the real
cgroupfs, a fake tree, or a dict) on which operations can be *simulated*.  Every operation the
planner emits is applied to a model first; a rule the kernel would reject raises
:class:`KernelRuleError` naming the cgroup, the knob, the value, the rule and the errno the kernel
would return.  The same model backs the property tests, so "no plan makes the model reject a
write" is a statement about these rules, which follow ``kernel/cgroup/cpuset.c`` (``validate_change``,
``cpuset_can_attach``, ``update_prstate``) and ``Documentation/admin-guide/cgroup-v2.rst``.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, replace

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
# parent_of is also imported from here by _partition_systemd and the tests.
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_paths import display_path, join_path, parent_of

# Knob names per hierarchy version.  Keys are the engine's own vocabulary.
KNOBS = {
    1: {
        "cpus": "cpuset.cpus",
        "mems": "cpuset.mems",
        "cpu_exclusive": "cpuset.cpu_exclusive",
        "mem_exclusive": "cpuset.mem_exclusive",
        "sched_load_balance": "cpuset.sched_load_balance",
    },
    2: {
        "cpus": "cpuset.cpus",
        "mems": "cpuset.mems",
        "cpus_exclusive": "cpuset.cpus.exclusive",
        "partition": "cpuset.cpus.partition",
        "subtree_control": "cgroup.subtree_control",
    },
}
KNOB_NAMES = {version: {file: key for key, file in knobs.items()} for version, knobs in KNOBS.items()}
# v1 flags a cpuset can only have if its parent has them (the kernel's is_cpuset_subset: EACCES on
# setting one under a parent without it, EBUSY on clearing a parent's while a child has it).
INHERITED_FLAGS_V1 = ("cpu_exclusive", "mem_exclusive")

PARTITION_TYPES = ("member", "root", "isolated")

MKDIR = "mkdir"
RMDIR = "rmdir"
WRITE = "write"
ATTACH = "attach"


@dataclass(frozen=True)
class Op:
    """One kernel operation: create or remove a cgroup, write one knob, or move one task."""

    kind: str
    path: str                  # cgroup path relative to the hierarchy root ("" is the root)
    knob: str = ""             # WRITE: engine knob key; ATTACH: "procs" or "threads"
    value: str = ""            # WRITE: the text written; ATTACH: the PID/TID
    previous: str = ""         # WRITE: the value before (for rollback); ATTACH: the task's old cgroup
    reason: str = ""           # why the planner emitted it (shown in notes and errors)

    def describe(self, version):
        if self.kind == WRITE:
            return "write %r to %s" % (self.value, join_path(self.path, KNOBS[version][self.knob]))
        if self.kind == ATTACH:
            return "move %s %s into %s" % ("thread" if self.knob == "threads" else "process",
                                           self.value, display_path(self.path))
        return "%s %s" % (self.kind, display_path(self.path))


class KernelRuleError(Exception):
    """The kernel would refuse an operation (or has refused it)."""

    def __init__(self, path, knob, value, rule, err):
        self.path = path
        self.knob = knob
        self.value = value
        self.rule = rule
        self.errno = err
        super().__init__(self.message)

    @property
    def message(self):
        where = display_path(self.path)
        if self.knob in (MKDIR, RMDIR, ATTACH):
            what = "%s %s" % (self.knob, self.value) if self.value else self.knob
        else:
            what = "%s=%s" % (self.knob, self.value if self.value != "" else "''")
        if not self.errno:
            # The kernel takes the write and only reads back an invalid state (cpuset.cpus.partition).
            return "cgroup %s: %s is refused: %s" % (where, what, self.rule)
        return "cgroup %s: %s is refused: %s (the kernel answers %s)" % (
            where, what, self.rule, _errno.errorcode.get(self.errno, str(self.errno)))


@dataclass(frozen=True)
class Node:
    """What the engine knows of one cgroup's cpuset state."""

    exists: bool = True
    cpus: frozenset = frozenset()
    mems: frozenset = frozenset()
    cpu_exclusive: bool = False
    mem_exclusive: bool = False
    sched_load_balance: bool = True
    cpus_exclusive: frozenset = frozenset()     # v2 cpuset.cpus.exclusive
    partition: str = "member"                  # v2; "root invalid (...)" etc. as read back
    subtree_cpuset: bool = False               # v2: "cpuset" enabled in cgroup.subtree_control
    subtree_domain: bool = False               # v2: a domain controller (memory, io, ...) enabled there too

    def knob_text(self, key):
        if key == "subtree_control":
            return "+cpuset" if self.subtree_cpuset else "-cpuset"
        value = getattr(self, key)
        if key in ("cpus", "mems", "cpus_exclusive"):
            return format_cpulist(value)
        if key == "partition":
            # "isolated invalid (...)" is what the kernel reads back, not what it takes: writing
            # "isolated" back restores the same (invalid) state.
            return partition_base(value)
        if isinstance(value, bool):
            return "1" if value else "0"
        return value

    def as_dict(self, version):
        if not self.exists:
            return {"exists": False}
        keys = ("cpus", "mems", "cpu_exclusive", "mem_exclusive", "sched_load_balance") if version == 1 \
            else ("cpus", "mems", "cpus_exclusive", "partition")
        result = {"exists": True}
        for key in keys:
            value = getattr(self, key)
            result[key] = format_cpulist(value) if isinstance(value, frozenset) else value
        return result


ABSENT = Node(exists=False)


def partition_base(value):
    """'root invalid (Parent is not a partition root)' → 'root'."""
    return (value or "member").split()[0]


class CpusetModel:
    """A simulated cpuset hierarchy, read lazily from ``source`` and changed only in memory.

    ``source`` offers: ``version`` (1 or 2), ``online_cpus()``, ``memory_nodes()``,
    ``exists(path)``, ``children(path)``, ``read_node(path, known_false=()) -> Node`` (with
    ``exists=False`` when there is no such cgroup), ``tasks(path) -> list`` (TIDs on v1, PIDs on
    v2), ``has_feature(name)``.  ``known_false`` names v1 flags the model already knows are 0 (the
    parent does not have them); a source may leave them unread and report them False.
    """

    def __init__(self, source):
        self.source = source
        self.version = source.version
        self._nodes = {}
        self._found = {}          # path -> Node as read from the source (never simulated)
        self._children = {}
        self._tasks = {}
        self.online = frozenset(source.online_cpus())
        self.memory_nodes = frozenset(source.memory_nodes())

    def fork(self):
        """A model that starts from everything this one has read, without reading it again.

        The planner reads the tree once and simulates its plan on a fork: the fork's changes stay
        in the fork, and the source is read only for what neither has seen yet.
        """
        twin = object.__new__(CpusetModel)
        twin.source = self.source
        twin.version = self.version
        twin.online = self.online
        twin.memory_nodes = self.memory_nodes
        twin._nodes = dict(self._nodes)                      # Node is frozen: sharing is safe
        twin._found = dict(self._found)
        twin._children = {path: set(names) for path, names in self._children.items()}
        twin._tasks = {path: list(tasks) for path, tasks in self._tasks.items()}
        return twin

    # ---- reading -------------------------------------------------------------------------
    def node(self, path):
        if path not in self._nodes:
            self._nodes[path] = self._read(path)
        return self._nodes[path]

    def _read(self, path):
        found = self._found.get(path)
        if found is None:
            if path == "":
                found = self._root_node()
            else:
                found = self.source.read_node(path, self._known_false(path))
                if not found.exists:
                    found = ABSENT
            self._found[path] = found
        return found

    def _known_false(self, path):
        """v1 flags the cgroup cannot have because its parent, as read, does not: not worth a read.

        Judged on the parent as found on disk, not as simulated: the kernel's invariant holds there.
        """
        if self.version != 1:
            return ()
        parent = self._read(parent_of(path))
        return tuple(key for key in INHERITED_FLAGS_V1 if not getattr(parent, key))

    def _root_node(self):
        root = self.source.read_node("")
        # The root cpuset always spans every online CPU and memory node and counts as exclusive
        # (v1) or as a partition root (v2); its files are read-only or absent.
        return replace(root, exists=True, cpus=self.online, mems=self.memory_nodes,
                       cpu_exclusive=True, mem_exclusive=True, partition="root")

    def exists(self, path):
        return self.node(path).exists

    def children(self, path):
        if path not in self._children:
            names = self.source.children(path) if self.node(path).exists else []
            self._children[path] = set(names)
        return sorted(self._children[path])

    def tasks(self, path):
        if path not in self._tasks:
            self._tasks[path] = list(self.source.tasks(path)) if self.node(path).exists else []
        return self._tasks[path]

    def populated(self, path):
        """Tasks in the cgroup or anywhere below it."""
        if self.tasks(path):
            return True
        return any(self.populated(join_path(path, child)) for child in self.children(path))

    def descendants(self, path):
        """Every existing descendant, parents before children."""
        result = []
        stack = [join_path(path, c) for c in reversed(self.children(path))]
        while stack:
            current = stack.pop()
            result.append(current)
            stack.extend(join_path(current, c) for c in reversed(self.children(current)))
        return result

    def siblings(self, path):
        parent = parent_of(path)
        name = path.rsplit("/", 1)[-1]
        return [join_path(parent, c) for c in self.children(parent) if c != name]

    def is_partition(self, path):
        """v2: a valid partition root (the root cgroup always is)."""
        if path == "":
            return True
        node = self.node(path)
        return node.exists and partition_base(node.partition) in ("root", "isolated") and \
            "invalid" not in node.partition

    def partition_cpus(self, path):
        """v2: the CPUs a valid partition takes for itself (cpuset.cpus.exclusive, else cpuset.cpus)."""
        node = self.node(path)
        return (node.cpus_exclusive or node.cpus) & self.online

    def taken_cpus(self, path, excluding=None):
        """v2: the CPUs the partitions below ``path`` take out of its effective set.

        A local partition (a direct child) and a remote one (below member cgroups, 6.7+) both leave
        every cgroup between it and its nearest partition ancestor; a partition's own sub-partitions
        take their CPUs out of that partition, not out of ``path``.  ``excluding`` is left out, as
        if it were a member (to judge a partition write on the state without it).
        """
        taken = frozenset()
        stack = [join_path(path, child) for child in self.children(path)]
        while stack:
            current = stack.pop()
            if current != excluding and self.is_partition(current):
                taken |= self.partition_cpus(current)
                continue
            stack.extend(join_path(current, child) for child in self.children(current))
        return taken

    def effective_cpus(self, path, excluding=None):
        """v2 ``cpuset.cpus.effective``: requested ∩ parent's effective (the parent's when that is empty),
        or a valid partition's own CPUs; minus what the partitions below it take."""
        if path == "":
            held = self.online
        elif path != excluding and self.is_partition(path):
            held = self.partition_cpus(path)
        else:
            parent = self.effective_cpus(parent_of(path), excluding)
            held = (self.node(path).cpus & parent) or parent
        return held - self.taken_cpus(path, excluding)

    def effective_mems(self, path):
        if path == "":
            return self.memory_nodes
        parent = self.effective_mems(parent_of(path))
        own = self.node(path).mems & parent
        return own or parent

    def cpuset_enabled(self, path):
        """v2: whether the cgroup has cpuset files (its parent enables cpuset for children)."""
        return path == "" or self.node(parent_of(path)).subtree_cpuset

    # ---- simulating ----------------------------------------------------------------------
    def apply(self, op):
        """Apply ``op`` to the model, or raise :class:`KernelRuleError` as the kernel would."""
        handler = {MKDIR: self._mkdir, RMDIR: self._rmdir, WRITE: self._write, ATTACH: self._attach}[op.kind]
        handler(op)

    def _refuse(self, op, rule, err):
        knob = KNOBS[self.version].get(op.knob, op.knob) if op.kind == WRITE else op.kind
        raise KernelRuleError(op.path, knob, op.value, rule, err)

    def _mkdir(self, op):
        parent = parent_of(op.path)
        if not op.path:
            self._refuse(op, "the root cgroup always exists", _errno.EEXIST)
        if not self.exists(parent):
            self._refuse(op, "its parent %s does not exist" % display_path(parent), _errno.ENOENT)
        if self.exists(op.path):
            self._refuse(op, "it already exists", _errno.EEXIST)
        new = Node()
        if self.version == 1 and self.source.clone_children(parent):
            parent_node = self.node(parent)
            new = replace(new, cpus=parent_node.cpus, mems=parent_node.mems)
        self._nodes[op.path] = new
        self._children[op.path] = set()
        self._tasks[op.path] = []
        self.children(parent)
        self._children[parent].add(op.path.rsplit("/", 1)[-1])

    def _rmdir(self, op):
        if not self.exists(op.path):
            self._refuse(op, "it does not exist", _errno.ENOENT)
        if self.children(op.path):
            self._refuse(op, "it still has child cgroups %s" % ", ".join(self.children(op.path)), _errno.EBUSY)
        if self.tasks(op.path):
            self._refuse(op, "it still holds tasks %s" % " ".join(map(str, self.tasks(op.path))), _errno.EBUSY)
        self.children(parent_of(op.path))
        self._nodes[op.path] = ABSENT
        self._children.pop(op.path, None)
        self._tasks.pop(op.path, None)
        self._children[parent_of(op.path)].discard(op.path.rsplit("/", 1)[-1])

    def _attach(self, op):
        node = self.node(op.path)
        if not node.exists:
            self._refuse(op, "it does not exist", _errno.ENOENT)
        if self.version == 1:
            if not node.cpus or not node.mems:
                empty = "cpuset.cpus" if not node.cpus else "cpuset.mems"
                self._refuse(op, "%s is empty, and a task needs CPUs and memory nodes to run on "
                                 "(set cpus and mems before attaching tasks)" % empty, _errno.ENOSPC)
        else:
            self._attach_v2(op, node)
        task = int(op.value)
        if op.previous:
            self.tasks(op.previous)      # load where it comes from, so it leaves there
        for path, tasks in self._tasks.items():
            if task in tasks:
                tasks.remove(task)
        self.tasks(op.path).append(task)

    def _attach_v2(self, op, node):
        """cgroup v2's placement rules (kernel/cgroup/cgroup.c: cgroup_migrate_vet_dst, cgroup_attach_permissions).

        The root is mixable. Elsewhere a cgroup that hands controllers to children may hold processes only while
        those are threaded controllers (cpuset, cpu, pids, perf_event) and no child subtree holds a process: it
        could still become a thread root. Threads move one by one only inside one threaded domain, and every
        cgroup this model knows is a domain of its own.
        """
        self._require_valid_domain_v2(op)
        if op.path and (node.subtree_cpuset or node.subtree_domain):
            if node.subtree_domain:
                self._refuse(op, "it enables domain controllers for its children in cgroup.subtree_control, and a "
                                 "cgroup that distributes resources may hold no process of its own (the no internal "
                                 "process rule): attach to a leaf below it", _errno.EBUSY)
            populated = [c for c in self.children(op.path) if self.populated(join_path(op.path, c))]
            if populated:
                self._refuse(op, "it enables cpuset for its children and its child %s holds processes; a cgroup "
                                 "with populated children may hold no process of its own (the no internal process "
                                 "rule): attach to a leaf" % display_path(join_path(op.path, populated[0])),
                             _errno.EBUSY)
        # cgroup_attach_permissions: the destination's rules (cgroup_migrate_vet_dst) come before the thread's.
        if op.knob == "threads" and op.previous is not None and op.previous.strip("/") != op.path:
            self._refuse(op, "a single thread can move only inside its threaded subtree, and %s and %s are "
                             "separate domain cgroups: move the whole process (cgroup.procs)" % (
                                 display_path(op.previous.strip("/")), display_path(op.path)), _errno.EOPNOTSUPP)
        if not self.effective_cpus(op.path):
            self._refuse(op, "its effective CPU set is empty", _errno.ENOSPC)

    def thread_root_above(self, path):
        """The nearest cgroup above ``path`` that has become a thread root, or None: one (not the root, which is
        mixable) with processes of its own while it hands a threaded controller (cpuset) to its children. Below
        it every cgroup is "domain invalid" (cgroup_is_valid_domain) until it is made threaded."""
        while path:
            path = parent_of(path)
            if path and self.node(path).subtree_cpuset and self.tasks(path):
                return path
        return None

    def _require_valid_domain_v2(self, op):
        root = self.thread_root_above(op.path)
        if root is not None:
            self._refuse(op, "its ancestor %s holds processes of its own and enables cpuset for its children, which "
                             "makes it a thread root and this cgroup an invalid domain (cgroup.type 'domain "
                             "invalid'): move those processes to a leaf first" % display_path(root),
                         _errno.EOPNOTSUPP)

    def _write(self, op):
        if not self.exists(op.path):
            self._refuse(op, "the cgroup does not exist", _errno.ENOENT)
        handler = getattr(self, "_write_%s_v%d" % (op.knob, self.version), None)
        if handler is None:
            self._refuse(op, "%s is not a cgroup v%d knob" % (op.knob, self.version), _errno.EINVAL)
        handler(op)

    def _parse(self, op, limit_to, what):
        try:
            value = parse_cpulist(op.value, what=what)
        except CpuListError as exc:
            self._refuse(op, str(exc), _errno.EINVAL)
        if not value <= limit_to:
            self._refuse(op, "%s %s do not exist or are offline (this host has %s)" % (
                what, format_cpulist(value - limit_to), format_cpulist(limit_to)), _errno.EINVAL)
        return value

    def _set(self, path, **changes):
        self._nodes[path] = replace(self.node(path), **changes)

    # -- v1 --
    def _write_cpus_v1(self, op):
        self._write_set_v1(op, "cpus", "cpu_exclusive", self.online, "CPUs")

    def _write_mems_v1(self, op):
        self._write_set_v1(op, "mems", "mem_exclusive", self.memory_nodes, "memory nodes")

    def _write_set_v1(self, op, key, exclusive_key, universe, what):
        if op.path == "":
            self._refuse(op, "the root cpuset always spans all %s and is read-only" % what, _errno.EACCES)
        value = self._parse(op, universe, what)
        node = self.node(op.path)
        parent_path = parent_of(op.path)
        parent = self.node(parent_path)
        outside = value - getattr(parent, key)
        if outside:
            self._refuse(op, "%s %s are not in the parent %s (%s); on cgroup v1 a child may only hold "
                             "its parent's %s, so widen the parent first" % (
                                 what, format_cpulist(outside), display_path(parent_path),
                                 format_cpulist(getattr(parent, key)) or "empty", what), _errno.EACCES)
        for child in self.children(op.path):
            child_path = join_path(op.path, child)
            held = getattr(self.node(child_path), key) - value
            if held:
                self._refuse(op, "its child %s still holds %s %s; narrow the child first" % (
                    display_path(child_path), what, format_cpulist(held)), _errno.EBUSY)
        if not value and self.populated(op.path):
            self._refuse(op, "the cgroup has tasks, and a cpuset with tasks cannot be emptied", _errno.ENOSPC)
        for sibling in self.siblings(op.path):
            other = self.node(sibling)
            overlap = value & getattr(other, key)
            if overlap and (getattr(node, exclusive_key) or getattr(other, exclusive_key)):
                self._refuse(op, "%s %s overlap the sibling %s and one of the two is %s" % (
                    what, format_cpulist(overlap), display_path(sibling), KNOBS[1][exclusive_key]), _errno.EINVAL)
        self._set(op.path, **{key: value})

    def _write_flag(self, op):
        if op.value not in ("0", "1"):
            self._refuse(op, "the value must be 0 or 1", _errno.EINVAL)
        return op.value == "1"

    def _write_exclusive_v1(self, op, key, set_key, what):
        flag = self._write_flag(op)
        if op.path == "":
            self._refuse(op, "the root cpuset's flags are read-only", _errno.EACCES)
        node = self.node(op.path)
        parent_path = parent_of(op.path)
        if flag:
            if not getattr(self.node(parent_path), key):
                self._refuse(op, "the parent %s is not %s; a cpuset can only be exclusive if its parent is" % (
                    display_path(parent_path), KNOBS[1][key]), _errno.EACCES)
            for sibling in self.siblings(op.path):
                overlap = getattr(node, set_key) & getattr(self.node(sibling), set_key)
                if overlap:
                    self._refuse(op, "its %s %s overlap the sibling %s; exclusive siblings may not overlap" % (
                        what, format_cpulist(overlap), display_path(sibling)), _errno.EINVAL)
        else:
            for child in self.children(op.path):
                if getattr(self.node(join_path(op.path, child)), key):
                    self._refuse(op, "its child %s is still %s; clear the child's flag first" % (
                        display_path(join_path(op.path, child)), KNOBS[1][key]), _errno.EBUSY)
        self._set(op.path, **{key: flag})

    def _write_cpu_exclusive_v1(self, op):
        self._write_exclusive_v1(op, "cpu_exclusive", "cpus", "CPUs")

    def _write_mem_exclusive_v1(self, op):
        self._write_exclusive_v1(op, "mem_exclusive", "mems", "memory nodes")

    def _write_sched_load_balance_v1(self, op):
        self._set(op.path, sched_load_balance=self._write_flag(op))

    # -- v2 --
    def _require_cpuset_v2(self, op):
        if op.path and not self.cpuset_enabled(op.path):
            self._refuse(op, "the cpuset controller is not enabled for it: add +cpuset to %s/cgroup.subtree_control "
                             "first" % display_path(parent_of(op.path)), _errno.ENOENT)

    def _write_cpus_v2(self, op):
        self._require_cpuset_v2(op)
        value = self._parse(op, self.online, "CPUs")
        self._keep_populated_nonempty_v2(op, "cpus", value)
        self._check_siblings_v2(op, value, self.node(op.path).cpus_exclusive)
        self._set(op.path, cpus=value)

    def _keep_populated_nonempty_v2(self, op, key, value):
        # validate_change holds v2 to this too, although an empty list there means "the parent's": a populated
        # cgroup's list, once set, cannot be emptied again.
        if not value and getattr(self.node(op.path), key) and self.populated(op.path):
            self._refuse(op, "it (or a cgroup below it) holds tasks, and a populated cpuset's %s cannot be emptied "
                             "once set" % KNOBS[2][key], _errno.ENOSPC)

    def _valid_partition(self, path):
        node = self.node(path)
        return partition_base(node.partition) in ("root", "isolated") and "invalid" not in node.partition

    def _check_siblings_v2(self, op, cpus, exclusive, writing_exclusive=False):
        """validate_change's sibling rule for a cgroup that is to hold ``cpus`` and ``exclusive``
        (kernel/cgroup/cpuset.c, 6.7 and later; before 6.7 only its first case exists).

        Where either side is a valid partition, or both have cpuset.cpus.exclusive, their exclusive CPUs
        (cpuset.cpus.exclusive, else cpuset.cpus) may not overlap. Otherwise siblings may overlap, but new
        exclusive CPUs may not swallow a sibling's whole cpuset.cpus (it would be left none). Seen on 6.12: that
        holds only for the cpuset.cpus.exclusive write; cpuset.cpus lying wholly inside a sibling's exclusive
        CPUs is taken."""
        mine_partition = self._valid_partition(op.path)
        for sibling in self.siblings(op.path):
            other = self.node(sibling)
            other_partition = self._valid_partition(sibling)
            if mine_partition or other_partition or (exclusive and other.cpus_exclusive):
                overlap = (exclusive or cpus) & (other.cpus_exclusive or other.cpus)
                if overlap:
                    self._refuse(op, ("CPUs %s belong to the sibling partition %s" if other_partition else
                                      "CPUs %s are also in the sibling %s, and a partition's CPUs are its own"
                                      if mine_partition else "CPUs %s are exclusive to the sibling %s as well") % (
                                          format_cpulist(overlap), display_path(sibling)), _errno.EINVAL)
            elif writing_exclusive and exclusive and other.cpus and other.cpus <= exclusive:
                self._refuse(op, "the sibling %s has cpuset.cpus %s, all of them within these exclusive CPUs, and "
                                 "would be left none" % (display_path(sibling), format_cpulist(other.cpus)),
                             _errno.EINVAL)

    def _write_mems_v2(self, op):
        self._require_cpuset_v2(op)
        value = self._parse(op, self.memory_nodes, "memory nodes")
        self._keep_populated_nonempty_v2(op, "mems", value)
        self._set(op.path, mems=value)

    def _write_cpus_exclusive_v2(self, op):
        self._require_cpuset_v2(op)
        if not self.source.has_feature("cpus_exclusive"):
            self._refuse(op, "this kernel has no cpuset.cpus.exclusive (Linux 6.7 or later)", _errno.ENOENT)
        value = self._parse(op, self.online, "CPUs")
        # No subset rule against the parent here: the kernel takes any list and intersects it with the parent's
        # exclusive.effective (seen on 6.12); a remote partition is valid only once the parents hold the CPUs,
        # which is why the planner still writes cpuset.cpus.exclusive top-down.
        self._check_siblings_v2(op, self.node(op.path).cpus, value, writing_exclusive=True)
        # Nor against the children: 6.12 takes a parent's list narrowed below a child's cpuset.cpus.exclusive (the
        # child's exclusive.effective shrinks with it), seen by the v2 differential test.
        self._set(op.path, cpus_exclusive=value)

    def _write_subtree_control_v2(self, op):
        words = op.value.split()
        for word in words:
            if word[:1] not in "+-" or word[1:] != "cpuset":
                self._refuse(op, "the engine only manages +cpuset/-cpuset here", _errno.EINVAL)
        enable = words[-1].startswith("+")
        if enable:
            self._require_valid_domain_v2(op)
        if enable and not self.cpuset_enabled(op.path):
            self._refuse(op, "cpuset is not available in it: enable it in the parent %s first (top-down)" %
                         display_path(parent_of(op.path)), _errno.ENOENT)
        node = self.node(op.path)
        populated = [c for c in self.children(op.path) if self.populated(join_path(op.path, c))]
        if enable and op.path and not node.subtree_cpuset and self.tasks(op.path) and \
                (node.subtree_domain or populated):
            # cgroup_vet_subtree_control_enable: cpuset is a threaded controller, allowed beside the cgroup's own
            # processes while the cgroup could still become a thread root (no domain controller enabled, no
            # populated child); otherwise children would compete with those processes.
            self._refuse(op, "it holds processes %s of its own and %s, and such a cgroup may not enable controllers "
                             "for children (the no internal process rule): move them to a leaf first" % (
                                 " ".join(map(str, self.tasks(op.path))),
                                 "enables domain controllers" if node.subtree_domain else
                                 "its child %s holds processes" % display_path(join_path(op.path, populated[0]))),
                         _errno.EBUSY)
        if not enable:
            for child in self.children(op.path):
                if self.node(join_path(op.path, child)).subtree_cpuset:
                    self._refuse(op, "its child %s still enables cpuset below itself" %
                                 display_path(join_path(op.path, child)), _errno.EBUSY)
        self._set(op.path, subtree_cpuset=enable)

    def predict_partition(self, path, kind):
        """Why the kernel would mark ``path`` an invalid ``kind`` partition now, or None if valid.

        The reasons are the kernel's own wording where it has one (``cpuset.cpus.partition`` reads
        back ``root invalid (<reason>)``).
        """
        node = self.node(path)
        parent_path = parent_of(path)
        parent = self.node(parent_path)
        parent_is_partition = partition_base(parent.partition) in ("root", "isolated") and \
            "invalid" not in parent.partition
        mine = node.cpus_exclusive or node.cpus
        if not mine:
            return "cpuset.cpus and cpuset.cpus.exclusive are empty"
        if not parent_is_partition and not node.cpus_exclusive:
            return "Parent is not a partition root"
        if not parent_is_partition:
            # A remote partition takes only CPUs every cgroup between it and a partition above passes down
            # (remote_partition_enable: cpuset.cpus.exclusive within the parent's effective exclusive CPUs).
            passed = node.cpus_exclusive & self._passed_down_exclusive(parent_path)
            if not passed:
                return ("Invalid cpu list in cpuset.cpus.exclusive: CPUs %s are not passed down by %s (set them in "
                        "its cpuset.cpus.exclusive, and so on up to a partition)" % (
                            format_cpulist(node.cpus_exclusive), display_path(parent_path)))
        for sibling in self.siblings(path):
            other = self.node(sibling)
            if mine & (other.cpus_exclusive or other.cpus):
                return "Cpu list in cpuset.cpus not exclusive"
        # What the parent can still give: its effective CPUs with this cgroup counted as a member
        # (the kernel's parent->effective_cpus while the partition is being formed).
        parent_effective = self.effective_cpus(parent_path, excluding=path)
        if parent_is_partition and not node.cpus_exclusive and not mine & parent_effective:
            return ("Invalid cpu list in cpuset.cpus: CPUs %s are not in the parent (%s)'s effective CPUs (%s); "
                    "another partition holds them" % (format_cpulist(mine), display_path(parent_path),
                                                      format_cpulist(parent_effective) or "empty"))
        if parent_is_partition and mine >= parent_effective and self.populated_outside(parent_path, path):
            return ("Parent unable to distribute cpu downstream: the parent (%s) would be left with no CPU for its "
                    "own tasks (its effective CPUs %s are the last ones)" % (
                        display_path(parent_path), format_cpulist(parent_effective) or "none"))
        return None

    def _passed_down_exclusive(self, path):
        """The CPUs ``path`` can hand to a remote partition below it: a valid partition's own (the root's: all),
        a member's cpuset.cpus.exclusive within what its parent passes down, else none."""
        node = self.node(path)
        if path == "":
            return self.online
        if partition_base(node.partition) in ("root", "isolated") and "invalid" not in node.partition:
            return self.partition_cpus(path)
        if not node.cpus_exclusive:
            return frozenset()
        return node.cpus_exclusive & self._passed_down_exclusive(parent_of(path))

    def populated_outside(self, path, excluding):
        """Tasks that would stay on ``path``'s effective CPUs: its own (the root cgroup always has kernel
        threads) or any in a member child's subtree other than ``excluding`` (the kernel's
        ``partition_is_populated``)."""
        if path == "" or self.tasks(path):
            return True
        for child in self.children(path):
            child_path = join_path(path, child)
            if child_path != excluding and not self.is_partition(child_path) and self.populated(child_path):
                return True
        return False

    def _write_partition_v2(self, op):
        self._require_cpuset_v2(op)
        if op.value not in PARTITION_TYPES:
            self._refuse(op, "partition must be one of %s" % ", ".join(PARTITION_TYPES), _errno.EINVAL)
        if op.value == "member":
            for child in self.children(op.path):
                if partition_base(self.node(join_path(op.path, child)).partition) != "member":
                    self._refuse(op, "its child %s is still a partition; turn the child back to member first" %
                                 display_path(join_path(op.path, child)), _errno.EBUSY)
            self._set(op.path, partition="member")
            return
        reason = self.predict_partition(op.path, op.value)
        if reason:
            self._refuse(op, "the kernel would take the write and mark it '%s invalid (%s)'" % (op.value, reason), 0)
        self._set(op.path, partition=op.value)
