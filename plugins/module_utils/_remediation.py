# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is broken on a libvirt host's cgroup layout, and how to repair it. Pure: the caller reads the host.

Input (plain data):
  cpuset: {cgroup path below the cpuset root, e.g. "machine/rt.partition": {"cpus": "1", "mems": "0"}} (v1)
  present: {hierarchy name: set of cgroup paths in "machine" and the partitions' top directories} for every
           hierarchy libvirt uses
  partitions: {partition name: [defined guests naming it]}
  partition_dirs: {partition name: "machine/rt.partition"}
  running: set of running guest names
  violations: cpu_isolation_facts violations
Every finding: {kind, target, message, fix} where ``fix`` says what the role does about it (None: report only).
"""

from __future__ import annotations

import re

GUEST_DIR = re.compile(r"^qemu-(?P<id>\d+)-(?P<name>.+)\.libvirt-qemu$")


# What each kind of entry must hold, as strings: violations come from cpu_isolation_facts, previous from an earlier
# run of remediation_findings; a hand-written or truncated entry is refused before it is read.
_VIOLATION_KEYS = ("kind", "offender", "message")
_DRIFT_KEYS = ("guest", "xml")
_FINDING_KEYS = ("kind", "target", "message")


def entries_problem(violations, previous):
    """The first entry of ``violations`` or ``previous`` that is not a dict holding its keys as strings, in words
    (None: all are)."""
    lists = (("violations", violations or [], _VIOLATION_KEYS, "cpu_isolation_facts' violations"),
             ("previous", previous or [], _FINDING_KEYS, "the findings of an earlier run"))
    for name, entries, keys, source in lists:
        for index, entry in enumerate(entries):
            wanted = keys
            if name == "violations" and entry.get("kind") == "pinning_drift" \
                    and entry.get("role") in ("vcpu", "emulator"):
                wanted = keys + _DRIFT_KEYS
            missing = [key for key in wanted if not isinstance(entry.get(key), str)]
            if missing:
                return ("%s[%d] has no %s string (it has %s): each entry must be one of %s, with %s"
                        % (name, index, " or ".join(repr(k) for k in missing),
                           ", ".join(sorted(repr(str(k)) for k in entry)) or "no keys", source, ", ".join(wanted)))
    return None


def _is_guest_path(path):
    return any(GUEST_DIR.match(part) for part in path.split("/"))


def guest_of(path):
    """(top guest cgroup path, guest name) of a path inside a guest cgroup, else None."""
    parts = path.strip("/").split("/")
    for index, part in enumerate(parts):
        match = GUEST_DIR.match(part)
        if match:
            return "/".join(parts[:index + 1]), match.group("name")
    return None


def findings(cpuset, present, partitions, partition_dirs, running, violations, realtime_dirs=()):
    """``realtime_dirs``: cgroup paths of the realtime partitions (an empty cpuset inside one is refilled from its
    parent; any other from the housekeeping CPUs, so that the repair does not put it on isolated CPUs)."""
    result = []
    # 1. empty cpus/mems in machine or a partition (a guest put there fails with ENOSPC); the caller reads
    # only those trees
    for path in sorted(cpuset):
        if _is_guest_path(path):
            continue
        empty = [k for k in ("cpus", "mems") if not (cpuset[path].get(k) or "").strip()]
        if empty:
            result.append({
                "kind": "empty_cpuset", "target": path,
                "message": ("cpuset %s has empty %s: a guest started there fails with 'No space left on device'"
                            % (path, " and ".join(empty))),
                "fix": {"module": "cgroup_cpuset", "path": path,
                        "housekeeping": not any(path == d or path.startswith(d + "/") for d in realtime_dirs)},
            })
    # 2. partitions of defined guests missing somewhere
    for name in sorted(partitions):
        directory = partition_dirs[name]
        missing = sorted(h for h, paths in present.items() if directory not in paths)
        if missing:
            result.append({
                "kind": "missing_partition", "target": name,
                "message": "partition %s of guest(s) %s is missing in %s: the guests cannot start"
                           % (name, ", ".join(sorted(partitions[name])), ", ".join(missing)),
                "fix": {"module": "libvirt_partition", "name": name},
            })
    # 3. leftover guest cgroups
    leftovers = {}
    for hierarchy, paths in present.items():
        for path in paths:
            top = guest_of(path)
            if top and top[1] not in running:
                leftovers.setdefault(top[0], {"guest": top[1], "hierarchies": set()})["hierarchies"].add(hierarchy)
    for path in sorted(leftovers):
        info = leftovers[path]
        result.append({
            "kind": "leftover_guest_cgroup", "target": path,
            "message": "cgroup %s of guest %s, which does not run, is left in %s"
                       % (path, info["guest"], ", ".join(sorted(info["hierarchies"]))),
            "fix": {"module": "cgroup_cpuset", "path": path, "hierarchies": sorted(info["hierarchies"])},
        })
    # 4. isolation violations
    for violation in violations:
        kind = violation.get("kind")
        if kind == "cgroup_cpuset":
            path = violation["offender"].lstrip("/")
            top = guest_of(path)
            if top and top[0] in leftovers:
                continue  # removed with the leftover
            result.append({
                "kind": "cgroup_on_isolated", "target": path, "message": violation["message"],
                "fix": {"module": "cgroup_cpuset", "path": path, "narrow": True},
            })
        elif kind == "pinning_drift":
            role = violation.get("role")
            fix = None
            if role in ("vcpu", "emulator"):
                fix = {"module": "virsh", "guest": violation["guest"], "role": role, "id": violation.get("id"),
                       "cpus": violation["xml"]}
            result.append({"kind": "pinning_drift", "target": violation["offender"], "message": violation["message"],
                           "fix": fix})
        elif kind in ("irq_affinity", "irq_default_affinity"):
            movable = violation.get("changeable") is not False
            result.append({"kind": kind, "target": violation["offender"], "message": violation["message"],
                           "fix": {"module": "irq_affinity"} if movable else None})
        elif kind in ("thread_on_isolated", "kthread_on_isolated", "workqueue_cpumask", "guest_thread_on_isolated"):
            result.append({"kind": kind, "target": violation["offender"], "message": violation["message"],
                           "fix": None})
    return result


def report(before, after, kinds=None):
    """The findings of ``before`` as {kind, target, message, fixed}; fixed when it had a fix and is gone from
    ``after``. ``after`` None: report mode, nothing fixed. ``kinds``: only these kinds (None: all)."""
    keep = (lambda f: True) if kinds is None else (lambda f: f["kind"] in kinds)
    remaining = None if after is None else {(f["kind"], f["target"]) for f in after if keep(f)}
    return [{"kind": f["kind"], "target": f["target"], "message": f["message"],
             "fixed": remaining is not None and f.get("fix") is not None and (f["kind"], f["target"]) not in remaining}
            for f in before if keep(f)]
