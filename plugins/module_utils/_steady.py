# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether the realtime_vm role has anything to do, decided from the ``cpu_isolation`` facts alone.

:func:`changes_needed` answers with the reasons the role's full path is needed (an empty list: the
host is in the steady state and the role may stop after the facts).  It goes through the same code
the full path's modules run, on the same inputs the role gives them:

* the pool and the emulator CPUs as the role settles them (the facts' isolated CPUs recomputed with the
  role's own ``realtime_vm_isolated_cpus``, whatever option the facts were gathered with);
* every guest planned by ``_pcpu_allocator.allocate_all`` (pcpu_allocation), the requests built by
  ``_pcpu_allocator.requests_from_entries`` from ``_domain_xml.allocation_requests``, the holdings from every
  persistent definition the facts read from libvirt's config directory;
* every present guest rendered by ``_domain_xml.render`` into its persistent definition and compared
  with ``_domain_xml.differences`` (realtime_domain): any difference, or a guest not defined or not
  running, is a reason; an absent guest still defined or running is a reason;
* every partition's CPUs and directories as libvirt_partition would converge them (the facts'
  ``realtime_partitions``; a partition the facts were not gathered for is a reason by itself);
* the placement check of the role's verify step (``_cpumap.placement_problems``) on the facts' threads.

Anything it cannot tell (facts without topology, definitions or threads, a guest running without a
persistent definition, another libvirt URI, an error on the way) is a reason too: the full path then
decides, as it always did.
"""

from __future__ import annotations

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import placement_problems
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    DomainSpecError,
    allocation_requests,
    differences,
    guest_list_problems,
    render,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    PcpuError,
    guest_pins_from_domain_xml,
    holdings_from_domain_xml,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import allocate_all, requests_from_entries
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import Topology, TopologyError

SYSTEM_URI = "qemu:///system"
# pcpu_allocation's top-level defaults, which the role leaves as they are.
_ALLOCATION_DEFAULTS = {"state": "present", "vcpus": None, "smt_policy": "prefer", "numa_node": None, "pcpus": None}


class _Unknown(Exception):
    """The facts cannot tell; the message is the reason."""


def _cpus(text, what):
    try:
        return parse_cpulist(str(text), what=what)
    except CpuListError as exc:
        raise _Unknown(str(exc)) from exc


def _int(value, what):
    """Ansible's int conversion of a module option (the full path's modules get their values through it)."""
    if isinstance(value, bool):
        raise _Unknown("%s %r is not a number" % (what, value))
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise _Unknown("%s %r is not a number" % (what, value)) from exc


def _pick(guest, key, default):
    """``guest[key] | default(default)`` as the role's tasks write it (only a missing key takes the default)."""
    if key not in guest:
        return default
    if guest[key] is None:
        raise _Unknown("guest %s: %s is null" % (guest.get("name"), key))
    return guest[key]


def role_isolated_cpus(facts, isolated_cpus=""):
    """The isolated CPUs the facts would report had they been gathered with ``isolated_cpus`` as the option."""
    sources = facts.get("isolated_sources") or {}
    isolated = frozenset()
    for name, text in sources.items():
        if name != "option" and text:
            isolated |= _cpus(text, "isolated_sources %s" % name)
    if isolated_cpus:
        isolated |= _cpus(isolated_cpus, "realtime_vm_isolated_cpus")
    cpus = facts.get("cpus") or {}
    bound = cpus.get("possible") or cpus.get("online")
    if bound:
        isolated &= frozenset(range(max(_cpus(bound, "possible CPUs")) + 1))
    return isolated


def changes_needed(facts, guests, pool="", isolated_cpus="", emulator_cpus="", partition="/rt",
                   manage_partitions=True, smt_policy="prefer", memory_mib=128, fifo_priority=1, verify=True,
                   uri=SYSTEM_URI):
    """The reasons the realtime_vm role must run its full path; empty when nothing would change.

    ``emulator_cpus`` is ``realtime_vm_emulator_cpus`` or ``host_prep_emulator_cpus`` (empty: the
    housekeeping CPUs, as the role settles them).  The other arguments are the role's variables of
    the same name (``realtime_vm_*``).
    """
    try:
        return _changes(facts, list(guests or ()), pool, isolated_cpus, emulator_cpus, partition,
                        manage_partitions, smt_policy, memory_mib, fifo_priority, verify, uri)
    except _Unknown as exc:
        return [str(exc)]
    except (PcpuError, TopologyError, DomainSpecError, CpuListError) as exc:
        return ["the full path decides: %s" % exc]


def _changes(facts, guests, pool, isolated_cpus, emulator_cpus, partition, manage_partitions, smt_policy,
             memory_mib, fifo_priority, verify, uri):
    if not isinstance(facts, dict) or "cpus" not in facts:
        raise _Unknown("no cpu_isolation facts")
    for key in ("topology", "domains", "realtime_partitions"):
        if facts.get(key) is None:
            raise _Unknown("the facts hold no %s (gathered by an older collection, or unreadable: see their warnings)"
                           % key)
    if uri != SYSTEM_URI:
        raise _Unknown("the facts read the definitions of %s, not of %s" % (SYSTEM_URI, uri))
    problems = guest_list_problems(guests)
    if problems:
        raise _Unknown("; ".join(problems))

    isolated = role_isolated_cpus(facts, isolated_cpus)
    online = _cpus(facts["cpus"].get("online") or "", "online CPUs")
    pool_text = pool or format_cpulist(isolated)
    emulator_text = emulator_cpus or format_cpulist(online - isolated)
    present = [dict(g, state="present") if "state" not in g else g for g in guests]
    absent = [g for g in present if g["state"] == "absent"]
    present = [g for g in present if g["state"] == "present"]
    reasons = []

    definitions = {}
    for domain in facts["domains"]:
        definitions[guest_pins_from_domain_xml(domain["xml"]).name] = domain["xml"]
    running = {g.get("name") for g in facts.get("guests") or ()}
    for name in sorted(running - set(definitions)):
        raise _Unknown("guest %s runs without a persistent definition the facts could read" % name)

    for guest in absent:
        if guest["name"] in definitions or guest["name"] in running:
            reasons.append("guest %s is to be removed" % guest["name"])
    if not present:
        return reasons
    if not pool_text:
        raise _Unknown("no realtime pool")

    topology = Topology.from_dict(facts["topology"])
    requests, emulators = requests_from_entries(allocation_requests(guests, smt_policy, emulator_text),
                                                _ALLOCATION_DEFAULTS)
    holdings = holdings_from_domain_xml(list(definitions.values()))
    plans = {plan.name: plan for plan in allocate_all(topology, _cpus(pool_text, "pool"), holdings, requests,
                                                      emulators)}

    placed = []
    for guest in present:
        name = guest["name"]
        plan = plans[name]
        vcpupin = {str(vcpu): cpus for vcpu, cpus in plan.vcpupin.items()}
        guest_emulator = _pick(guest, "emulator_cpus", emulator_text)
        priority = _int(_pick(guest, "fifo_priority", fifo_priority), "fifo_priority")
        guest_partition = _pick(guest, "partition", partition)
        placed.append({"name": name, "vcpupin": vcpupin, "emulator_cpus": guest_emulator,
                       "fifo_priority": priority, "partition": guest_partition})
        if name not in definitions:
            reasons.append("guest %s is not defined" % name)
            continue
        spec = DomainSpec(name=name, vcpus=len(plan.pins),
                          memory_mib=_int(_pick(guest, "memory_mib", memory_mib), "memory_mib"),
                          vcpupin=vcpupin, emulator_cpus=str(guest_emulator), fifo_priority=priority,
                          partition=str(guest_partition), numa_nodes=tuple(plan.numa_nodes),
                          metadata=plan.metadata_xml())
        current = definitions[name]
        changed = differences(current, render(spec, current))
        if changed:
            reasons.append("guest %s: its definition differs in %s" % (name, ", ".join(changed)))
        if name not in running:
            reasons.append("guest %s is not running" % name)

    if manage_partitions:
        wanted = _cpus("%s,%s" % (pool_text, emulator_text), "partition cpus")
        gathered = {p.get("name"): p for p in facts["realtime_partitions"]}
        for name in sorted({p["partition"] for p in placed}):
            state = gathered.get(name)
            if state is None:
                reasons.append("partition %s: the facts were not gathered for it" % name)
                continue
            if state.get("missing"):
                reasons.append("partition %s lacks %s" % (name, ", ".join(state["missing"])))
            if not state.get("cpus") or _cpus(state["cpus"], "cpus of %s" % name) != wanted:
                reasons.append("partition %s holds CPUs %s, the role gives it %s"
                               % (name, state.get("cpus") or "none", format_cpulist(wanted)))

    if verify:
        if facts.get("threads_scanned") is None:
            reasons.append("the facts hold no threads (gathered with gather_threads=false)")
        else:
            reasons.extend(placement_problems(facts, placed))
    return reasons
