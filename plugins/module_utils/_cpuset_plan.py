# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cpuset planner: from the current tree and the requested state, an ordered list of writes.

The order is the one the kernel demands.  On cgroup v1 a CPU can only move between cgroups in
steps the kernel accepts at every point, so each knob is written in up to three passes:

1. bottom-up, deepest first: give up what the target no longer holds (keeping what a child still
   holds, and keeping the old set where emptying it would strand tasks: ENOSPC);
2. top-down, parents first: create missing cgroups and widen to the target (plus anything pass 1
   had to keep);
3. bottom-up: drop whatever pass 2 kept for the tasks' sake.

Exclusive flags are cleared bottom-up before any set changes and set top-down after all of them;
tasks are attached last.  On v2, ``+cpuset`` is enabled in ``cgroup.subtree_control`` top-down,
partitions are turned back into members bottom-up first and into roots top-down last, with
``cpuset.cpus.exclusive`` written top-down where a remote partition needs it.

Every emitted operation is then simulated on :class:`CpusetModel`; a rule the kernel would reject
fails the whole plan before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import (
    ATTACH,
    INHERITED_FLAGS_V1,
    MKDIR,
    RMDIR,
    WRITE,
    CpusetModel,
    KernelRuleError,
    Node,
    Op,
    partition_base,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_paths import (
    ancestors_of,
    depth_of,
    display_path,
    join_path,
    parent_of,
)


class PlanError(Exception):
    """The request cannot be reached; nothing has been written."""


@dataclass(frozen=True)
class Request:
    """The state wanted for one cgroup.  ``None`` means "leave as it is (or inherit when new)"."""

    path: str
    state: str = "present"
    cpus: frozenset | None = None
    mems: frozenset | None = None
    cpu_exclusive: bool | None = None
    mem_exclusive: bool | None = None
    sched_load_balance: bool | None = None
    partition: str | None = None
    procs: tuple = ()
    threads: tuple = ()


@dataclass
class Plan:
    version: int
    ops: list = field(default_factory=list)
    before: dict = field(default_factory=dict)     # path -> Node as found
    after: dict = field(default_factory=dict)      # path -> Node as the plan leaves it
    notes: list = field(default_factory=list)

    @property
    def changed(self):
        return bool(self.ops)

    def cgroups(self):
        """Per-cgroup before/after, in path order."""
        return [{"path": path,
                 "before": self.before[path].as_dict(self.version),
                 "after": self.after[path].as_dict(self.version)}
                for path in sorted(self.after)]


V1_ONLY = ("cpu_exclusive", "mem_exclusive", "sched_load_balance")


def _validate_requests(model, requests):
    by_path = {}
    for request in requests:
        previous = by_path.get(request.path)
        if previous is not None and previous != request:
            raise PlanError("cgroup %s is listed twice with different settings; merge them into one entry"
                            % display_path(request.path))
        by_path[request.path] = request
    for request in by_path.values():
        where = "cgroup %s" % display_path(request.path)
        if request.state == "absent":
            continue
        if request.cpus is not None and not request.cpus <= model.online:
            raise PlanError("%s: cpus=%s names CPUs %s that are offline or absent (online: %s)" % (
                where, format_cpulist(request.cpus), format_cpulist(request.cpus - model.online),
                format_cpulist(model.online)))
        if request.mems is not None and not request.mems <= model.memory_nodes:
            raise PlanError("%s: mems=%s names NUMA nodes %s that do not exist or have no memory (nodes: %s)" % (
                where, format_cpulist(request.mems), format_cpulist(request.mems - model.memory_nodes),
                format_cpulist(model.memory_nodes)))
        if model.version == 1 and request.partition not in (None, "member"):
            raise PlanError("%s: partition=%s needs cgroup v2; this host's cpuset hierarchy is cgroup v1 "
                            "(use cpu_exclusive and sched_load_balance there)" % (where, request.partition))
        if model.version == 2:
            for key in V1_ONLY:
                if getattr(request, key) is not None:
                    raise PlanError("%s: %s is a cgroup v1 knob; this host's cpuset hierarchy is cgroup v2 "
                                    "(use partition: root or isolated)" % (where, key))
    absent = [p for p, r in by_path.items() if r.state == "absent"]
    for path, request in by_path.items():
        if request.state == "absent":
            continue
        for gone in absent:
            if path == gone or path.startswith(gone + "/"):
                raise PlanError("cgroup %s is requested present but %s is requested absent" % (
                    display_path(path), display_path(gone)))
    return by_path


def _target_v1(model, path, request, parent_target, notes):
    current = model.node(path)

    def settle(key, what):
        wanted = getattr(request, key) if request else None
        held = getattr(current, key) if current.exists else frozenset()
        allowed = getattr(parent_target, key)
        if wanted is not None:
            if not wanted <= allowed:
                raise PlanError(
                    "cgroup %s: %s=%s is not within its parent %s (%s); on cgroup v1 a child holds only its "
                    "parent's %s: widen the parent in the same call" % (
                        display_path(path), key, format_cpulist(wanted), display_path(parent_of(path)),
                        format_cpulist(allowed) or "empty", what))
            return wanted
        if held:
            kept = held & allowed
            if not kept:
                raise PlanError(
                    "cgroup %s holds %s %s, none of which its parent %s keeps (%s): it would be left with "
                    "no %s; give it %s explicitly or remove it in the same call" % (
                        display_path(path), what, format_cpulist(held), display_path(parent_of(path)),
                        format_cpulist(allowed) or "empty", what, key))
            if kept != held:
                notes.append("narrowed %s %s from %s to %s because its parent %s narrows to %s" % (
                    display_path(path), key, format_cpulist(held), format_cpulist(kept),
                    display_path(parent_of(path)), format_cpulist(allowed)))
            return kept
        if current.exists and held != allowed:
            notes.append("filled the empty %s of %s with its parent's (%s)" % (
                key, display_path(path), format_cpulist(allowed)))
        return allowed

    def flag(key, default):
        wanted = getattr(request, key) if request else None
        if wanted is not None:
            return wanted
        return getattr(current, key) if current.exists else default

    return Node(cpus=settle("cpus", "CPUs"), mems=settle("mems", "memory nodes"),
                cpu_exclusive=flag("cpu_exclusive", False), mem_exclusive=flag("mem_exclusive", False),
                sched_load_balance=flag("sched_load_balance", True))


def _target_v2(model, path, request, has_children):
    current = model.node(path) if path else model.node("")
    if not path:
        return replace(current, subtree_cpuset=current.subtree_cpuset or has_children)
    cpus = request.cpus if request and request.cpus is not None else (current.cpus if current.exists else frozenset())
    mems = request.mems if request and request.mems is not None else (current.mems if current.exists else frozenset())
    partition = request.partition if request and request.partition is not None else \
        (partition_base(current.partition) if current.exists else "member")
    return Node(cpus=cpus, mems=mems, cpus_exclusive=current.cpus_exclusive if current.exists else frozenset(),
                partition=partition,
                subtree_cpuset=(current.subtree_cpuset if current.exists else False) or has_children)


def _targets(model, requests, notes, removed):
    """The final state of every cgroup the plan touches, parents before children."""
    present = {p: r for p, r in requests.items() if r.state == "present"}
    wanted = set(present)
    for path in present:
        wanted.update(ancestors_of(path))
    wanted.discard("")
    targets = {"": model.node("")}
    if model.version == 2:
        targets[""] = _target_v2(model, "", None, bool(wanted))
    parents_of_wanted = {parent_of(p) for p in wanted}
    queue = sorted(wanted, key=lambda p: (depth_of(p), p))
    queued = set(queue)
    index = 0
    while index < len(queue):
        path = queue[index]
        index += 1
        request = present.get(path)
        if model.version == 1:
            target = _target_v1(model, path, request, targets[parent_of(path)], notes)
            current = model.node(path)
            if current.exists and (current.cpus - target.cpus or current.mems - target.mems):
                # Children must fit inside the narrowed set: visit every existing child too.
                for child in model.children(path):
                    child_path = join_path(path, child)
                    if child_path not in queued and child_path not in removed:
                        queued.add(child_path)
                        queue.append(child_path)
                queue[index:] = sorted(queue[index:], key=lambda p: (depth_of(p), p))
        else:
            target = _target_v2(model, path, request, path in parents_of_wanted)
        targets[path] = target
    return targets


def _children_index(paths):
    index = {}
    for path in paths:
        if path:
            index.setdefault(parent_of(path), []).append(path)
    return index


def _check_exclusive_v1(model, targets, removed):
    planned_children = _children_index(targets)
    families = {}       # parent -> its children as the plan leaves them, in path order

    def family(parent):
        if parent not in families:
            planned = planned_children.get(parent, ())
            if not any(getattr(node, key) for node in [model.node(parent)] + [targets[p] for p in planned]
                       for key in INHERITED_FLAGS_V1):
                # Nothing here is exclusive, so nothing can conflict: the plan gives no child a flag,
                # and a cgroup outside the plan has one only if its parent as read has it too (the
                # kernel's rule, which the model's reads rely on as well).
                families[parent] = ([], {key: [] for key in INHERITED_FLAGS_V1})
                return families[parent]
            names = {join_path(parent, child) for child in model.children(parent)}
            members = []
            for sibling in sorted(names | set(planned)):
                if sibling in removed:
                    continue
                other = targets.get(sibling) or model.node(sibling)
                if other.exists:
                    members.append((sibling, other))
            # Per flag, the members that have it: only a pair with one of those can conflict.
            families[parent] = (members, {key: [m for m in members if getattr(m[1], key)]
                                          for key in INHERITED_FLAGS_V1})
        return families[parent]

    for path, target in targets.items():
        if not path:
            continue
        parent_path = parent_of(path)
        parent = targets.get(parent_path) or model.node(parent_path)
        for key, set_key in (("cpu_exclusive", "cpus"), ("mem_exclusive", "mems")):
            if getattr(target, key) and not getattr(parent, key):
                raise PlanError("cgroup %s: %s=true needs its parent %s to be %s as well; set it on the parent "
                                "in the same call" % (display_path(path), key, display_path(parent_of(path)), key))
            members, flagged = family(parent_path)
            for sibling, other in members if getattr(target, key) else flagged[key]:
                if sibling == path:
                    continue
                overlap = getattr(target, set_key) & getattr(other, set_key)
                if overlap:
                    raise PlanError(
                        "cgroups %s (%s %s) and %s (%s %s) overlap on %s, and %s: exclusive cpusets may not "
                        "share %s with a sibling" % (
                            display_path(path), set_key, format_cpulist(getattr(target, set_key)),
                            display_path(sibling), set_key, format_cpulist(getattr(other, set_key)),
                            format_cpulist(overlap),
                            "one of them is %s" % key, set_key))


def _removals(model, requests, migrate):
    """Ops that empty and remove the absent subtrees, deepest first."""
    ops = []
    removed = set()
    absent_roots = sorted((p for p, r in requests.items() if r.state == "absent" and model.exists(p)),
                          key=lambda p: (-depth_of(p), p))
    for root in absent_roots:
        subtree = [root] + model.descendants(root)
        removed.update(subtree)
    for root in absent_roots:
        subtree = [root] + model.descendants(root)
        destination = parent_of(root)
        while destination in removed:
            destination = parent_of(destination)
        stranded = {p: model.tasks(p) for p in subtree if model.tasks(p)}
        if stranded and not migrate:
            listing = "; ".join("%s: %s" % (display_path(p), " ".join(map(str, t))) for p, t in sorted(stranded.items()))
            raise PlanError("cannot remove %s: tasks still run inside (%s). Stop them, or set migrate: true to move "
                            "them to %s first" % (display_path(root), listing, display_path(destination)))
        for path, tasks in sorted(stranded.items()):
            for task in tasks:
                ops.append(Op(ATTACH, destination, "threads" if model.version == 1 else "procs", str(task),
                              previous=path, reason="migrate out of %s before removing it" % display_path(path)))
        for path in sorted(subtree, key=lambda p: (-depth_of(p), p)):
            ops.append(Op(RMDIR, path, reason="state=absent"))
    return ops, removed


def _set_passes(model, targets, key):
    """Pass 1/2/3 writes of one set-valued v1 knob (cpus or mems)."""
    order = sorted((p for p in targets if p), key=lambda p: (depth_of(p), p))
    planned_children = _children_index(targets)
    first = {}
    pass1, pass2, pass3 = [], [], []
    for path in reversed(order):
        current = model.node(path)
        held = getattr(current, key) if current.exists else frozenset()
        keep = held & getattr(targets[path], key)
        for child in planned_children.get(path, ()):
            keep |= first.get(child, frozenset())
        if held and not keep and model.populated(path):
            keep = held
        first[path] = keep
        if current.exists and keep != held:
            pass1.append(Op(WRITE, path, key, format_cpulist(keep), reason="narrow before the parent does"))
    second = {}
    for path in order:
        value = getattr(targets[path], key) | first[path]
        second[path] = value
        if value != first[path] or not model.node(path).exists:
            if value or model.node(path).exists:
                pass2.append(Op(WRITE, path, key, format_cpulist(value), reason="widen after the parent"))
    for path in reversed(order):
        if second[path] != getattr(targets[path], key):
            pass3.append(Op(WRITE, path, key, format_cpulist(getattr(targets[path], key)),
                            reason="release what tasks needed during the move"))
    return pass1, pass2, pass3


def _v1_ops(model, targets):
    order = sorted((p for p in targets if p), key=lambda p: (depth_of(p), p))
    flags_off, flags_on = [], []
    for path in reversed(order):
        current = model.node(path)
        for key in ("cpu_exclusive", "mem_exclusive"):
            if current.exists and getattr(current, key) and not getattr(targets[path], key):
                flags_off.append(Op(WRITE, path, key, "0", reason="clear exclusive flags children first"))
    for path in order:
        current = model.node(path)
        for key in ("cpu_exclusive", "mem_exclusive"):
            was = getattr(current, key) if current.exists else False
            if getattr(targets[path], key) and not was:
                flags_on.append(Op(WRITE, path, key, "1", reason="set exclusive flags parents first"))
        was = current.sched_load_balance if current.exists else True
        if targets[path].sched_load_balance != was:
            flags_on.append(Op(WRITE, path, "sched_load_balance", "1" if targets[path].sched_load_balance else "0"))
    cpus1, cpus2, cpus3 = _set_passes(model, targets, "cpus")
    mems1, mems2, mems3 = _set_passes(model, targets, "mems")
    # mkdir goes right before a new cgroup's first write (parents first).
    second = []
    created = set()
    writes_by_path = {}
    for op in cpus2 + mems2:
        writes_by_path.setdefault(op.path, []).append(op)
    for path in order:
        if not model.node(path).exists and path not in created:
            second.append(Op(MKDIR, path, reason="create"))
            created.add(path)
        second.extend(writes_by_path.get(path, []))
    # Within pass 1 and pass 3 keep deepest-first across both knobs.
    pass1 = sorted(cpus1 + mems1, key=lambda op: -depth_of(op.path))
    pass3 = sorted(cpus3 + mems3, key=lambda op: -depth_of(op.path))
    return flags_off + pass1 + second + pass3 + flags_on


def _v2_ops(model, targets):
    order = sorted((p for p in targets if p), key=lambda p: (depth_of(p), p))
    first, second, last = [], [], []
    for path in reversed(order):
        current = model.node(path)
        if current.exists and partition_base(current.partition) != "member" and targets[path].partition == "member":
            first.append(Op(WRITE, path, "partition", "member", reason="dissolve partitions children first"))
    root = targets[""]
    if root.subtree_cpuset and not model.node("").subtree_cpuset:
        second.append(Op(WRITE, "", "subtree_control", "+cpuset", reason="enable cpuset top-down"))
    for path in order:
        current = model.node(path)
        target = targets[path]
        if not current.exists:
            second.append(Op(MKDIR, path, reason="create"))
        if target.subtree_cpuset and not (current.exists and current.subtree_cpuset):
            second.append(Op(WRITE, path, "subtree_control", "+cpuset", reason="enable cpuset top-down"))
        for key in ("cpus", "mems"):
            held = getattr(current, key) if current.exists else frozenset()
            if getattr(target, key) != held:
                second.append(Op(WRITE, path, key, format_cpulist(getattr(target, key))))
    for path in order:
        target = targets[path]
        current = model.node(path)
        was = partition_base(current.partition) if current.exists else "member"
        if current.exists and "invalid" in current.partition:
            was = current.partition      # the kernel re-checks an invalid partition when it is written again
        if target.partition != "member" and target.partition != was:
            last.extend(_exclusive_chain(model, targets, path))
            last.append(Op(WRITE, path, "partition", target.partition, reason="form partitions parents first"))
    return first + second + last


def _exclusive_chain(model, targets, path):
    """cpuset.cpus.exclusive top-down for a remote partition (its parent is not a partition root)."""
    parent = parent_of(path)
    parent_partition = targets[parent].partition if parent in targets else model.node(parent).partition
    if not parent or partition_base(parent_partition) in ("root", "isolated"):
        return []
    if not model.source.has_feature("cpus_exclusive"):
        raise PlanError(
            "cgroup %s: partition=%s under %s, which is not a partition root, is a remote partition and needs "
            "cpuset.cpus.exclusive (Linux 6.7 or later); this kernel (%s) does not have it: make every ancestor "
            "a partition root instead" % (display_path(path), targets[path].partition, display_path(parent),
                                          model.source.kernel_release()))
    cpus = targets[path].cpus
    ops = []
    for ancestor in ancestors_of(path)[1:] + [path]:
        held = model.node(ancestor).cpus_exclusive
        if not cpus <= held:
            ops.append(Op(WRITE, ancestor, "cpus_exclusive", format_cpulist(held | cpus),
                          reason="remote partition: exclusive CPUs top-down"))
    return ops


def _attach_ops(model, requests, targets):
    ops = []
    for path, request in sorted(requests.items()):
        if request.state != "present":
            continue
        for kind, ids in (("procs", request.procs), ("threads", request.threads)):
            for task in ids:
                threads = model.source.threads_of(task) if kind == "procs" else [task]
                if not threads:
                    raise PlanError("cgroup %s: %s %s does not exist" % (
                        display_path(path), "process" if kind == "procs" else "thread", task))
                if all(model.source.cgroup_of(tid) == path for tid in threads):
                    continue
                ops.append(Op(ATTACH, path, kind, str(task), previous=model.source.cgroup_of(task) or "",
                              reason="attach after cpus and mems are set"))
    return ops


def plan(source, requests, migrate=False):
    """Plan ``requests`` (a list of :class:`Request`) against ``source``; raise PlanError if impossible."""
    model = CpusetModel(source)
    by_path = _validate_requests(model, requests)
    notes = []
    removal_ops, removed = _removals(model, by_path, migrate)
    targets = _targets(model, by_path, notes, removed)
    if model.version == 1:
        _check_exclusive_v1(model, targets, removed)
        ops = _v1_ops(model, targets)
    else:
        ops = _v2_ops(model, targets)
    ops = removal_ops + ops + _attach_ops(model, by_path, targets)

    # Simulate on a fork of the model (the tree as read, not read twice): the kernel's rules decide,
    # and every write records what it replaces.
    simulation = model.fork()
    simulated = []
    for op in ops:
        if op.kind == WRITE:
            op = replace(op, previous=simulation.node(op.path).knob_text(op.knob))
        try:
            simulation.apply(op)
        except KernelRuleError as exc:
            raise PlanError("%s (while planning to %s%s)" % (
                exc.message, op.describe(model.version), "; " + op.reason if op.reason else "")) from None
        simulated.append(op)

    result = Plan(model.version, simulated, notes=notes)
    for path in sorted(set(targets) | removed):
        if not path:
            continue
        result.before[path] = model.node(path)
        result.after[path] = simulation.node(path)
    return result
