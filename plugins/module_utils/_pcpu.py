# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pCPU books: what every defined guest holds, read from its libvirt domain XML.

The domain XML is the only record, there is no state file to drift.  A guest holds the CPUs in its
``<vcpupin>``, ``<emulatorpin>``, ``<iothreadpin>`` elements (``<vcpu cpuset=...>`` for vCPUs without a
``<vcpupin>``) and the SMT siblings it reserved, recorded in the domain's ``<metadata>`` as
``<rtvirt:pcpu xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1" smt_policy="isolate" reserved="10-11"/>``
(``_pcpu_allocator.Allocation.metadata_xml()``).  Without that element a reservation is lost when the
domain is redefined, and the siblings become free for the next guest.

The books are read, then written (a definition), by separate runs that do not know of each other; the writer
re-checks its claim against the books under one host-wide lock (``PCPU_LOCK_PATH``, see ``check_claim``), so that
of two runs planned from the same books for the same pCPU exactly one defines its guest.

The errors of the allocator (``_pcpu_allocator``, ``_pcpu_policies``) are defined here too, under the one
base class ``PcpuError`` that callers catch.
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

METADATA_NS = "urn:rtvirt:kvm:pcpu:1"
# Held by a writer from its re-check of the books to its define; never across tasks.  Not the cpuset engine's
# lock: the qemu hook takes that one while libvirt starts a guest.
PCPU_LOCK_PATH = "/run/lock/rtvirt-kvm-pcpu.lock"
_META_TAG = "{%s}pcpu" % METADATA_NS


class PcpuError(Exception):
    """Base class of this module's errors; the message is meant for the operator."""


class DomainXMLError(PcpuError):
    """A domain XML document is not usable (not XML, no name, bad cpuset)."""


class AllocationError(PcpuError):
    """The request cannot be met or is invalid; the message says why and who holds what."""


def _cpuset(text, what):
    """A cpuset attribute of a domain XML; a bad one is a DomainXMLError, as every fault of the XML is here."""
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
            default = _cpuset(vcpu_el.get("cpuset"), "%s <vcpu cpuset>" % what)
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
            vcpupin[index] = _cpuset(pin.get("cpuset"), "%s vcpupin %d" % (what, index))
        pin = cputune.find("emulatorpin")
        if pin is not None:
            emulator = _cpuset(pin.get("cpuset"), "%s emulatorpin" % what)
        for pin in cputune.findall("iothreadpin"):
            iothreads |= _cpuset(pin.get("cpuset"), "%s iothreadpin" % what)
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
                    reserved = parse_cpulist(meta.get("reserved"), "%s rtvirt:pcpu reserved" % what)
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


def claim_conflicts(holdings, wanted, previous=None):
    """Guest name → the pCPUs it holds that ``wanted`` newly claims for vCPUs or reserved SMT siblings.

    ``wanted`` is the ``GuestPins`` of the definition about to be written, ``previous`` those of the guest's
    current definition (None for a new guest).  What the guest claimed before is not claimed again, so an
    overlap that was already there is left to the allocator's books; what counts is a pCPU that another guest
    took since this guest's pCPUs were planned.  Emulator and I/O thread pins claim nothing here: guests share
    the housekeeping CPUs for them.
    """
    claimed = wanted.vcpu_cpus | wanted.reserved
    if previous is not None:
        claimed -= previous.vcpu_cpus | previous.reserved
    return holdings.without(wanted.name).holders_of(claimed)


def check_claim(holdings, wanted, previous=None):
    """Raise ``AllocationError`` naming the holders when ``wanted`` claims a pCPU another guest holds."""
    conflicts = claim_conflicts(holdings, wanted, previous)
    if not conflicts:
        return
    taken = frozenset().union(*conflicts.values())
    raise AllocationError(
        "guest %r cannot be defined with pCPU %s: already held by %s, defined by another run since this guest's "
        "pCPUs were planned, or pinned by hand; a pCPU has one owner. Plan again: pcpu_allocation or the "
        "realtime_vm role picks from the pCPUs free now"
        % (wanted.name, format_cpulist(taken),
           ", ".join("guest %r (%s)" % (name, format_cpulist(cpus)) for name, cpus in sorted(conflicts.items()))))
