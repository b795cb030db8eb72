# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Choose and validate a host's realtime CPU set. Pure: the caller reads sysfs.

Topology is given as plain data:
  online: frozenset of online CPUs; present: frozenset of present CPUs (None: same as online)
  nodes: {node: frozenset(cpus)} (empty: the whole host is one node)
  siblings: {cpu: frozenset(thread siblings)} (missing CPUs are their own core)
"""

from __future__ import annotations

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist


class RealtimeCpusError(ValueError):
    """The realtime set cannot be used; the message says why and what to do."""


def _nodes(online, nodes):
    if not nodes:
        return {0: frozenset(online)}
    return {node: frozenset(cpus) & online for node, cpus in nodes.items() if frozenset(cpus) & online}


def cores(cpus, siblings):
    """Group ``cpus`` into SMT cores (each a frozenset), ordered by their lowest CPU."""
    seen = set()
    result = []
    for cpu in sorted(cpus):
        if cpu in seen:
            continue
        core = (frozenset(siblings.get(cpu, ())) | {cpu}) & frozenset(cpus)
        seen |= core
        result.append(core)
    return sorted(result, key=min)


def choose(online, nodes, siblings, housekeeping_cores_per_node=1):
    """The automatic choice: the first ``housekeeping_cores_per_node`` whole cores of every NUMA node stay
    housekeeping, every other whole core is realtime. Deterministic. Returns (realtime, housekeeping)."""
    if housekeeping_cores_per_node < 1:
        raise RealtimeCpusError("housekeeping_cores_per_node must be at least 1: every NUMA node keeps a "
                                "housekeeping CPU")
    realtime = set()
    for node in sorted(_nodes(online, nodes)):
        node_cores = cores(_nodes(online, nodes)[node], siblings)
        for core in node_cores[housekeeping_cores_per_node:]:
            realtime |= core
    realtime = frozenset(realtime)
    if not realtime:
        raise RealtimeCpusError(
            "no CPU is left for realtime work: every NUMA node has at most %d core(s) (online CPUs %s) and "
            "keeps them for housekeeping; give the realtime CPUs explicitly or lower the housekeeping cores"
            % (housekeeping_cores_per_node, format_cpulist(online)))
    return realtime, frozenset(online) - realtime


def validate(realtime, online, nodes, siblings, present=None):
    """Check a realtime set; raise RealtimeCpusError with every problem, return a list of warnings."""
    online = frozenset(online)
    present = online if present is None else frozenset(present)
    errors = []
    if not realtime:
        errors.append("the realtime CPU set is empty")
    missing = realtime - present - online
    if missing:
        errors.append("CPU(s) %s do not exist on this host (present: %s)"
                      % (format_cpulist(missing), format_cpulist(present | online)))
    offline = (realtime & present) - online
    if offline:
        errors.append("CPU(s) %s are offline; bring them online (echo 1 > /sys/devices/system/cpu/cpuN/online) "
                      "or leave them out of the realtime set" % format_cpulist(offline))
    for node, cpus in sorted(_nodes(online, nodes).items()):
        if cpus and cpus <= realtime:
            errors.append("the realtime set takes every online CPU of NUMA node %d (%s); keep at least one "
                          "housekeeping CPU on every node for its kernel threads, IRQs and emulator threads"
                          % (node, format_cpulist(cpus)))
    if realtime and not (online - realtime):
        errors.append("the realtime set %s leaves no housekeeping CPU (online: %s)"
                      % (format_cpulist(realtime), format_cpulist(online)))
    if errors:
        raise RealtimeCpusError("; ".join(errors))
    warnings = []
    for core in cores(online, siblings):
        part = core & realtime
        if part and part != core:
            warnings.append("SMT core %s is split: %s realtime, %s housekeeping; its sibling threads share "
                            "caches and execution units" % (format_cpulist(core), format_cpulist(part),
                                                            format_cpulist(core - part)))
    return warnings
