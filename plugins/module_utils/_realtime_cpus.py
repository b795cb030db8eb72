# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Choose and validate a host's realtime CPU set, and plan the cgroup layout around it.

Pure, except ``plan_host`` at the end, which reads sysfs through ``_topology.read_topology``
(host_plan plans through ``plan_host``).

Topology is given as plain data:
  online: frozenset of online CPUs; present: frozenset of present CPUs (None: same as online)
  nodes: {node: frozenset(cpus)} (empty: the whole host is one node)
  siblings: {cpu: frozenset(thread siblings)} (missing CPUs are their own core)
"""

from __future__ import annotations

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import PartitionNameError, parse_name

# libvirt_partition's tunables a host_prep partition may carry, with their option types.
PARTITION_TUNABLES = (("cpu_shares", "int"), ("memory_hard_limit", "str"), ("memory_soft_limit", "str"),
                      ("memory_swap_hard_limit", "str"), ("blkio_weight", "int"))
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import TopologyError, read_topology


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


def plan_layout(realtime, online, partitions, emulator_cpus=None, narrow_machine=True):
    """Where /machine, the emulator threads and each realtime partition go (docs/LAYOUT.md).

    ``partitions``: [{"name": str, "cpus": frozenset or None, "exclusive": bool or None, ...}], names
    already validated.  ``emulator_cpus``: a frozenset of dedicated emulator CPUs, or None to share the
    housekeeping CPUs.  Returns {"machine_cpus", "emulator_cpus", "emulator_mode", "partitions"} with
    every partition's cpus and exclusive settled, and a list of warnings; raises RealtimeCpusError with
    every problem at once.
    """
    online, realtime = frozenset(online), frozenset(realtime)
    housekeeping = online - realtime
    errors, warnings = [], []
    if emulator_cpus:
        emulator_cpus = frozenset(emulator_cpus)
        if not emulator_cpus <= online:
            errors.append("emulator CPUs %s are not online (online: %s)" % (
                format_cpulist(emulator_cpus - online), format_cpulist(online)))
        if emulator_cpus & realtime:
            errors.append("emulator CPUs %s are realtime CPUs too; emulator threads need CPUs of their own" %
                          format_cpulist(emulator_cpus & realtime))
        if not housekeeping - emulator_cpus:
            errors.append("dedicating CPUs %s to emulator threads leaves no housekeeping CPU for the host and "
                          "/machine (housekeeping: %s)" % (format_cpulist(emulator_cpus),
                                                           format_cpulist(housekeeping)))
        mode, shared = "dedicated", emulator_cpus
    else:
        mode, shared = "shared", housekeeping
    machine_cpus = (housekeeping - shared) if mode == "dedicated" else housekeeping
    settled = []
    for entry in partitions:
        name = entry["name"]
        cpus = entry.get("cpus") or (realtime | shared)
        if narrow_machine and (name == "/machine" or name.startswith("/machine/")):
            errors.append("partition %s is %s, which is kept on the housekeeping CPUs %s: a cpuset cannot "
                          "hold CPUs its parent lacks; put it beside /machine (e.g. /%s)" % (
                              name, "/machine itself" if name == "/machine" else "below /machine",
                              format_cpulist(machine_cpus),
                              "rt" if name == "/machine" else name.rsplit("/", 1)[-1]))
            continue
        if not cpus & realtime:
            errors.append("partition %s (CPUs %s) holds none of the realtime CPUs %s" % (
                name, format_cpulist(cpus), format_cpulist(realtime)))
        if not cpus <= online:
            errors.append("partition %s asks for CPUs %s that are not online (online: %s)" % (
                name, format_cpulist(cpus - online), format_cpulist(online)))
        stray = cpus - realtime - shared
        if stray and narrow_machine:
            errors.append("partition %s holds CPUs %s that are neither realtime nor emulator CPUs (%s)" % (
                name, format_cpulist(stray), format_cpulist(shared)))
        exclusive = entry.get("exclusive")
        if exclusive is None:
            exclusive = mode == "dedicated"
        elif exclusive and mode == "shared" and narrow_machine:
            errors.append("partition %s cannot be exclusive: its emulator threads share the housekeeping CPUs %s "
                          "with /machine, and the kernel refuses an exclusive cpuset that overlaps a sibling (v1 "
                          "EINVAL; v2 'Cpu list in cpuset.cpus not exclusive'); dedicate emulator CPUs "
                          "(host_prep_emulator_cpus) or leave exclusive unset" % (name, format_cpulist(shared)))
        settled.append(dict(entry, cpus=cpus, exclusive=bool(exclusive)))
    exclusive_ones = [p for p in settled if p["exclusive"]]
    for index, one in enumerate(exclusive_ones):
        for other in exclusive_ones[index + 1:]:
            if one["cpus"] & other["cpus"]:
                errors.append("exclusive partitions %s and %s share CPUs %s; give each its own cpus" % (
                    one["name"], other["name"], format_cpulist(one["cpus"] & other["cpus"])))
    if errors:
        raise RealtimeCpusError("; ".join(errors))
    if mode == "shared" and settled:
        warnings.append(
            "emulator threads share the housekeeping CPUs %s, so the realtime partition%s %s cannot be exclusive "
            "in the kernel: the realtime CPUs %s are kept off /machine and checked by the facts module, but "
            "nothing stops a hand-made cgroup from using them; set host_prep_emulator_cpus to dedicate emulator "
            "CPUs and get an exclusive (v1) or isolated (v2) partition" % (
                format_cpulist(shared), "s" if len(settled) > 1 else "",
                ", ".join(p["name"] for p in settled), format_cpulist(realtime)))
    return {"machine_cpus": machine_cpus, "emulator_cpus": shared, "emulator_mode": mode,
            "partitions": settled}, warnings


def plan_argument_spec():
    """The options ``plan_host`` reads: the first part of host_plan's spec."""
    return dict(
        cpus=dict(type="str"),
        housekeeping_cores_per_node=dict(type="int", default=1),
        partitions=dict(type="list", elements="dict", default=[], options=dict(
            name=dict(type="str", required=True), cpus=dict(type="str"), mems=dict(type="str"),
            exclusive=dict(type="bool"), **{key: dict(type=kind) for key, kind in PARTITION_TUNABLES})),
        emulator_cpus=dict(type="str", default=""),
        narrow_machine=dict(type="bool", default=True),
        sys_root=dict(type="path", default="/sys"),
    )


def plan_host(params):
    """The realtime set (given or chosen), validated, and the cgroup layout.
    ``params``: the options of ``plan_argument_spec``. Returns (result, warnings)."""
    try:
        topology = read_topology(params["sys_root"])
    except TopologyError as exc:
        raise RealtimeCpusError("%s (is sysfs mounted at %s?)" % (exc, params["sys_root"])) from exc
    online, present = topology.cpus, topology.present
    nodes = {node: topology.node_cpus(node) for node in topology.nodes}
    siblings = {cpu: topology.siblings_of(cpu) for cpu in online}
    if params["cpus"]:
        realtime = parse_cpulist(params["cpus"], what="cpus")
        source = "given"
    else:
        realtime, _hk = choose(online, nodes, siblings, params["housekeeping_cores_per_node"])
        source = "automatic"
    warnings = validate(realtime, online, nodes, siblings, present=present)
    errors = []
    requested = []
    for entry in params["partitions"]:
        name = entry.get("name")
        try:
            parse_name(name)
        except PartitionNameError as exc:
            errors.append(str(exc))
            continue
        cpus = entry.get("cpus")
        requested.append(dict(entry, cpus=parse_cpulist(str(cpus), what="cpus of partition %s" % name)
                              if cpus else None))
    if errors:
        raise RealtimeCpusError("; ".join(errors))
    emulator = parse_cpulist(params["emulator_cpus"], what="emulator_cpus") if params["emulator_cpus"] else None
    layout, layout_warnings = plan_layout(realtime, online, requested, emulator, params["narrow_machine"])
    warnings.extend(layout_warnings)
    partitions = [dict(p, cpus=format_cpulist(p["cpus"])) for p in layout["partitions"]]
    return dict(
        changed=False,
        realtime_cpus=format_cpulist(realtime),
        housekeeping_cpus=format_cpulist(online - realtime),
        online_cpus=format_cpulist(online),
        source=source,
        numa_nodes=[{"node": n, "cpus": format_cpulist(c & online)} for n, c in sorted(nodes.items())],
        partitions=partitions,
        machine_cpus=format_cpulist(layout["machine_cpus"]),
        emulator_cpus=format_cpulist(layout["emulator_cpus"]),
        emulator_mode=layout["emulator_mode"],
    ), warnings
