# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cgroups of the isolation facts: the cpuset hierarchy as threads see it, v2 partitions, how the
realtime partitions stand, and cgroups that hold isolated CPUs nobody gave them.
"""

from __future__ import annotations

import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import (
    CgroupDiscoveryError,
    cgroup_paths_of,
    parse_mountinfo,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError, format_cpus, read_text, rebase
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    V2_DOMAIN_CONTROLLERS,
    V2_NAMES,
    PartitionNameError,
    libvirt_hierarchies,
    parse_name,
)


def partition_cgroup_paths(partition, subsystems=()):
    """Where a libvirt partition name (``/machine/rt``, ``/rt``) lives in a cgroup hierarchy.

    Returns the non-systemd path (``machine/rt.partition``, as libvirt names and escapes it) and
    the systemd path (``machine.slice/machine-rt.slice``).
    """
    try:
        pname = parse_name(partition, subsystems)
    except PartitionNameError as exc:
        raise IsolationError("realtime partition: %s" % exc) from None
    return pname.cgroup_path, pname.slice_path


def read_layout(proc_root, sys_root):
    """The cgroup layout of ``<proc_root>/self/mountinfo``, its controllers read below ``sys_root``."""
    text = read_text(os.path.join(proc_root, "self", "mountinfo"))
    if text is None:
        raise CgroupDiscoveryError("cannot read %s/self/mountinfo" % proc_root)

    def controllers(mountpoint):
        return read_text(os.path.join(rebase(sys_root, mountpoint), "cgroup.controllers"))

    return parse_mountinfo(text, controllers)


def _walk_cgroups(top):
    """Yield every cgroup directory below and including ``top`` (depth first, sorted)."""
    stack = [top]
    while stack:
        path = stack.pop()
        yield path
        try:
            with os.scandir(path) as entries:
                children = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        stack.extend(reversed(children))


def _cgroup_cpus(ctx, path, version, relative):
    """(cpuset.cpus as written, effective CPUs) of a cgroup directory."""
    if version == 1:
        written = read_text(os.path.join(path, "cpuset.cpus"))
        effective = read_text(os.path.join(path, "cpuset.effective_cpus"))
        if effective is None:
            effective = written
    else:
        written = read_text(os.path.join(path, "cpuset.cpus"))
        effective = read_text(os.path.join(path, "cpuset.cpus.effective"))
        if effective is None:
            effective = written
    return written, ctx.cpus(effective, "effective cpus of cgroup %s" % relative)


def v2_partitions(ctx, unified_dir):
    """Every v2 cgroup whose cpuset.cpus.partition is root or isolated (valid or not)."""
    partitions = []
    for path in _walk_cgroups(unified_dir):
        if path == unified_dir:
            continue
        state = read_text(os.path.join(path, "cpuset.cpus.partition"))
        if not state or state == "member":
            continue
        relative = "/" + os.path.relpath(path, unified_dir)
        mode, _sep, reason = state.partition(" ")
        valid = not reason.startswith("invalid")
        effective = ctx.cpus(read_text(os.path.join(path, "cpuset.cpus.effective")),
                             "cpuset.cpus.effective of %s" % relative)
        partitions.append({
            "path": relative,
            "mode": mode,
            "valid": valid,
            "state": state,
            "cpus": format_cpus(effective) if valid else "",
            "_cpus": effective if valid else frozenset(),
        })
    return partitions


def partition_state(name, layout, sys_root, subsystems=(), controllers=None, systemd=False):
    """How a libvirt resource partition stands in every cgroup hierarchy libvirt uses (hosts without systemd).

    Returns ``{"name", "cgroup_path", "cpus", "mems", "missing"}``: ``cpus``/``mems`` are the partition's
    ``cpuset.cpus``/``cpuset.mems`` as written (None when unreadable); ``missing`` lists everything
    M(rtvirt.kvm.libvirt_partition) would still create or enable for a partition given only its CPUs: a level's
    directory in a hierarchy, a v2 controller not enabled above it, a v1 cpuset level without CPUs or memory
    nodes, a cgroup below it holding CPUs outside its own (it refuses then); on systemd hosts, or where the
    hierarchies cannot be told, a sentence saying why nothing was read.
    """
    record = {"name": name, "cgroup_path": None, "cpus": None, "mems": None, "missing": []}
    missing = record["missing"]
    try:
        pname = parse_name(name, subsystems)
    except PartitionNameError as exc:
        missing.append(str(exc))
        return record
    record["cgroup_path"] = pname.cgroup_path
    if systemd:
        missing.append("systemd host: the slice %s is not read by the facts" % pname.slice)
        return record
    if layout is None:
        missing.append("the cgroup layout is unknown")
        return record
    hierarchies = libvirt_hierarchies(layout.mounts, controllers)
    if not hierarchies:
        missing.append("none of libvirt's controllers is mounted")
        return record
    cpuset_h = next((h for h in hierarchies if "cpuset" in h.controllers), None)
    for hierarchy in hierarchies:
        mount = next((m for m in layout.mounts if m.mountpoint == hierarchy.mountpoint), None)
        if mount is None or mount.root != "/":
            missing.append("%s is not mounted from its root" % hierarchy.mountpoint)
            continue
        top = rebase(sys_root, hierarchy.mountpoint)
        for level in pname.levels:
            if not os.path.isdir(os.path.join(top, level)):
                missing.append("%s/%s" % (hierarchy.mountpoint, level))
        if hierarchy.version == 2:
            offered = (read_text(os.path.join(top, "cgroup.controllers")) or "").split()
            enable = [V2_NAMES.get(c, c) for c in hierarchy.controllers]
            enable = [c for c in V2_DOMAIN_CONTROLLERS if c in enable and c in offered]
            if hierarchy is cpuset_h:
                enable.append("cpuset")
            for level in [""] + pname.levels[:-1]:
                current = (read_text(os.path.join(top, level, "cgroup.subtree_control")) or "").split()
                for controller in enable:
                    if controller not in current:
                        missing.append("+%s in %s/cgroup.subtree_control" % (
                            controller, os.path.join(hierarchy.mountpoint, level).rstrip("/")))
    if cpuset_h is None:
        missing.append("libvirt uses no cpuset controller here")
        return record
    top = rebase(sys_root, cpuset_h.mountpoint)
    leaf = os.path.join(top, pname.cgroup_path)
    record["cpus"] = read_text(os.path.join(leaf, "cpuset.cpus"))
    record["mems"] = read_text(os.path.join(leaf, "cpuset.mems"))
    try:
        own = parse_cpulist(record["cpus"]) if record["cpus"] else None
    except CpuListError:
        own = None
    if own is not None and os.path.isdir(leaf):
        # libvirt_partition refuses to keep a partition's CPUs while a guest below holds CPUs outside them (v2 lets
        # a child write any CPUs; v1 never does).
        for path in _walk_cgroups(leaf):
            written = read_text(os.path.join(path, "cpuset.cpus"))
            try:
                outside = parse_cpulist(written) - own if written else frozenset()
            except CpuListError:
                outside = frozenset([-1])
            if outside:
                missing.append("%s/%s holds CPUs outside the partition (%s)"
                               % (cpuset_h.mountpoint, os.path.relpath(path, top), written))
    if cpuset_h.version == 1:
        for level in pname.levels:
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if os.path.isdir(os.path.join(top, level)) and not read_text(os.path.join(top, level, knob)):
                    missing.append("%s in %s/%s" % (knob, cpuset_h.mountpoint, level))
    return record


class Cgroups(object):
    """The cpuset hierarchy as the facts see it: thread → cgroup path → cpuset files (cached)."""

    def __init__(self, ctx, layout, sys_root, proc_root):
        self.ctx = ctx
        self.proc_root = proc_root
        self.mount = layout.cpuset if layout is not None else None
        self.dir = rebase(sys_root, self.mount.mountpoint) if self.mount else None
        self.key = ("cpuset" if self.mount.version == 1 else "") if self.mount else None
        self._files = {}

    def path_of(self, pid, tid):
        if self.mount is None:
            return None
        try:
            paths = cgroup_paths_of("%d/task/%d" % (pid, tid), self.proc_root)
        except OSError:
            return None
        path = paths.get(self.key)
        if path is None:
            return None
        root = self.mount.root.rstrip("/")
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        elif root and path == root:
            path = "/"
        return path

    def files(self, relative):
        """(cpuset.cpus text, its CPUs) of a cgroup; on v2 an empty file means the effective CPUs."""
        if relative in self._files:
            return self._files[relative]
        directory = os.path.join(self.dir, relative.lstrip("/"))
        written, effective = _cgroup_cpus(self.ctx, directory, self.mount.version, relative)
        cpus = None
        if written:
            cpus = self.ctx.cpus(written, "cpuset.cpus of cgroup %s" % relative)
        elif written is not None:
            cpus = effective if self.mount.version == 2 else frozenset()
        result = (written, cpus)
        self._files[relative] = result
        return result


def cgroup_violations(ctx, cgroups, isolated, partition_paths, given, violations):
    """Append a ``cgroup_cpuset`` violation for every machine cgroup holding isolated CPUs that neither a realtime
    partition (``partition_paths``) nor the domain XML's pinning (``given``: path -> CPUs) gives it."""
    if cgroups.mount is None or not isolated:
        return
    top = cgroups.dir
    found = []
    for start in ("machine", "machine.slice"):
        if os.path.isdir(os.path.join(top, start)):
            for path in _walk_cgroups(os.path.join(top, start)):
                found.append("/" + os.path.relpath(path, top))
    # Ancestors of a cgroup given isolated CPUs must hold them too.
    total = dict(given)
    for path, cpus in given.items():
        parent = path.rsplit("/", 1)[0]
        while parent:
            total[parent] = total.get(parent, frozenset()) | cpus
            parent = parent.rsplit("/", 1)[0]
    declared = ["/" + p for p in partition_paths]
    for path in found:
        # Inside a declared realtime partition everything is the operator's choice; its ancestors
        # must hold its CPUs.
        if any(path == p or path.startswith(p + "/") for p in declared):
            continue
        _written, cpus = cgroups.files(path)
        inside = (cpus or frozenset()) & isolated
        if not inside:
            continue
        allowed = total.get(path, frozenset())
        for partition in declared:
            if partition.startswith(path + "/"):
                _w, partition_cpus = cgroups.files(partition)
                allowed = allowed | ((partition_cpus or frozenset()) & isolated)
        leak = inside - allowed
        if leak:
            violations.append({
                "kind": "cgroup_cpuset",
                "offender": path,
                "message": "cgroup %s holds isolated CPUs %s that no realtime partition or domain pinning gives "
                           "it (cpus %s)" % (path, format_cpulist(leak), format_cpulist(cpus)),
                "path": os.path.join(top, path.lstrip("/")),
                "cpus": format_cpulist(leak),
                "cpuset": format_cpulist(cpus),
            })
