# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure rendering of a realtime guest's libvirt domain XML, and the comparison of the parts we own.

``render(spec, base_xml)`` writes into a domain XML (the guest's current definition, a base given by
the operator, or a tiny diskless default) exactly these parts and leaves everything else alone:

- ``<name>``, ``<memory>``/``<currentMemory>``, ``<vcpu placement='static'>N</vcpu>``
- ``<cputune>``: one ``<vcpupin>`` per vCPU, ``<emulatorpin>``, one ``<vcpusched scheduler='fifo'>``
  (other ``<cputune>`` children, e.g. ``<iothreadpin>``, are kept)
- ``<numatune><memory mode='strict' nodeset=.../></numatune>`` (when NUMA nodes are given)
- ``<resource><partition>``
- the ``<rtvirt:pcpu>`` element of ``<metadata>`` that pcpu_allocation returns

``owned_view(xml)`` extracts those parts in a normalized form (CPU lists as sets, memory in KiB) so
that the XML libvirt hands back (with its uuid, devices, ``unit='KiB'``, ``0-0`` vs ``0``) compares
equal to what we rendered: redefining an unchanged guest is then not needed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    MAX_CPUS,
    format_cpulist,
    parse_cpulist,
    parse_libvirt_cpuset,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    METADATA_NS,
    DomainXMLError,
)

FIFO_MIN = 1
FIFO_MAX = 99
# libvirt itself only refuses '/' and newlines (and the empty name); guest names also become file
# names (/run/libvirt/qemu/<name>.pid) and cgroup names (qemu-<id>-<name>.libvirt-qemu), so this
# collection accepts the conservative subset that is safe everywhere.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}$")
_META_TAG = "{%s}pcpu" % METADATA_NS
GUEST_KEYS = frozenset(("name", "vcpus", "memory_mib", "partition", "pcpus", "smt_policy", "fifo_priority",
                        "numa_node", "base_xml", "state", "emulator_cpus", "domain_type", "autostart"))
_UNITS_KIB = {"b": 1.0 / 1024, "bytes": 1.0 / 1024, "kb": 1000.0 / 1024, "k": 1, "kib": 1,
              "mb": 1000.0 ** 2 / 1024, "m": 1024, "mib": 1024, "gb": 1000.0 ** 3 / 1024, "g": 1024 ** 2,
              "gib": 1024 ** 2, "tb": 1000.0 ** 4 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}

ET.register_namespace("rtvirt", METADATA_NS)


class DomainSpecError(ValueError):
    """The guest as asked cannot be rendered; the message says which value and why."""


@dataclass(frozen=True)
class DomainSpec:
    """What the realtime_vm role wants for one guest.  ``vcpupin`` maps vCPU index → CPU list."""

    name: str
    vcpus: int
    memory_mib: int
    vcpupin: dict
    emulator_cpus: str
    fifo_priority: int = 1
    partition: str = "/rt"
    numa_nodes: tuple = ()
    metadata: str = ""
    domain_type: str = "kvm"


def check_name(name):
    """Raise DomainSpecError for a guest name this collection (or libvirt) refuses."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DomainSpecError(
            "guest name %r is not accepted: use 1-64 characters, letters, digits and _ . + : -, starting with a "
            "letter or digit (libvirt refuses '/' and newlines; the name also becomes a file and cgroup name)"
            % (name,))


def guest_list_problems(guests):
    """Everything wrong with a realtime_vm_guests list that can be known without the host; messages."""
    problems, seen = [], set()
    for index, guest in enumerate(guests):
        if not isinstance(guest, dict):
            problems.append("guest #%d is not a dict: %r" % (index, guest))
            continue
        name = guest.get("name")
        try:
            check_name(name)
        except DomainSpecError as exc:
            problems.append("guest #%d: %s" % (index, exc))
        if name in seen:
            problems.append("guest %s is listed twice" % (name,))
        seen.add(name)
        if guest.get("state", "present") not in ("present", "absent"):
            problems.append("guest %s: state %r must be present or absent" % (name, guest.get("state")))
        if guest.get("state", "present") == "absent":
            continue
        priority = guest.get("fifo_priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not FIFO_MIN <= priority <= FIFO_MAX):
            problems.append("guest %s: fifo_priority %r is out of range: SCHED_FIFO priorities are %d-%d"
                            % (name, priority, FIFO_MIN, FIFO_MAX))
        vcpus = guest.get("vcpus")
        if vcpus is None and not guest.get("pcpus"):
            problems.append("guest %s: give vcpus (or pcpus)" % (name,))
        elif vcpus is not None and (isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1):
            problems.append("guest %s: vcpus must be a number of at least 1, got %r" % (name, vcpus))
        memory = guest.get("memory_mib")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory < 1):
            problems.append("guest %s: memory_mib must be a number of at least 1, got %r" % (name, memory))
        autostart = guest.get("autostart")
        if autostart is not None and not isinstance(autostart, bool):
            problems.append("guest %s: autostart must be true or false, got %r" % (name, autostart))
        unknown = sorted(set(guest) - GUEST_KEYS)
        if unknown:
            problems.append("guest %s: unknown keys %s (known: %s)"
                            % (name, ", ".join(unknown), ", ".join(sorted(GUEST_KEYS))))
    return problems


ALLOCATION_KEYS = ("name", "state", "vcpus", "pcpus", "smt_policy", "numa_node", "emulator_cpus")


def allocation_requests(guests, smt_policy, emulator_cpus):
    """The realtime_vm_guests list as pcpu_allocation's ``guests`` entries, the role's defaults filled in.

    Only the keys the allocation needs are kept; ``state`` defaults to present, ``smt_policy`` and
    ``emulator_cpus`` (for absent guests none) to the role's values.
    """
    result = []
    for guest in guests:
        entry = {key: guest[key] for key in ALLOCATION_KEYS if guest.get(key) is not None}
        entry.setdefault("state", "present")
        if entry["state"] == "present":
            entry.setdefault("smt_policy", smt_policy)
            entry.setdefault("emulator_cpus", emulator_cpus)
        else:
            entry = {"name": entry["name"], "state": entry["state"]}
        if "pcpus" in entry:
            entry["pcpus"] = [str(cpu) for cpu in entry["pcpus"]]
        result.append(entry)
    return result


def check_spec(spec):
    """Validate a DomainSpec before anything is read or written; raise DomainSpecError."""
    check_name(spec.name)
    # ansible-core's int check passes a boolean through (bool is an int), and True would be written as "True".
    for option in ("fifo_priority", "vcpus", "memory_mib"):
        if isinstance(getattr(spec, option), bool):
            raise DomainSpecError("guest %s: %s is %r, a boolean: give a number"
                                  % (spec.name, option, getattr(spec, option)))
    if not isinstance(spec.fifo_priority, int) or not FIFO_MIN <= spec.fifo_priority <= FIFO_MAX:
        raise DomainSpecError("guest %s: fifo_priority %r is out of range: SCHED_FIFO priorities are %d-%d"
                              % (spec.name, spec.fifo_priority, FIFO_MIN, FIFO_MAX))
    if not isinstance(spec.vcpus, int) or spec.vcpus < 1:
        raise DomainSpecError("guest %s: vcpus must be at least 1, got %r" % (spec.name, spec.vcpus))
    if not isinstance(spec.memory_mib, int) or spec.memory_mib < 1:
        raise DomainSpecError("guest %s: memory_mib must be at least 1, got %r" % (spec.name, spec.memory_mib))
    if spec.vcpus > MAX_CPUS:
        # Every vCPU is pinned to a pCPU of its own, and no Linux host has more than MAX_CPUS; the check also keeps
        # the set of vCPU numbers below from growing with a mistyped count.
        raise DomainSpecError("guest %s: vcpus %d is more than any host has CPUs to pin them to (at most %d)"
                              % (spec.name, spec.vcpus, MAX_CPUS))
    wanted = set(range(spec.vcpus))
    given = set()
    for key, cpus in spec.vcpupin.items():
        try:
            given.add(int(key))
        except (TypeError, ValueError) as exc:
            raise DomainSpecError("guest %s: vcpupin key %r is not a vCPU number" % (spec.name, key)) from exc
        _cpus(cpus, "guest %s: vcpupin %s" % (spec.name, key))
    if given != wanted:
        raise DomainSpecError("guest %s: vcpupin must pin exactly vCPUs %s, got %s"
                              % (spec.name, format_cpulist(wanted), format_cpulist(given) or "none"))
    if not spec.emulator_cpus:
        raise DomainSpecError("guest %s: emulator_cpus is empty; give the housekeeping CPUs" % spec.name)
    _cpus(spec.emulator_cpus, "guest %s: emulator_cpus" % spec.name)
    if not spec.partition or not spec.partition.startswith("/"):
        raise DomainSpecError("guest %s: partition %r must be an absolute path such as /rt"
                              % (spec.name, spec.partition))
    if spec.domain_type not in ("kvm", "qemu"):
        raise DomainSpecError("guest %s: domain type %r must be kvm or qemu" % (spec.name, spec.domain_type))
    if spec.metadata:
        try:
            meta = ET.fromstring(spec.metadata)
        except ET.ParseError as exc:
            raise DomainSpecError("guest %s: metadata is not well-formed XML: %s" % (spec.name, exc)) from exc
        if meta.tag != _META_TAG:
            raise DomainSpecError("guest %s: metadata must be the <rtvirt:pcpu> element pcpu_allocation returns"
                                  % spec.name)


def _cpus(text, what):
    try:
        return parse_cpulist(str(text), what=what)
    except CpuListError as exc:
        raise DomainSpecError(str(exc)) from exc


def default_domain_xml(name, domain_type="kvm"):
    """A tiny diskless guest that idles in its BIOS: no disk, no network, no balloon."""
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = name
    ET.SubElement(ET.SubElement(domain, "os"), "type", arch="x86_64").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def _parse(xml_text, what):
    try:
        root = ET.fromstring(xml_text)
    except (ET.ParseError, TypeError) as exc:
        raise DomainSpecError("%s is not well-formed XML: %s" % (what, exc)) from exc
    if root.tag != "domain":
        raise DomainSpecError("%s has root element <%s>, expected <domain>" % (what, root.tag))
    return root


def _child(parent, tag, index=None):
    """The first ``tag`` child of parent, created (at ``index`` if given) when missing."""
    element = parent.find(tag)
    if element is None:
        element = ET.Element(tag)
        if index is None:
            parent.append(element)
        else:
            parent.insert(index, element)
    return element


def _after(root, *tags):
    """Insertion index just after the last of ``tags`` present in root (libvirt does not care about
    order, but people reading the XML do)."""
    index = 0
    for position, child in enumerate(list(root)):
        if child.tag in tags:
            index = position + 1
    return index


def render(spec, base_xml=None):
    """The domain XML for ``spec``, written into ``base_xml`` (or a tiny diskless default)."""
    check_spec(spec)
    if base_xml:
        root = _parse(base_xml, "base_xml")
    else:
        root = _parse(default_domain_xml(spec.name, spec.domain_type), "default XML")
    _child(root, "name", 0).text = spec.name
    for tag in ("memory", "currentMemory"):
        element = _child(root, tag, _after(root, "name", "uuid", "title", "description", "metadata", "memory"))
        element.attrib.clear()
        element.set("unit", "KiB")
        element.text = str(spec.memory_mib * 1024)
    vcpu = _child(root, "vcpu", _after(root, "name", "uuid", "memory", "currentMemory", "metadata"))
    vcpu.attrib.clear()
    vcpu.set("placement", "static")
    vcpu.text = str(spec.vcpus)
    vcpus_el = root.find("vcpus")  # per-vCPU hotplug state would contradict the count
    if vcpus_el is not None:
        root.remove(vcpus_el)

    cputune = _child(root, "cputune", _after(root, "vcpu", "iothreads"))
    for child in list(cputune):
        if child.tag in ("vcpupin", "emulatorpin", "vcpusched"):
            cputune.remove(child)
    pins = [ET.Element("vcpupin", vcpu=str(index), cpuset=format_cpulist(_cpus(spec.vcpupin[key], "vcpupin")))
            for index, key in sorted((int(k), k) for k in spec.vcpupin)]
    pins.append(ET.Element("emulatorpin", cpuset=format_cpulist(_cpus(spec.emulator_cpus, "emulator_cpus"))))
    for position, element in enumerate(pins):
        cputune.insert(position, element)
    cputune.append(ET.Element("vcpusched", vcpus=format_cpulist(range(spec.vcpus)), scheduler="fifo",
                              priority=str(spec.fifo_priority)))

    numatune = root.find("numatune")
    if spec.numa_nodes:
        numatune = _child(root, "numatune", _after(root, "cputune"))
        memory = _child(numatune, "memory")
        memory.attrib.clear()
        memory.set("mode", "strict")
        memory.set("nodeset", format_cpulist(spec.numa_nodes))
    elif numatune is not None and numatune.find("memory") is not None:
        numatune.remove(numatune.find("memory"))
        if not len(numatune):
            root.remove(numatune)

    resource = _child(root, "resource", _after(root, "cputune", "numatune"))
    _child(resource, "partition").text = spec.partition

    metadata = root.find("metadata")
    if metadata is not None:
        for child in list(metadata):
            if child.tag == _META_TAG:
                metadata.remove(child)
    if spec.metadata:
        metadata = _child(root, "metadata", _after(root, "name", "uuid", "title", "description"))
        metadata.append(ET.fromstring(spec.metadata))
    elif metadata is not None and not len(metadata):
        root.remove(metadata)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _kib(element, what):
    if element is None or element.text is None:
        return None
    unit = (element.get("unit") or "KiB").lower()
    if unit not in _UNITS_KIB:
        raise DomainXMLError("%s: unknown unit %r" % (what, element.get("unit")))
    try:
        return int(round(int(element.text.strip()) * _UNITS_KIB[unit]))
    except ValueError as exc:
        raise DomainXMLError("%s %r is not a number" % (what, element.text)) from exc


def _cpuset(text, what):
    if not text:
        return None
    try:
        return format_cpulist(parse_libvirt_cpuset(text, what=what))
    except CpuListError as exc:
        raise DomainXMLError(str(exc)) from exc


def owned_view(xml_text):
    """The parts of a domain XML this collection manages, normalized; a JSON-friendly dict."""
    root = _parse(xml_text, "domain XML")
    name = (root.findtext("name") or "").strip()
    view = {
        "name": name,
        "memory_kib": _kib(root.find("memory"), "memory"),
        "vcpus": None,
        "vcpu_placement": None,
        "vcpu_cpuset": None,
        "vcpupin": {},
        "emulatorpin": None,
        "vcpusched": [],
        "numatune_memory": None,
        "partition": None,
        "rtvirt_pcpu": None,
    }
    vcpu = root.find("vcpu")
    if vcpu is not None:
        view["vcpus"] = int((vcpu.text or "0").strip())
        view["vcpu_placement"] = vcpu.get("placement", "static")
        view["vcpu_cpuset"] = _cpuset(vcpu.get("cpuset"), "vcpu cpuset")
    cputune = root.find("cputune")
    if cputune is not None:
        for pin in cputune.findall("vcpupin"):
            view["vcpupin"][str(int(pin.get("vcpu")))] = _cpuset(pin.get("cpuset"), "vcpupin")
        pin = cputune.find("emulatorpin")
        if pin is not None:
            view["emulatorpin"] = _cpuset(pin.get("cpuset"), "emulatorpin")
        for sched in cputune.findall("vcpusched"):
            view["vcpusched"].append({"vcpus": _cpuset(sched.get("vcpus"), "vcpusched vcpus"),
                                      "scheduler": sched.get("scheduler"),
                                      "priority": int(sched.get("priority")) if sched.get("priority") else None})
        view["vcpusched"].sort(key=lambda item: str(item["vcpus"]))
    memory = root.find("numatune/memory")
    if memory is not None:
        view["numatune_memory"] = {"mode": memory.get("mode", "strict"),
                                   "nodeset": _cpuset(memory.get("nodeset"), "numatune nodeset")}
    view["partition"] = (root.findtext("resource/partition") or "").strip() or None
    meta = root.find("metadata/" + _META_TAG)
    if meta is not None:
        view["rtvirt_pcpu"] = dict(sorted(meta.attrib.items()))
    return view


def view_text(view):
    """A stable, line-per-item text of an owned_view for diffs."""
    if view is None:
        return ""
    lines = []
    for key in sorted(view):
        lines.append("%s: %s" % (key, _flat(view[key])))
    return "\n".join(lines) + "\n"


def _flat(value):
    if isinstance(value, dict):
        return "{" + ", ".join("%s=%s" % (k, _flat(value[k])) for k in sorted(value, key=_natural)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return str(value)


def _natural(key):
    return (0, int(key), "") if str(key).isdigit() else (1, 0, str(key))


def differences(current_xml, rendered_xml):
    """Keys of owned_view that differ between the current definition (None: not defined) and ours."""
    if current_xml is None:
        return sorted(owned_view(rendered_xml))
    before, after = owned_view(current_xml), owned_view(rendered_xml)
    return sorted(key for key in after if before.get(key) != after[key])
