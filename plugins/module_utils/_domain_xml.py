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

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat
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
# QEMU makes one thread per I/O thread object; more than a guest has disk queues to give them is a mistake.
MAX_IOTHREADS = 64
FIFO_MAX = 99
# libvirt itself only refuses '/' and newlines (and the empty name); guest names also become file
# names (/run/libvirt/qemu/<name>.pid) and cgroup names (qemu-<id>-<name>.libvirt-qemu), so this
# collection accepts the conservative subset that is safe everywhere.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}$")
_META_TAG = "{%s}pcpu" % METADATA_NS
# The digest of the operator's base_xml a definition was made from (plan_definition).
BASE_NS = "urn:rtvirt:kvm:base:1"
_BASE_TAG = "{%s}base" % BASE_NS
GUEST_KEYS = frozenset(("name", "vcpus", "memory_mib", "partition", "pcpus", "smt_policy", "fifo_priority",
                        "numa_node", "base_xml", "state", "emulator_cpus", "domain_type", "iothreads", "autostart"))
_UNITS_KIB = {"b": 1.0 / 1024, "bytes": 1.0 / 1024, "kb": 1000.0 / 1024, "k": 1, "kib": 1,
              "mb": 1000.0 ** 2 / 1024, "m": 1024, "mib": 1024, "gb": 1000.0 ** 3 / 1024, "g": 1024 ** 2,
              "gib": 1024 ** 2, "tb": 1000.0 ** 4 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}

ET.register_namespace("rtvirt", METADATA_NS)
ET.register_namespace("rtvirtbase", BASE_NS)


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
    iothreads: int = 0


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
        iothreads = guest.get("iothreads")
        if iothreads is not None and (isinstance(iothreads, bool) or not isinstance(iothreads, int)
                                      or not 0 <= iothreads <= MAX_IOTHREADS):
            problems.append("guest %s: iothreads must be a number from 0 to %d, got %r"
                            % (name, MAX_IOTHREADS, iothreads))
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
    for option in ("fifo_priority", "vcpus", "memory_mib", "iothreads"):
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
    if not isinstance(spec.iothreads, int) or not 0 <= spec.iothreads <= MAX_IOTHREADS:
        raise DomainSpecError("guest %s: iothreads must be a number from 0 to %d, got %r"
                              % (spec.name, MAX_IOTHREADS, spec.iothreads))
    if spec.iothreads and not spec.emulator_cpus:
        # I/O threads go where the emulator goes, never onto a vCPU's realtime pCPU.
        raise DomainSpecError("guest %s: iothreads %d need emulator CPUs to be pinned to, and there are none "
                              "(emulator_cpus is empty: the host has no housekeeping CPUs left); give the guest "
                              "emulator_cpus, or set iothreads to 0" % (spec.name, spec.iothreads))
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
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _parse(xml_text, what):
    try:
        root = ET.fromstring(xml_text)
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise DomainSpecError("%s is not well-formed XML: %s" % (what, exc)) from exc
    if root.tag != "domain":
        raise DomainSpecError("%s has root element <%s>, expected <domain>" % (what, root.tag))
    return root


# The merge works on the text, not on a parsed tree: ElementTree drops comments, renames namespace prefixes
# (qemu:commandline becomes ns0:commandline) and requotes attributes, and the operator's XML is to reach libvirt
# as they wrote it, except for the elements this collection owns.  expat gives every element's byte offsets; an
# owned element is replaced in place, an owned child removed or added inside its parent, the rest is not touched.

class _Node:
    __slots__ = ("tag", "start", "end", "content_start", "content_end", "children")

    def __init__(self, tag, start):
        self.tag, self.start, self.end = tag, start, None
        self.content_start = self.content_end = None  # None for an empty-element tag <x/>
        self.children = []


def _tag_end(data, start):
    """The offset just past the '>' of the start tag at ``start`` (a '>' inside a quoted value does not count)."""
    quote = None
    for index in range(start + 1, len(data)):
        char = data[index:index + 1]
        if quote:
            if char == quote:
                quote = None
        elif char in (b"'", b'"'):
            quote = char
        elif char == b">":
            return index + 1
    raise DomainSpecError("unterminated start tag at byte %d" % start)


def _tree(data):
    """The element tree of ``data`` (UTF-8) with byte offsets; tags as expat names them ('ns local' or 'local')."""
    parser = expat.ParserCreate(namespace_separator=" ")
    stack, roots, fresh = [], [], [None]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentByteIndex)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
        fresh[0] = node

    def other(*_args):
        fresh[0] = None

    def end(_tag):
        node = stack.pop()
        index = parser.CurrentByteIndex
        if fresh[0] is node and data[index - 2:index] == b"/>":
            node.end = index
        else:
            node.content_start, node.content_end = _tag_end(data, node.start), index
            node.end = data.index(b">", index) + 1
        fresh[0] = None

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = parser.CommentHandler = parser.ProcessingInstructionHandler = other
    parser.StartCdataSectionHandler = other
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise DomainSpecError("not well-formed XML: %s" % exc) from exc
    return roots[0]


def _indent_before(data, position):
    """The spaces that start the line an element at ``position`` sits on, or None when it does not start one."""
    index = position
    while index > 0 and data[index - 1:index] in (b" ", b"\t"):
        index -= 1
    if index > 0 and data[index - 1:index] == b"\n":
        return data[index:position]
    return None


def _with_leading_space(data, node):
    """The start of ``node`` widened over the whitespace before it, so that removing it leaves no empty line."""
    index = node.start
    while index > 0 and data[index - 1:index] in (b" ", b"\t", b"\r", b"\n"):
        index -= 1
    return index


def _splice(data, edits):
    for start, end, text in sorted(edits, key=lambda edit: (edit[0], edit[1]), reverse=True):
        data = data[:start] + text + data[end:]
    return data


def _bytes(element):
    return ET.tostring(element, encoding="unicode").encode("utf-8")


class _Merger:
    """The operator's (or libvirt's) domain XML as bytes, changed one owned element at a time."""

    def __init__(self, text):
        self.data = text.encode("utf-8")

    def root(self):
        return _tree(self.data)

    def _seps(self, root):
        """Separator before a top-level element, and the indent of a nested one (b'' for a one-line document)."""
        indent = _indent_before(self.data, root.children[0].start) if root.children else None
        if indent is None:
            return b"", b""
        return b"\n" + indent, b"\n" + indent + (indent or b"  ")

    def _insert_at(self, root, anchors, text):
        sep = self._seps(root)[0]
        after = [child for child in root.children if child.tag in anchors]
        if after:
            position = after[-1].end
            self.data = _splice(self.data, [(position, position, sep + text)])
        elif root.children:
            first = root.children[0]
            self.data = _splice(self.data, [(first.start, first.start, text + sep)])
        else:
            self.data = _splice(self.data, [(root.content_end, root.content_end, sep + text)])

    def remove(self, tag):
        root = self.root()
        self.data = _splice(self.data, [(_with_leading_space(self.data, child), child.end, b"")
                                        for child in root.children if child.tag == tag])

    def replace(self, tag, element, anchors):
        """The first top-level ``tag`` replaced by ``element`` (others removed), or ``element`` added after the
        last of ``anchors`` present."""
        root = self.root()
        found = [child for child in root.children if child.tag == tag]
        if not found:
            self._insert_at(root, anchors, _bytes(element))
            return
        edits = [(found[0].start, found[0].end, _bytes(element))]
        edits += [(_with_leading_space(self.data, child), child.end, b"") for child in found[1:]]
        self.data = _splice(self.data, edits)

    def children(self, tag, owned, elements, anchors, keep_empty=True):
        """Inside the top-level ``tag``: the children whose tag is in ``owned`` replaced by ``elements`` (added at
        its end); the parent made after ``anchors`` when missing, removed when it is left empty and not
        ``keep_empty``."""
        root = self.root()
        top_sep, sep = self._seps(root)
        found = [child for child in root.children if child.tag == tag]
        new = b"".join(sep + _bytes(element) for element in elements)
        if not found:
            if elements:
                self._insert_at(root, anchors, b"<" + tag.encode() + b">" + new + top_sep + b"</" + tag.encode()
                                + b">")
            return
        parent = found[0]
        kept = [child for child in parent.children if child.tag not in owned]
        if not kept and not elements and not keep_empty:
            self.data = _splice(self.data, [(_with_leading_space(self.data, parent), parent.end, b"")])
            return
        if parent.content_start is None:  # <tag/>: give it a content and an end tag
            head = self.data[parent.start:parent.end - 2].rstrip()
            self.data = _splice(self.data, [(parent.start, parent.end, head + b">" + new + top_sep + b"</"
                                             + self.data[parent.start + 1:parent.start + 1 + len(tag)] + b">")])
            return
        edits = [(_with_leading_space(self.data, child), child.end, b"")
                 for child in parent.children if child.tag in owned]
        position = parent.content_end
        while position > parent.content_start and self.data[position - 1:position] in (b" ", b"\t", b"\r", b"\n"):
            position -= 1
        if kept or self.data[parent.content_start:position].strip():
            edits.append((position, position, new))
        else:  # only owned children were there: the whitespace they leave is dropped with them
            edits.append((parent.content_start, parent.content_end, new + top_sep))
        self.data = _splice(self.data, edits)

    def text(self):
        return self.data.decode("utf-8")


def _element(tag, text=None, **attrib):
    element = ET.Element(tag, attrib)
    element.text = text
    return element


def render(spec, base_xml=None, base_digest=None):
    """The domain XML for ``spec``, its owned parts written into ``base_xml`` (or a tiny diskless default).

    Everything but the owned elements stays as the base has it, byte for byte (comments, namespaces, quoting).
    ``base_digest`` is recorded in ``<metadata>`` (:func:`base_digest`), so that a later run can tell whether
    the operator's base_xml changed since this definition was made from it.
    """
    check_spec(spec)
    text = base_xml if base_xml else default_domain_xml(spec.name, spec.domain_type)
    _parse(text, "base_xml" if base_xml else "default XML")
    xml = _Merger(text)
    xml.replace("name", _element("name", spec.name), ())
    memory = str(spec.memory_mib * 1024)
    xml.replace("memory", _element("memory", memory, unit="KiB"),
                ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory"))
    xml.replace("currentMemory", _element("currentMemory", memory, unit="KiB"), ("memory",))
    xml.remove("vcpus")  # per-vCPU hotplug state would contradict the count
    xml.replace("vcpu", _element("vcpu", str(spec.vcpus), placement="static"),
                ("name", "uuid", "metadata", "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking"))
    xml.remove("iothreadids")  # the I/O threads are numbered 1..iothreads, as iothreadpin names them
    if spec.iothreads:
        xml.replace("iothreads", _element("iothreads", str(spec.iothreads)), ("vcpu",))
    else:
        xml.remove("iothreads")
    emulator = format_cpulist(_cpus(spec.emulator_cpus, "emulator_cpus"))
    pins = [_element("vcpupin", vcpu=str(index), cpuset=format_cpulist(_cpus(spec.vcpupin[key], "vcpupin")))
            for index, key in sorted((int(k), k) for k in spec.vcpupin)]
    pins.append(_element("emulatorpin", cpuset=emulator))
    pins += [_element("iothreadpin", iothread=str(number), cpuset=emulator)
             for number in range(1, spec.iothreads + 1)]
    pins.append(_element("vcpusched", vcpus=format_cpulist(range(spec.vcpus)), scheduler="fifo",
                         priority=str(spec.fifo_priority)))
    xml.children("cputune", ("vcpupin", "emulatorpin", "iothreadpin", "vcpusched"), pins,
                 ("vcpu", "vcpus", "iothreads", "iothreadids"))
    numa = [_element("memory", mode="strict", nodeset=format_cpulist(spec.numa_nodes))] if spec.numa_nodes else []
    xml.children("numatune", ("memory",), numa, ("cputune",), keep_empty=False)
    xml.children("resource", ("partition",), [_element("partition", spec.partition)], ("cputune", "numatune"))
    metadata = [ET.fromstring(spec.metadata)] if spec.metadata else []
    if base_digest:
        metadata.append(_element(_BASE_TAG, sha256=base_digest))
    xml.children("metadata", (_expat_tag(_META_TAG), _expat_tag(_BASE_TAG)), metadata,
                 ("name", "uuid", "genid", "title", "description"), keep_empty=False)
    result = xml.text()
    _parse(result, "the merged domain XML")
    return result


def _expat_tag(tag):
    """ElementTree's '{ns}local' as expat's 'ns local'."""
    return tag[1:].replace("}", " ", 1) if tag.startswith("{") else tag


def base_digest(base_xml):
    """What identifies the operator's base_xml: the SHA-256 of its canonical form (C14N 2.0 without comments or
    indentation), so that re-indenting it or editing a comment is no change."""
    return hashlib.sha256(ET.canonicalize(base_xml, strip_text=True).encode("utf-8")).hexdigest()


def recorded_digest(xml_text):
    """The base digest a definition was made from (None: made from the built-in guest or an earlier version)."""
    if xml_text is None:
        return None
    element = _parse(xml_text, "domain XML").find("metadata/" + _BASE_TAG)
    return element.get("sha256") if element is not None else None


def check_base(name, base_xml, exists=os.path.exists):
    """Refuse a base_xml that cannot become guest ``name``: not a domain, another <name>, a disk whose file is
    not there.  ``exists`` is the target host's path check (a seam for tests)."""
    root = _parse(base_xml, "guest %s: base_xml" % name)
    given = root.findtext("name")
    if given is not None and given.strip() != name:
        raise DomainSpecError("guest %s: base_xml names the domain %r: its <name> must be the guest's name (or be "
                              "left out)" % (name, given.strip()))
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        if source is None:
            continue  # an empty CD-ROM drive
        path = source.get("file") if disk.get("type", "file") == "file" else (
            source.get("dev") if disk.get("type") == "block" else None)
        if path and not exists(path):
            target = disk.find("target")
            raise DomainSpecError("guest %s: base_xml disk %s: source %s does not exist; create the image first "
                                  "(the collection never creates or deletes a guest's disks)"
                                  % (name, target.get("dev") if target is not None else "?", path))


def _check_iothread_references(spec, xml_text):
    """A disk or controller that names an I/O thread the guest will not have makes libvirt refuse the define."""
    root = _parse(xml_text, "guest %s: domain XML" % spec.name)
    for driver in root.iter("driver"):
        number = driver.get("iothread")
        if number is not None and (not number.isdigit() or not 1 <= int(number) <= spec.iothreads):
            raise DomainSpecError("guest %s: a device's <driver iothread=%r> names an I/O thread the guest does not "
                                  "have: set iothreads to at least %s (now %d)"
                                  % (spec.name, number, number, spec.iothreads))


def _with_uuid(base_xml, current_xml, name):
    """The operator's base_xml carrying the defined guest's uuid (libvirt refuses to redefine a name under
    another uuid, and a base without one would get a random one)."""
    current = (_parse(current_xml, "domain XML").findtext("uuid") or "").strip()
    given = (_parse(base_xml, "base_xml").findtext("uuid") or "").strip()
    if given:
        if current and given.lower() != current.lower():
            raise DomainSpecError("guest %s: base_xml has uuid %s, the defined guest %s; leave the uuid out of "
                                  "base_xml, or remove the guest first (state: absent)" % (name, given, current))
        return base_xml
    if not current:
        return base_xml
    xml = _Merger(base_xml)
    xml.replace("uuid", _element("uuid", current), ("name",))
    return xml.text()


@dataclass(frozen=True)
class DefinitionPlan:
    """What realtime_domain writes for one guest: ``xml``, and the owned parts that differ from the definition
    (empty: it is not redefined); ``from_base`` tells that the operator's base_xml is (re)applied."""

    xml: str
    differences: list
    from_base: bool


def plan_definition(spec, current_xml, base_xml=None, exists=os.path.exists):
    """The definition of ``spec``: the one planner of guest_plan and realtime_domain.

    - No current definition: the owned parts written into ``base_xml`` (or the built-in diskless guest).
    - Defined, and ``base_xml`` as when the guest was last defined from it (its digest is recorded in the
      definition): the owned parts written into the current definition, which keeps what libvirt added (uuid,
      MAC and PCI addresses, controllers); nothing to do when they are as asked.
    - Defined, and ``base_xml`` changed (or never applied): the new base_xml, with the guest's uuid, is the
      source; the result differs in ``base_xml``.  The pins are written as planned (unchanged for a guest that
      keeps its pCPUs), and a running guest keeps running: libvirt applies a new persistent definition at the next
      start.

    Raises DomainSpecError before anything is defined for a bad spec or base_xml.
    """
    check_spec(spec)
    digest = None
    if base_xml:
        check_base(spec.name, base_xml, exists)
        digest = base_digest(base_xml)
    if current_xml is None:
        source, from_base = base_xml, bool(base_xml)
    elif digest is not None and recorded_digest(current_xml) != digest:
        source, from_base = _with_uuid(base_xml, current_xml, spec.name), True
    else:
        source, from_base = current_xml, False
        digest = recorded_digest(current_xml)
    rendered = render(spec, source, base_digest=digest)
    _check_iothread_references(spec, rendered)
    return DefinitionPlan(xml=rendered, differences=differences(current_xml, rendered), from_base=from_base)


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
        "vcpusched": {},
        "numatune_memory": None,
        "partition": None,
        "rtvirt_pcpu": None,
        "iothreads": 0,
        "iothreadpin": {},
        "base_xml": None,
    }
    vcpu = root.find("vcpu")
    if vcpu is not None:
        view["vcpus"] = int((vcpu.text or "0").strip())
        view["vcpu_placement"] = vcpu.get("placement", "static")
        view["vcpu_cpuset"] = _cpuset(vcpu.get("cpuset"), "vcpu cpuset")
    iothreads = (root.findtext("iothreads") or "").strip()
    view["iothreads"] = int(iothreads) if iothreads.isdigit() else len(root.findall("iothreadids/iothread"))
    cputune = root.find("cputune")
    if cputune is not None:
        for pin in cputune.findall("iothreadpin"):
            view["iothreadpin"][str(pin.get("iothread"))] = _cpuset(pin.get("cpuset"), "iothreadpin")
        for pin in cputune.findall("vcpupin"):
            view["vcpupin"][str(int(pin.get("vcpu")))] = _cpuset(pin.get("cpuset"), "vcpupin")
        pin = cputune.find("emulatorpin")
        if pin is not None:
            view["emulatorpin"] = _cpuset(pin.get("cpuset"), "emulatorpin")
        # Per vCPU: we write one <vcpusched vcpus='0-N'>, libvirt stores one element per vCPU (seen with 9.0), and
        # comparing the groups would see a 2-vCPU guest differ on every run.
        for sched in cputune.findall("vcpusched"):
            entry = {"scheduler": sched.get("scheduler"),
                     "priority": int(sched.get("priority")) if sched.get("priority") else None}
            try:
                vcpus = parse_libvirt_cpuset(sched.get("vcpus") or "", what="vcpusched vcpus")
            except CpuListError as exc:
                raise DomainXMLError(str(exc)) from exc
            for vcpu in vcpus:
                view["vcpusched"][str(vcpu)] = entry
    memory = root.find("numatune/memory")
    if memory is not None:
        view["numatune_memory"] = {"mode": memory.get("mode", "strict"),
                                   "nodeset": _cpuset(memory.get("nodeset"), "numatune nodeset")}
    view["partition"] = (root.findtext("resource/partition") or "").strip() or None
    meta = root.find("metadata/" + _META_TAG)
    if meta is not None:
        view["rtvirt_pcpu"] = dict(sorted(meta.attrib.items()))
    base = root.find("metadata/" + _BASE_TAG)
    if base is not None:
        view["base_xml"] = base.get("sha256")
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
