# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dedicated pCPU allocation for pinned guests: a pure planner.

Inputs are the host topology (``_topology.read_topology``), the realtime pool (the CPUs of the realtime
partition), what every *defined* guest already holds (``_pcpu.holdings_from_domain_xml``: the domain
XML is the only record, there is no state file to drift) and one ``Request``.  ``allocate`` returns an
``Allocation`` or raises ``AllocationError`` with a sentence saying how many pCPUs are free, where,
and who holds the rest.

Rules
-----
* A pCPU is never given to two guests: what a guest holds is what ``_pcpu`` reads from its domain XML,
  including the SMT siblings it reserved (``Allocation.metadata_xml()`` records them).
* Allocating one guest never moves another guest's pins.  A guest that is already pinned keeps the
  pins of every vCPU it still has (growing adds pins, shrinking drops the highest vCPUs), as long
  as those pins are still valid for the request; otherwise its own pins are re-planned.
* Deterministic: the lowest NUMA node, then the lowest core, then the lowest CPU is taken first;
  the result does not depend on the order of the domains.
* One NUMA node where possible; a guest spans nodes only when no single node has room and no
  ``numa_node`` was asked for, and the allocation then carries a warning.

How each SMT policy places vCPUs is in ``_pcpu_policies``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    METADATA_NS,
    AllocationError,
    GuestPins,
    PcpuError,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_policies import (
    Context,
    check_require_possible,
    choose_pins,
    explicit_pins,
    kept_pins,
)

SMT_POLICIES = ("isolate", "prefer", "require")
STATES = ("present", "absent")


@dataclass(frozen=True)
class Request:
    """One guest's wish.  ``pcpus`` is an ordered sequence: vCPU i gets ``pcpus[i]``."""

    name: str
    vcpus: int = None
    smt_policy: str = "prefer"
    numa_node: int = None
    pcpus: tuple = None
    state: str = "present"


@dataclass(frozen=True)
class Allocation:
    """The plan for one guest.

    ``pins`` is a tuple of (vcpu, pcpu) sorted by vcpu; ``reserved`` is every pool CPU the guest
    now holds (its pins, reserved SMT siblings and emulator/iothread pins that fall in the pool);
    ``siblings_reserved`` only the SMT siblings kept idle for it; ``free`` the pool CPUs nobody
    holds afterwards; ``holders`` guest → pool CPUs held afterwards; ``freed`` the pool CPUs this
    plan releases; ``unchanged`` tells whether the guest keeps exactly the pins it had.
    """

    name: str
    state: str
    smt_policy: str
    pool: frozenset
    pins: tuple = ()
    siblings_reserved: frozenset = frozenset()
    reserved: frozenset = frozenset()
    numa_nodes: tuple = ()
    free: frozenset = frozenset()
    holders: dict = field(default_factory=dict)
    freed: frozenset = frozenset()
    unchanged: bool = False
    warnings: tuple = ()

    @property
    def cpus(self):
        return frozenset(pcpu for vcpu, pcpu in self.pins)

    @property
    def spans_nodes(self):
        return len(self.numa_nodes) > 1

    @property
    def vcpupin(self):
        """vCPU index → cpuset string, as libvirt's ``<vcpupin vcpu= cpuset=>`` wants it."""
        return {vcpu: str(pcpu) for vcpu, pcpu in self.pins}

    def metadata_xml(self):
        """The ``<metadata>`` child that records the policy and the reserved siblings."""
        element = '<rtvirt:pcpu xmlns:rtvirt="%s" smt_policy="%s"' % (METADATA_NS, self.smt_policy)
        if self.siblings_reserved:
            element += ' reserved="%s"' % format_cpulist(self.siblings_reserved)
        return element + "/>"

    def as_guest_pins(self, previous=None):
        previous = previous or GuestPins(name=self.name)
        return GuestPins(name=self.name, vcpupin={v: frozenset([p]) for v, p in self.pins},
                         emulator=previous.emulator, iothreads=previous.iothreads,
                         reserved=self.siblings_reserved, smt_policy=self.smt_policy, vcpus=len(self.pins))


def _fmt(cpus):
    return format_cpulist(cpus) if cpus else "none"


def _validate(request):
    if not isinstance(request.name, str) or not request.name:
        raise AllocationError("the guest name must be a non-empty string")
    if request.state not in STATES:
        raise AllocationError("state must be one of %s, not %r" % (", ".join(STATES), request.state))
    if request.smt_policy not in SMT_POLICIES:
        raise AllocationError("smt_policy must be one of %s, not %r" % (", ".join(SMT_POLICIES), request.smt_policy))
    if request.state == "absent":
        return None, None
    pcpus = None
    if request.pcpus is not None:
        pcpus = tuple(int(p) for p in request.pcpus)
        seen, dup = set(), set()
        for pcpu in pcpus:
            (dup if pcpu in seen else seen).add(pcpu)
        if dup:
            raise AllocationError("pcpus for guest %r name pCPU %s more than once" % (request.name, format_cpulist(dup)))
        if not pcpus:
            raise AllocationError("pcpus for guest %r is empty" % request.name)
    vcpus = request.vcpus
    if vcpus is None:
        if pcpus is None:
            raise AllocationError("guest %r: give vcpus or pcpus" % request.name)
        vcpus = len(pcpus)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
        raise AllocationError("guest %r: vcpus must be a positive number, not %r" % (request.name, vcpus))
    if pcpus is not None and len(pcpus) != vcpus:
        raise AllocationError("guest %r asks for %d vCPUs but pcpus names %d pCPUs (%s)"
                              % (request.name, vcpus, len(pcpus), format_cpulist(pcpus)))
    return vcpus, pcpus


def allocate(topology, pool, holdings, request):
    """Plan ``request`` against ``holdings``; return an ``Allocation`` or raise ``AllocationError``."""
    vcpus, pcpus = _validate(request)
    ctx = Context(topology, pool, holdings, request)
    warnings = []
    offline = ctx.pool_given - topology.cpus
    if offline:
        warnings.append("realtime pool CPUs %s are not online and are left out" % format_cpulist(offline))
    if not ctx.pool:
        raise AllocationError("the realtime pool %s has no online CPU (online: %s)"
                              % (_fmt(ctx.pool_given), format_cpulist(topology.cpus)))
    if request.numa_node is not None and request.numa_node not in topology.nodes:
        raise AllocationError("numa_node %d does not exist (nodes: %s)"
                              % (request.numa_node, ", ".join(str(n) for n in topology.nodes)))
    if request.numa_node is not None and not (ctx.pool & topology.node_cpus(request.numa_node)):
        raise AllocationError("NUMA node %d has no CPU in the realtime pool %s"
                              % (request.numa_node, format_cpulist(ctx.pool_given)))

    if request.state == "absent":
        return _finish(ctx, (), frozenset(), warnings)

    if request.smt_policy == "require":
        check_require_possible(ctx)

    if pcpus is not None:
        pins, spare = explicit_pins(ctx, pcpus, warnings)
    else:
        kept = kept_pins(ctx, vcpus, warnings)
        pins, spare = choose_pins(ctx, vcpus, kept, warnings)
    return _finish(ctx, pins, spare, warnings)


def ordered_pcpus(elements):
    """Expand each element (a CPU or a range) in ascending order, keeping the elements' order."""
    result = []
    for element in elements:
        result.extend(sorted(parse_cpulist(element, what="pcpus element")))
    return tuple(result)


def requests_from_entries(entries, defaults):
    """pcpu_allocation's ``guests`` entries as ``Request`` objects plus the emulator CPUs by guest name.

    ``defaults`` holds ``state``, ``vcpus``, ``smt_policy``, ``numa_node`` and ``pcpus`` for the keys an
    entry leaves out (or sets to None).  The module and the realtime_vm role's steady-state check both
    build their requests here, so both plan the same guests.
    """
    requests, emulators = [], {}
    for entry in entries:
        def pick(key):
            return entry[key] if entry.get(key) is not None else defaults.get(key)
        pcpus = pick("pcpus")
        state = pick("state")
        if state == "present" and pick("vcpus") is None and pcpus is None:
            raise PcpuError("guest %r: give vcpus or pcpus" % entry["name"])
        requests.append(Request(name=entry["name"], vcpus=pick("vcpus"), smt_policy=pick("smt_policy"),
                                numa_node=pick("numa_node"), state=state,
                                pcpus=ordered_pcpus(pcpus) if pcpus is not None else None))
        if entry.get("emulator_cpus"):
            emulators[entry["name"]] = parse_cpulist(entry["emulator_cpus"],
                                                     what="emulator_cpus of guest %r" % entry["name"])
    return requests, emulators


def allocate_all(topology, pool, holdings, requests, emulators=None):
    """Plan several guests as one change; return their ``Allocation`` objects in request order.

    The guests are planned the way the realtime_vm role applies them: every ``absent`` request first
    (they free their pCPUs), then the ``present`` ones in list order, each seeing the pins planned
    for the guests before it as held, exactly as if those were already defined.  ``emulators`` maps a
    guest name to the CPUs its emulator threads will be pinned to; where they fall into the pool,
    the guest's own vCPUs avoid them and later guests see them as held (without an entry a guest keeps
    the emulator pins of its defined XML).

    Raises ``AllocationError`` for the first request that cannot be met, naming the guests of the
    same list it was planned after, so that a caller can refuse the whole list before defining any
    guest: bad input anywhere in the list changes nothing.
    """
    requests = list(requests)
    emulators = dict(emulators or {})
    seen, dup = set(), []
    for request in requests:
        if request.name in seen and request.name not in dup:
            dup.append(request.name)
        seen.add(request.name)
    if dup:
        raise AllocationError("guest %s is listed more than once" % ", ".join(repr(n) for n in dup))
    order = [i for i, r in enumerate(requests) if r.state == "absent"] + \
        [i for i, r in enumerate(requests) if r.state != "absent"]
    plans = [None] * len(requests)
    placed = []  # present guests of this list planned so far
    for index in order:
        request = requests[index]
        if request.state != "absent" and request.name in emulators:
            # The emulator pins it is about to get count as its own: its vCPUs are not planned onto them.  Its I/O
            # threads go there too (realtime_domain pins them beside the emulator), so an I/O thread pin of the old
            # definition on a realtime pCPU is not held any longer.
            own = holdings.get(request.name) or GuestPins(name=request.name)
            emulator = frozenset(emulators[request.name])
            holdings = holdings.replace(GuestPins(
                name=own.name, vcpupin=own.vcpupin, emulator=emulator, iothreads=emulator if own.iothreads else
                frozenset(), reserved=own.reserved, smt_policy=own.smt_policy, vcpus=own.vcpus))
        try:
            plan = allocate(topology, pool, holdings, request)
        except AllocationError as exc:
            text = str(exc)
            if repr(request.name) not in text:  # e.g. "NUMA node 1 has no CPU in the realtime pool 2"
                text = "guest %r: %s" % (request.name, text)
            if placed:
                text += (" (planned after %s of the same list, which count as holding the pCPUs planned for them)"
                         % ", ".join(placed))
            if text == str(exc):
                raise
            raise AllocationError(text) from exc
        holdings = holdings.apply(plan)  # keeps the emulator pins set above
        if request.state != "absent":
            placed.append(request.name)
        plans[index] = plan
    return plans


def _finish(ctx, pins, spare, warnings):
    request = ctx.request
    pins = tuple(sorted(pins))
    cpus = frozenset(pcpu for vcpu, pcpu in pins)
    nodes = tuple(sorted({ctx.topology.node_of(p) for p in cpus}))
    if len(nodes) > 1:
        warnings.append("guest %r spans NUMA nodes %s: memory and caches are not all local"
                        % (ctx.name, ", ".join(str(n) for n in nodes)))
    own_before = ctx.own.held & ctx.pool
    if request.state == "absent":
        after = ctx.others
    else:
        guest = GuestPins(name=ctx.name, vcpupin={v: frozenset([p]) for v, p in pins},
                          emulator=ctx.own.emulator, iothreads=ctx.own.iothreads,
                          reserved=frozenset(spare), smt_policy=request.smt_policy, vcpus=len(pins))
        after = ctx.others.replace(guest)
    own_after = (after.get(ctx.name).held & ctx.pool) if ctx.name in after else frozenset()
    old_pins = tuple(sorted((v, min(c)) for v, c in ctx.own.vcpupin.items() if len(c) == 1))
    unchanged = (request.state == "present" and len(old_pins) == len(ctx.own.vcpupin)
                 and old_pins == pins and ctx.own.reserved == frozenset(spare))
    return Allocation(
        name=ctx.name, state=request.state, smt_policy=request.smt_policy, pool=ctx.pool,
        pins=pins, siblings_reserved=frozenset(spare), reserved=own_after, numa_nodes=nodes,
        free=ctx.pool - after.held(), holders=after.holders_of(ctx.pool),
        freed=own_before - own_after, unchanged=unchanged, warnings=tuple(warnings))
