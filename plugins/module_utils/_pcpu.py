# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dedicated pCPU allocation for pinned guests: a pure planner.

Inputs are the host topology (``_topology.read_topology``), the realtime pool (the CPUs of the realtime
partition), what every *defined* guest already holds (``holdings_from_domain_xml``: the domain XML
is the only record, there is no state file to drift) and one ``Request``.  ``allocate`` returns an
``Allocation`` or raises ``AllocationError`` with a sentence saying how many pCPUs are free, where,
and who holds the rest.

Rules
-----
* A pCPU is never given to two guests.  A guest holds the CPUs in its ``<vcpupin>``,
  ``<emulatorpin>``, ``<iothreadpin>`` elements (``<vcpu cpuset=...>`` for vCPUs without a
  ``<vcpupin>``) and the SMT siblings it reserved, recorded in the domain's ``<metadata>`` as
  ``<rtvirt:pcpu xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1" smt_policy="isolate" reserved="10-11"/>``
  (``Allocation.metadata_xml()``).  Without that element a reservation is lost when the domain is
  redefined, and the siblings become free for the next guest.
* Allocating one guest never moves another guest's pins.  A guest that is already pinned keeps the
  pins of every vCPU it still has (growing adds pins, shrinking drops the highest vCPUs), as long
  as those pins are still valid for the request; otherwise its own pins are re-planned.
* Deterministic: the lowest NUMA node, then the lowest core, then the lowest CPU is taken first;
  the result does not depend on the order of the domains.
* One NUMA node where possible; a guest spans nodes only when no single node has room and no
  ``numa_node`` was asked for, and the allocation then carries a warning.

SMT policies (OpenStack Nova ``hw:cpu_thread_policy``, ``nova/virt/hardware.py``)
---------------------------------------------------------------------------------
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

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    parse_libvirt_cpuset as _parse_libvirt_cpuset,
)

SMT_POLICIES = ("isolate", "prefer", "require")
STATES = ("present", "absent")
METADATA_NS = "urn:rtvirt:kvm:pcpu:1"
_META_TAG = "{%s}pcpu" % METADATA_NS


class PcpuError(Exception):
    """Base class of this module's errors; the message is meant for the operator."""


class DomainXMLError(PcpuError):
    """A domain XML document is not usable (not XML, no name, bad cpuset)."""


class AllocationError(PcpuError):
    """The request cannot be met or is invalid; the message says why and who holds what."""


# --------------------------------------------------------------------------------------------
# Holdings, from libvirt domain XML


def parse_libvirt_cpuset(text, what="cpuset"):
    """:func:`_cpulist.parse_libvirt_cpuset`, failing with this module's DomainXMLError."""
    try:
        return _parse_libvirt_cpuset(text, what=what)
    except CpuListError as exc:
        raise DomainXMLError(str(exc)) from exc


@dataclass(frozen=True)
class GuestPins:
    """What one defined guest holds: ``vcpupin`` maps vCPU index to its cpuset."""

    name: str
    vcpupin: dict = field(default_factory=dict)
    emulator: frozenset = frozenset()
    iothreads: frozenset = frozenset()
    reserved: frozenset = frozenset()
    smt_policy: str = None
    vcpus: int = 0

    @property
    def vcpu_cpus(self):
        return frozenset().union(*self.vcpupin.values()) if self.vcpupin else frozenset()

    @property
    def other_cpus(self):
        """CPUs held for the emulator and I/O threads."""
        return self.emulator | self.iothreads

    @property
    def held(self):
        return self.vcpu_cpus | self.other_cpus | self.reserved


def guest_pins_from_domain_xml(xml_text):
    """Parse one libvirt domain XML document into ``GuestPins``."""
    try:
        root = ET.fromstring(xml_text)
    except (ET.ParseError, TypeError) as exc:
        raise DomainXMLError("domain XML is not well-formed: %s" % exc) from exc
    if root.tag != "domain":
        raise DomainXMLError("domain XML has root element <%s>, expected <domain>" % root.tag)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    what = "domain %r" % name
    vcpu_el = root.find("vcpu")
    count = 0
    default = None
    if vcpu_el is not None:
        try:
            count = int((vcpu_el.text or "0").strip())
        except ValueError as exc:
            raise DomainXMLError("%s: <vcpu> %r is not a number" % (what, vcpu_el.text)) from exc
        if vcpu_el.get("cpuset"):
            default = parse_libvirt_cpuset(vcpu_el.get("cpuset"), what="%s <vcpu cpuset>" % what)
    vcpupin = {}
    emulator = None
    iothreads = set()
    cputune = root.find("cputune")
    if cputune is not None:
        for pin in cputune.findall("vcpupin"):
            try:
                index = int(pin.get("vcpu"))
            except (TypeError, ValueError) as exc:
                raise DomainXMLError("%s: <vcpupin vcpu=%r> is not a number" % (what, pin.get("vcpu"))) from exc
            vcpupin[index] = parse_libvirt_cpuset(pin.get("cpuset"), what="%s vcpupin %d" % (what, index))
        pin = cputune.find("emulatorpin")
        if pin is not None:
            emulator = parse_libvirt_cpuset(pin.get("cpuset"), what="%s emulatorpin" % what)
        for pin in cputune.findall("iothreadpin"):
            iothreads |= parse_libvirt_cpuset(pin.get("cpuset"), what="%s iothreadpin" % what)
    if default is not None:
        for index in range(count):
            vcpupin.setdefault(index, default)
        if emulator is None:
            emulator = default
    reserved = frozenset()
    policy = None
    metadata = root.find("metadata")
    if metadata is not None:
        meta = metadata.find(_META_TAG)
        if meta is not None:
            policy = meta.get("smt_policy")
            if meta.get("reserved"):
                try:
                    reserved = parse_cpulist(meta.get("reserved"), what="%s rtvirt:pcpu reserved" % what)
                except CpuListError as exc:
                    raise DomainXMLError(str(exc)) from exc
    return GuestPins(name=name, vcpupin=vcpupin, emulator=emulator or frozenset(),
                     iothreads=frozenset(iothreads), reserved=reserved, smt_policy=policy,
                     vcpus=max(count, len(vcpupin)))


class Holdings:
    """Guest name → ``GuestPins`` for every defined guest; iteration is sorted by name."""

    def __init__(self, guests=()):
        self._guests = {}
        for guest in guests:
            if guest.name in self._guests:
                raise DomainXMLError("domain %r is given twice" % guest.name)
            self._guests[guest.name] = guest

    def __contains__(self, name):
        return name in self._guests

    def __iter__(self):
        return iter(sorted(self._guests))

    def __len__(self):
        return len(self._guests)

    def get(self, name):
        return self._guests.get(name)

    def guests(self):
        return [self._guests[n] for n in sorted(self._guests)]

    def without(self, name):
        return Holdings(g for g in self.guests() if g.name != name)

    def replace(self, guest):
        """A copy with ``guest`` added or replacing the guest of the same name."""
        return Holdings([g for g in self.guests() if g.name != guest.name] + [guest])

    def apply(self, allocation):
        """The holdings as they are once the allocation's pins are defined in the domain XML."""
        if allocation.state == "absent":
            return self.without(allocation.name)
        return self.replace(allocation.as_guest_pins(self.get(allocation.name)))

    def held(self):
        return frozenset().union(*(g.held for g in self._guests.values())) if self._guests else frozenset()

    def holders_of(self, cpus):
        """Guest name → the part of ``cpus`` it holds (guests holding none are left out)."""
        result = {}
        for guest in self.guests():
            part = guest.held & frozenset(cpus)
            if part:
                result[guest.name] = part
        return result


def holdings_from_domain_xml(xml_texts):
    """Build ``Holdings`` from one domain XML string or an iterable of them."""
    if isinstance(xml_texts, (str, bytes)):
        xml_texts = [xml_texts]
    return Holdings(guest_pins_from_domain_xml(text) for text in xml_texts)


# --------------------------------------------------------------------------------------------
# Request and result


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


# --------------------------------------------------------------------------------------------
# The planner


def _fmt(cpus):
    return format_cpulist(cpus) if cpus else "none"


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


class _Context:
    """Everything the policies need, computed once per call."""

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


def allocate(topology, pool, holdings, request):
    """Plan ``request`` against ``holdings``; return an ``Allocation`` or raise ``AllocationError``."""
    vcpus, pcpus = _validate(request)
    ctx = _Context(topology, pool, holdings, request)
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
        _check_require_possible(ctx)

    if pcpus is not None:
        pins, spare = _explicit(ctx, pcpus, warnings)
    else:
        kept = _kept_pins(ctx, vcpus, warnings)
        pins, spare = _choose(ctx, vcpus, kept, warnings)
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
            # The emulator pins it is about to get count as its own: its vCPUs are not planned onto them.
            own = holdings.get(request.name) or GuestPins(name=request.name)
            holdings = holdings.replace(GuestPins(
                name=own.name, vcpupin=own.vcpupin, emulator=frozenset(emulators[request.name]),
                iothreads=own.iothreads, reserved=own.reserved, smt_policy=own.smt_policy, vcpus=own.vcpus))
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


def _check_require_possible(ctx):
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


def _explicit(ctx, pcpus, warnings):
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


def _kept_pins(ctx, vcpus, warnings):
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


def _choose(ctx, vcpus, kept, warnings):
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
