# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's CPU topology as sysfs tells it: online and present CPUs, NUMA nodes, SMT siblings.

One reader for every planner (pcpu_allocation, host_plan, the isolation facts), in a
module of its own so that a module that only needs the topology does not carry the pCPU planner in its
payload.
"""

from __future__ import annotations

import os
import re

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)


class TopologyError(ValueError):
    """The sysfs topology could not be read."""


class Topology:
    """Online CPUs with their NUMA node, SMT siblings, core and package ids.

    ``node_of`` maps every online CPU to its node.  ``siblings`` maps a CPU to the frozenset of its
    thread siblings (itself included); missing CPUs are their own only sibling.  ``core_id`` and
    ``package_id`` are informative (sysfs ``core_id``/``physical_package_id``).
    """

    def __init__(self, node_of, siblings=None, core_id=None, package_id=None, present=None):
        self._node_of = {int(c): int(n) for c, n in node_of.items()}
        cpus = frozenset(self._node_of)
        # Present but offline CPUs are no part of the topology; host_plan names them in its errors.
        self.present = cpus if present is None else frozenset(present) | cpus
        siblings = siblings or {}
        self._siblings = {}
        for cpu in cpus:
            group = frozenset(siblings.get(cpu, ())) & cpus
            self._siblings[cpu] = group | {cpu}
        self._core_id = {c: int((core_id or {}).get(c, c)) for c in cpus}
        self._package_id = {c: int((package_id or {}).get(c, 0)) for c in cpus}
        self.cpus = cpus

    @classmethod
    def uniform(cls, nodes=1, cores_per_node=4, threads_per_core=1):
        """A regular machine numbered like Linux on x86: thread t of core c is CPU t*cores+c."""
        total = nodes * cores_per_node
        node_of, siblings, core_id, package_id = {}, {}, {}, {}
        for core in range(total):
            group = frozenset(t * total + core for t in range(threads_per_core))
            for cpu in group:
                node_of[cpu] = core // cores_per_node
                siblings[cpu] = group
                core_id[cpu] = core % cores_per_node
                package_id[cpu] = core // cores_per_node
        return cls(node_of, siblings, core_id, package_id)

    def node_of(self, cpu):
        return self._node_of[cpu]

    def siblings_of(self, cpu):
        """Thread siblings of ``cpu``, itself included (online CPUs only)."""
        return self._siblings[cpu]

    def core_id(self, cpu):
        return self._core_id[cpu]

    def package_id(self, cpu):
        return self._package_id[cpu]

    @property
    def nodes(self):
        return tuple(sorted(set(self._node_of.values())))

    def node_cpus(self, node):
        return frozenset(c for c, n in self._node_of.items() if n == node)

    @property
    def has_smt(self):
        return any(len(group) > 1 for group in self._siblings.values())

    def as_dict(self):
        """A JSON-friendly form (CPU numbers as strings) that :meth:`from_dict` turns back into an equal Topology."""
        cpus = sorted(self.cpus)
        return {
            "node_of": {str(c): self._node_of[c] for c in cpus},
            "siblings": {str(c): format_cpulist(self._siblings[c]) for c in cpus},
            "core_id": {str(c): self._core_id[c] for c in cpus},
            "package_id": {str(c): self._package_id[c] for c in cpus},
        }

    @classmethod
    def from_dict(cls, data):
        """The Topology :meth:`as_dict` described; raise TopologyError for anything else."""
        try:
            return cls({int(c): int(n) for c, n in data["node_of"].items()},
                       {int(c): parse_cpulist(s) for c, s in data["siblings"].items()},
                       {int(c): int(i) for c, i in data["core_id"].items()},
                       {int(c): int(i) for c, i in data["package_id"].items()})
        except (KeyError, TypeError, ValueError, AttributeError, CpuListError) as exc:
            raise TopologyError("not a topology as Topology.as_dict writes it: %s" % (exc,)) from exc

    def __eq__(self, other):
        return isinstance(other, Topology) and (self._node_of, self._siblings) == (other._node_of, other._siblings)

    def __repr__(self):
        return "Topology(cpus=%s, nodes=%s, smt=%s)" % (format_cpulist(self.cpus), self.nodes, self.has_smt)


def _read(path):
    with open(path, "r", encoding="ascii") as handle:
        return handle.read().strip()


def _read_or_none(path):
    try:
        return _read(path)
    except OSError:
        return None


def read_sibling_lists(sysfs_root, cpus):
    """``{cpu: its thread_siblings_list as sysfs prints it, None where it cannot be read}`` for ``cpus``.

    The raw texts, so that a reader with its own policy for bad lists (the isolation facts warn and go on)
    reads the same files as :func:`read_topology`.
    """
    cpu_dir = os.path.join(sysfs_root, "devices", "system", "cpu")
    return {cpu: _read_or_none(os.path.join(cpu_dir, "cpu%d" % cpu, "topology", "thread_siblings_list"))
            for cpu in sorted(cpus)}


def read_node_lists(sysfs_root):
    """``{node: its cpulist as sysfs prints it, None where it cannot be read}`` for every ``node<N>`` directory."""
    node_dir = os.path.join(sysfs_root, "devices", "system", "node")
    try:
        entries = sorted(os.listdir(node_dir))
    except OSError:
        entries = []
    nodes = {}
    for entry in entries:
        match = re.match(r"^node(\d+)$", entry)
        if match:
            nodes[int(match.group(1))] = _read_or_none(os.path.join(node_dir, entry, "cpulist"))
    return nodes


def read_smt_active(sysfs_root):
    """``/sys/devices/system/cpu/smt/active`` as True or False, None where the kernel has no such file."""
    text = _read_or_none(os.path.join(sysfs_root, "devices", "system", "cpu", "smt", "active"))
    return text == "1" if text is not None else None


def read_topology(sysfs_root="/sys"):
    """Read online and present CPUs, SMT siblings, core/package ids and NUMA nodes from a sysfs tree.

    CPUs listed in no ``node*/cpulist`` (kernels without NUMA) are put on node 0; without a ``present``
    file the present CPUs are the online ones.
    """
    cpu_dir = os.path.join(sysfs_root, "devices", "system", "cpu")
    online_path = os.path.join(cpu_dir, "online")
    try:
        online = parse_cpulist(_read(online_path), what=online_path)
    except OSError as exc:
        raise TopologyError("cannot read the online CPUs from %s: %s" % (online_path, exc.strerror or exc)) from exc
    except CpuListError as exc:
        raise TopologyError(str(exc)) from exc
    if not online:
        raise TopologyError("%s lists no online CPU" % online_path)
    siblings, core_id, package_id = {}, {}, {}
    for cpu, text in read_sibling_lists(sysfs_root, online).items():
        try:
            siblings[cpu] = frozenset([cpu]) if text is None else parse_cpulist(
                text, what="cpu%d thread_siblings_list" % cpu)
        except CpuListError as exc:
            raise TopologyError(str(exc)) from exc
        topo = os.path.join(cpu_dir, "cpu%d" % cpu, "topology")
        for name, target in (("core_id", core_id), ("physical_package_id", package_id)):
            try:
                target[cpu] = int(_read(os.path.join(topo, name)))
            except (OSError, ValueError):
                pass
    node_of = {}
    for node, text in read_node_lists(sysfs_root).items():
        if text is None:
            continue
        path = os.path.join(sysfs_root, "devices", "system", "node", "node%d" % node, "cpulist")
        try:
            cpus = parse_cpulist(text, what=path)
        except CpuListError as exc:
            raise TopologyError(str(exc)) from exc
        for cpu in cpus & online:
            node_of.setdefault(cpu, node)
    for cpu in online:
        node_of.setdefault(cpu, 0)
    present_path = os.path.join(cpu_dir, "present")
    try:
        present = parse_cpulist(_read(present_path), what=present_path)
    except OSError:
        present = None
    except CpuListError as exc:
        raise TopologyError(str(exc)) from exc
    return Topology(node_of, siblings, core_id, package_id, present=present)
