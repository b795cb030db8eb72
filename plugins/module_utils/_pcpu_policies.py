# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How each SMT policy places a guest's vCPUs on the realtime pool, given what the other guests hold.

The policies follow OpenStack Nova's ``hw:cpu_thread_policy`` (``nova/virt/hardware.py``).
A *core* below is the set of thread siblings (``thread_siblings_list``) intersected with the pool.

``prefer``
    Nova: siblings are preferred when available, any free thread is used otherwise.  Here: first
    the free siblings of cores the guest already uses, then whole free cores (so consecutive vCPUs
    0/1, 2/3, ... are thread siblings and the guest can be given a ``threads=2`` topology), then
    threads of cores another guest uses partly.  Nothing is reserved.
``isolate``
    Nova: each vCPU on a different core, and no vCPU of another guest may be placed on its
    siblings (the legacy ``vcpu_pin_set`` behaviour: pin one thread, reserve the siblings; the
    placement-era Nova instead refuses SMT hosts outright).  Here: each vCPU takes the lowest
    thread of a core on which nobody holds anything; the other threads of that core in the pool
    are reserved to the guest and never given to anybody else.  On a host without SMT this is one
    vCPU per CPU.  A sibling outside the pool cannot be reserved (the host owns it): warning.
``require``
    Nova: the host must have SMT and vCPUs are placed on thread siblings, never on lone threads;
    otherwise the request fails.  Here: fails with a clear message when the host has no SMT or
    the pool holds no complete sibling group; vCPUs fill whole free cores, sibling by sibling.
    When the count is not a multiple of the threads per core, the unused threads of the last core
    are reserved to the guest (Nova would leave them to other guests; a realtime guest should not
    share a core with a neighbour) and a warning says so.
"""

from __future__ import annotations

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import AllocationError, GuestPins


def _plural(count, one, many):
    return "%d %s" % (count, one if count == 1 else many)


def _holders_text(holdings, pool):
    parts = ["%s %s" % (name, format_cpulist(cpus)) for name, cpus in holdings.holders_of(pool).items()]
    return ", ".join(parts) if parts else "none"


def _free_by_node(topology, cpus):
    parts = []
    for node in topology.nodes:
        part = topology.node_cpus(node) & cpus
        if part:
            parts.append("node%d: %s" % (node, format_cpulist(part)))
    return ", ".join(parts) if parts else "none on any node"


class Context:
    """Everything the policies need, computed once per ``allocate`` call."""

    def __init__(self, topology, pool, holdings, request):
        self.topology = topology
        self.request = request
        self.name = request.name
        self.pool_given = frozenset(pool)
        self.pool = self.pool_given & topology.cpus
        self.others = holdings.without(request.name)
        self.own = holdings.get(request.name) or GuestPins(name=request.name)
        self.other_held = self.others.held()
        # CPUs this guest may not use for vCPUs: other guests' and its own emulator/iothreads.
        self.blocked = self.other_held | self.own.other_cpus
        self.avail = self.pool - self.blocked
        self.holdings = holdings

    def core(self, cpu):
        """The pool part of cpu's sibling group."""
        return self.topology.siblings_of(cpu) & self.pool

    def core_key(self, cpu):
        group = self.core(cpu) or frozenset([cpu])
        return (self.topology.node_of(min(group)), min(self.topology.siblings_of(cpu)))

    def cores(self, cpus):
        """Distinct pool cores touching ``cpus``, in node/core order."""
        seen = {}
        for cpu in cpus:
            group = self.core(cpu)
            seen[min(self.topology.siblings_of(cpu))] = group
        return sorted(seen.values(), key=lambda g: self.core_key(min(g)))

    def clean_core(self, cpu):
        """No other guest (nor this guest's emulator/iothreads) holds any thread of cpu's core."""
        return not (self.topology.siblings_of(cpu) & self.blocked)

    def describe(self, need, capacity, scope_node=None):
        """The "does not fit" sentence: what is needed, what is free and where, who holds the rest."""
        pool_text = format_cpulist(self.pool_given)
        where = "in the realtime pool %s" % pool_text
        avail = self.avail
        if scope_node is not None:
            where = "on NUMA node %d of the realtime pool %s" % (scope_node, pool_text)
            avail = avail & self.topology.node_cpus(scope_node)
        policy = self.request.smt_policy
        wanted = _plural(need, "pCPU", "pCPUs")
        verb = "is" if capacity == 1 else "are"
        if policy == "isolate":
            wanted += ", each on a core of its own (smt_policy=isolate),"
            have = "%d such %s %s free" % (capacity, "core" if capacity == 1 else "cores", verb)
        elif policy == "require":
            wanted += " on whole cores of thread siblings (smt_policy=require),"
            have = "%d such %s %s free" % (capacity, "pCPU" if capacity == 1 else "pCPUs", verb)
        else:
            have = "%d %s free" % (capacity, verb)
        text = "guest %r needs %s but only %s %s (%s)" % (
            self.name, wanted, have, where, _free_by_node(self.topology, avail))
        return "%s; held: %s" % (text, _holders_text(self.others, self.pool))


def check_require_possible(ctx):
    if not ctx.topology.has_smt:
        raise AllocationError(
            "guest %r asks for smt_policy=require but this host has no SMT (every core has one thread): "
            "use smt_policy=prefer or isolate, or enable SMT" % ctx.name)
    if not any(len(ctx.core(cpu)) > 1 for cpu in ctx.pool):
        raise AllocationError(
            "guest %r asks for smt_policy=require but the realtime pool %s holds no complete set of "
            "thread siblings (e.g. the siblings of %d are %s)"
            % (ctx.name, format_cpulist(ctx.pool_given), min(ctx.pool),
               format_cpulist(ctx.topology.siblings_of(min(ctx.pool)))))


def explicit_pins(ctx, pcpus, warnings):
    name = ctx.name
    wanted = frozenset(pcpus)
    outside = wanted - ctx.pool
    if outside:
        offline = outside - ctx.topology.cpus
        text = "pcpus %s for guest %r are outside the realtime pool %s" % (
            format_cpulist(outside), name, format_cpulist(ctx.pool_given))
        if offline:
            text += " (%s not online)" % format_cpulist(offline)
        raise AllocationError(text)
    taken = wanted & ctx.other_held
    if taken:
        by = ["%s (%s)" % (holder, format_cpulist(cpus)) for holder, cpus in ctx.others.holders_of(taken).items()]
        raise AllocationError("pcpus %s for guest %r are held by another guest: %s"
                              % (format_cpulist(taken), name, ", ".join(by)))
    own_other = wanted & ctx.own.other_cpus
    if own_other:
        raise AllocationError("pcpus %s for guest %r are its own emulator/iothread pins"
                              % (format_cpulist(own_other), name))
    node = ctx.request.numa_node
    if node is not None:
        off_node = wanted - ctx.topology.node_cpus(node)
        if off_node:
            raise AllocationError("pcpus %s for guest %r are not on numa_node %d (its pool CPUs: %s)"
                                  % (format_cpulist(off_node), name, node,
                                     format_cpulist(ctx.pool & ctx.topology.node_cpus(node))))
    spare = set()
    policy = ctx.request.smt_policy
    if policy in ("isolate", "require"):
        for group in ctx.cores(wanted):
            cpu = min(group)
            if not ctx.clean_core(cpu):
                siblings = ctx.topology.siblings_of(cpu)
                holders = ctx.others.holders_of(siblings)
                who = ", ".join("%s (%s)" % (h, format_cpulist(c)) for h, c in holders.items()) or \
                    "the guest's own emulator/iothreads"
                raise AllocationError("smt_policy=%s: pcpus %s for guest %r share a core (siblings %s) with %s"
                                      % (policy, format_cpulist(group & wanted), name,
                                         format_cpulist(siblings), who))
        if policy == "isolate":
            for group in ctx.cores(wanted):
                if len(group & wanted) > 1:
                    raise AllocationError(
                        "smt_policy=isolate: pcpus %s for guest %r are thread siblings; give one pCPU per core"
                        % (format_cpulist(group & wanted), name))
                spare |= group - wanted
            _warn_outside_siblings(ctx, wanted, warnings)
        else:
            partial = [g for g in ctx.cores(wanted) if g - wanted]
            single = [g for g in ctx.cores(wanted) if len(g) < 2]
            if single:
                raise AllocationError("smt_policy=require: pcpus %s for guest %r have no thread sibling in the pool"
                                      % (format_cpulist(frozenset().union(*single) & wanted), name))
            if len(partial) > 1:
                raise AllocationError(
                    "smt_policy=require: pcpus %s for guest %r must fill whole cores, but %s are only partly used"
                    % (format_cpulist(wanted), name,
                       "; ".join("siblings %s" % format_cpulist(g) for g in partial)))
            for group in partial:
                spare |= group - wanted
                warnings.append("smt_policy=require: pCPUs %s stay idle, reserved to guest %r (an odd core)"
                                % (format_cpulist(group - wanted), name))
    return list(enumerate(pcpus)), frozenset(spare)


def _warn_outside_siblings(ctx, cpus, warnings):
    outside = set()
    for cpu in cpus:
        outside |= ctx.topology.siblings_of(cpu) - ctx.pool
    if outside:
        warnings.append("smt_policy=isolate: thread siblings %s of the pCPUs of guest %r are outside the "
                        "realtime pool and cannot be kept idle" % (format_cpulist(outside), ctx.name))


def kept_pins(ctx, vcpus, warnings):
    """The guest's existing 1:1 pins that stay: {vcpu: pcpu}, for vcpu < vcpus."""
    kept = {}
    node = ctx.request.numa_node
    for vcpu in sorted(ctx.own.vcpupin):
        if vcpu >= vcpus:
            continue
        cpus = ctx.own.vcpupin[vcpu]
        if len(cpus) != 1:
            continue
        pcpu = min(cpus)
        if pcpu not in ctx.avail or pcpu in kept.values():
            if pcpu in ctx.other_held:
                warnings.append("guest %r's vCPU %d is pinned to pCPU %d, which another guest holds too; moving it"
                                % (ctx.name, vcpu, pcpu))
            continue
        if node is not None and ctx.topology.node_of(pcpu) != node:
            continue
        kept[vcpu] = pcpu
    policy = ctx.request.smt_policy
    if kept and policy in ("isolate", "require"):
        cores = ctx.cores(kept.values())
        ok = all(ctx.clean_core(min(g)) for g in cores)
        if policy == "isolate":
            ok = ok and all(len(g & frozenset(kept.values())) == 1 for g in cores)
        else:
            ok = ok and all(len(g) > 1 for g in cores)
        if not ok:
            warnings.append("guest %r's current pins %s do not meet smt_policy=%s; they are planned again"
                            % (ctx.name, format_cpulist(kept.values()), policy))
            kept = {}
    return kept


def _sequence(ctx, node, used):
    """Candidate pCPUs on ``node``, in the order the policy takes them, given the pCPUs used so far.

    Returns a list of pCPUs: isolate yields one per free core, require and prefer whole cores.
    """
    policy = ctx.request.smt_policy
    on_node = ctx.avail & ctx.topology.node_cpus(node)
    used = frozenset(used)
    used_cores = {min(ctx.topology.siblings_of(p)) for p in used}
    sequence = []
    if policy in ("prefer", "require"):
        # Free siblings of cores the guest already occupies.
        for group in ctx.cores(used):
            if policy == "require" and not ctx.clean_core(min(group)):
                continue
            sequence.extend(sorted((group & on_node) - used))
    whole, partial = [], []
    for group in ctx.cores(on_node - used):
        if min(ctx.topology.siblings_of(min(group))) in used_cores:
            continue
        free_part = group & on_node
        if free_part == group and ctx.clean_core(min(group)):
            whole.append(group)
        else:
            partial.append(free_part)
    # Cores whose every thread is in the pool first: a sibling outside it runs host work and
    # cannot be kept idle (isolate), and a lone pool thread cannot pair a guest's vCPUs (prefer).
    whole = [g for g in whole if g == ctx.topology.siblings_of(min(g))] + \
        [g for g in whole if g != ctx.topology.siblings_of(min(g))]
    if policy == "isolate":
        sequence.extend(min(group) for group in whole)
    elif policy == "require":
        for group in whole:
            if len(group) > 1:
                sequence.extend(sorted(group))
    else:
        for group in whole + partial:
            sequence.extend(sorted(group))
    return sequence


def choose_pins(ctx, vcpus, kept, warnings):
    policy = ctx.request.smt_policy
    need = vcpus - len(kept)
    used = list(kept.values())
    taken = []
    if need > 0:
        allowed = [ctx.request.numa_node] if ctx.request.numa_node is not None else list(ctx.topology.nodes)
        sequences = {node: _sequence(ctx, node, used) for node in allowed}
        kept_nodes = sorted({ctx.topology.node_of(p) for p in used})
        order = [n for n in kept_nodes if n in sequences] + [n for n in allowed if n not in kept_nodes]
        fits = [n for n in order if len(sequences[n]) >= need]
        if fits:
            taken = sequences[fits[0]][:need]
        elif ctx.request.numa_node is None and sum(len(s) for s in sequences.values()) >= need:
            rest = [n for n in allowed if n not in kept_nodes]
            rest.sort(key=lambda n: (-len(sequences[n]), n))
            for node in [n for n in kept_nodes if n in sequences] + rest:
                if len(taken) >= need:
                    break
                taken.extend(sequences[node][:need - len(taken)])
        else:
            capacity = sum(len(s) for s in sequences.values()) + len(kept)
            if ctx.request.numa_node is not None:
                capacity = len(sequences[ctx.request.numa_node]) + len(kept)
            raise AllocationError(ctx.describe(vcpus, capacity, ctx.request.numa_node))
    chosen = dict(kept)
    free_vcpus = [v for v in range(vcpus) if v not in chosen]
    for vcpu, pcpu in zip(free_vcpus, taken):
        chosen[vcpu] = pcpu
    cpus = frozenset(chosen.values())
    spare = frozenset()
    if policy in ("isolate", "require"):
        spare = frozenset().union(*ctx.cores(cpus)) - cpus if cpus else frozenset()
        spare &= ctx.avail
        if policy == "isolate":
            _warn_outside_siblings(ctx, cpus, warnings)
        elif spare:
            warnings.append("smt_policy=require: pCPUs %s stay idle, reserved to guest %r (a partly used core)"
                            % (format_cpulist(spare), ctx.name))
    return sorted(chosen.items()), spare
