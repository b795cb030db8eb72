# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU isolation facts: what the kernel was asked, what it does, and who leaks onto isolated CPUs.

Everything is read from files (``/proc``, ``/sys``, libvirt's ``/run/libvirt/qemu``), never through
a libvirt connection, so the facts work on a host whose libvirtd is down.  All roots are
parameters so the unit tests run against recorded trees.

The pure parsers (``parse_cmdline``, ``parse_stat``, ``parse_status_affinity``,
``parse_interrupts``, ``parse_domain_status``) take text or bytes and
return plain values; :func:`gather` does the reading and returns the facts dict.

Policy decisions an RT engineer should know about (documented in the module too):

* "Isolated CPUs" is the union of ``isolcpus=`` (only with the ``domain`` flag or no flag),
  ``nohz_full=``, ``/sys/devices/system/cpu/isolated``, ``/sys/devices/system/cpu/nohz_full``,
  the v2 root's ``cpuset.cpus.isolated``, valid v2 ``isolated`` partitions and the caller's
  ``isolated_cpus``.  Housekeeping CPUs are the online CPUs that are not isolated.
* A userspace thread whose affinity lies *entirely* within isolated CPUs was put there on purpose
  (a pinned vCPU, an RT application started with taskset or a cpuset): it is listed under
  ``threads_on_isolated``, not reported as a violation.  A thread allowed on isolated *and*
  housekeeping CPUs is a leak (the default affinity of everything nobody placed) and is a
  ``thread_on_isolated`` violation.
* Kernel threads bound to one CPU (ksoftirqd/N, migration/N, cpuhp/N, kworker/N:*) are expected.
  Kernel threads with ``PF_NO_SETAFFINITY`` that are not per-CPU (unbound kworkers and rescuers)
  follow the workqueue cpumask and are covered by the ``workqueue_cpumask`` check.  Other kernel
  threads allowed on isolated CPUs (kthreadd, rcu_*, kswapd, ...) can be moved by the operator and
  are ``kthread_on_isolated`` violations.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.rtvirt.kvm.plugins.module_utils._cmdline import split_cmdline
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
    parse_cpumask,
    parse_libvirt_cpuset,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    V2_DOMAIN_CONTROLLERS,
    V2_NAMES,
    PartitionNameError,
    libvirt_hierarchies,
    parse_name,
    parse_proc_cgroups,
    parse_qemu_conf_controllers,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import TopologyError, read_topology
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import (
    CgroupDiscoveryError,
    cgroup_paths_of,
    parse_mountinfo,
)

PF_USER_WORKER = 0x00004000   # kernel-made tasks inside a user process (vhost, kvm-nx-lpage-recovery)
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000

POLICIES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline", 7: "ext"}

ISOLCPUS_FLAGS = ("nohz", "domain", "managed_irq")

# Kernel parameters whose value is a CPU list and that matter for isolation.
_CMDLINE_LISTS = ("nohz_full", "rcu_nocbs", "irqaffinity")

# A tid list in a violation is cut to this many; ``thread_count`` keeps the real number.
MAX_TIDS = 64

_VCPU_COMM = re.compile(r"^CPU (\d+)/[A-Za-z]+$")
_IOTHREAD_COMM = re.compile(r"^IO iothread(\d+)$")


class IsolationError(RuntimeError):
    """The isolation facts cannot be gathered (bad caller input, unreadable essentials)."""


# --------------------------------------------------------------------------------------------
# Pure parsers
# --------------------------------------------------------------------------------------------

def parse_cmdline(text):
    """Return what ``/proc/cmdline`` asks about isolation.

    ``{"isolcpus": LIST or None, "isolcpus_flags": [...], "isolcpus_unknown_flags": [...],
    "nohz_full": LIST or None, "rcu_nocbs": LIST, "" (given without a list) or None,
    "irqaffinity": LIST or None}``, lists as written on the command line.  A parameter given
    twice: the last one wins.
    """
    result = {"isolcpus": None, "isolcpus_flags": [], "isolcpus_unknown_flags": []}
    for name in _CMDLINE_LISTS:
        result[name] = None
    for param in split_cmdline(text):
        key, sep, value = param.partition("=")
        if key == "isolcpus":
            flags, unknown, cpus = _split_isolcpus(value)
            result["isolcpus"] = cpus
            result["isolcpus_flags"] = flags
            result["isolcpus_unknown_flags"] = unknown
        elif key in _CMDLINE_LISTS:
            result[key] = value if sep else ""
    return result


def _split_isolcpus(value):
    """``nohz,domain,managed_irq,2-5`` → (["nohz", "domain", "managed_irq"], [], "2-5").

    As in the kernel, leading alphabetic words followed by a comma are flags; the rest is the list.
    """
    flags, unknown = [], []
    rest = value
    while rest[:1].isalpha():
        word, sep, after = rest.partition(",")
        if not sep:
            break  # an alphabetic list such as "N" or a bare word: leave it to the list parser
        if word in ISOLCPUS_FLAGS:
            if word not in flags:
                flags.append(word)
        else:
            unknown.append(word)
        rest = after
    return flags, unknown, rest


def isolcpus_isolates(flags):
    """``isolcpus=`` removes CPUs from the scheduler domains with the domain flag, or no known flag."""
    return "domain" in flags or not flags


def parse_stat(data):
    """Parse ``/proc/PID/task/TID/stat`` (bytes or str).

    Returns ``(comm, state, flags, last_cpu, rt_priority, policy)``.  The comm is everything
    between the first ``(`` and the *last* ``)``: it may itself hold spaces and parentheses.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    left = data.find(b"(")
    right = data.rfind(b")")
    if left < 0 or right < left:
        raise ValueError("not a /proc stat line: %r" % data[:80])
    fields = data[right + 2:].split()
    # fields[0] is field 3 (state): field N is fields[N - 3].
    return (data[left + 1:right].decode("utf-8", "replace"), fields[0].decode("ascii", "replace"),
            int(fields[6]), int(fields[36]), int(fields[37]), int(fields[38]))


_AFFINITY_KEY = b"\nCpus_allowed_list:"
_AFFINITY_KEY_LEN = len(_AFFINITY_KEY)


def parse_status_affinity(data):
    """Return the ``Cpus_allowed_list`` value of a ``/proc/.../status`` text (bytes or str), or None."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    start = (b"\n" + data).find(_AFFINITY_KEY)
    if start < 0:
        return None
    start += len(_AFFINITY_KEY) - 1
    end = data.find(b"\n", start)
    return data[start:end if end >= 0 else len(data)].strip().decode("ascii")


def parse_interrupts(text):
    """Parse ``/proc/interrupts`` into ``{irq: {"counts": [per CPU], "chip": str, "name": str}}``.

    Only numbered IRQs; the architecture's named rows (LOC, RES, ...) are skipped.  ``name`` is the
    rest of the line after the chip and hardware IRQ (the actions, comma separated).
    """
    lines = (text or "").splitlines()
    if not lines:
        return {}
    ncpus = len(lines[0].split())
    table = {}
    for line in lines[1:]:
        label, sep, rest = line.partition(":")
        label = label.strip()
        if not sep or not label.isdigit():
            continue
        parts = rest.split(None, ncpus)
        counts = []
        for value in parts[:ncpus]:
            if not value.isdigit():
                break
            counts.append(int(value))
        tail = parts[len(counts)] if len(parts) > len(counts) else ""
        words = tail.split(None, 2)
        chip = words[0] if words else ""
        name = words[2] if len(words) > 2 else ""
        table[int(label)] = {"counts": counts, "chip": chip, "name": name.strip()}
    return table


def parse_domain_status(text):
    """Parse libvirt's live status XML (``<domstatus>`` wrapping ``<domain>``) or a plain domain XML.

    Returns ``{"name", "id", "uuid", "pid", "partition", "vcpus", "vcpu_tids": {vcpu: tid},
    "default_cpuset", "vcpupin": {vcpu: set}, "emulatorpin", "iothreads": [ids],
    "iothreadpin": {id: set}}``; cpusets are frozensets or None (not pinned).
    """
    root = ET.fromstring(text)
    if root.tag == "domstatus":
        domain = root.find("domain")
        if domain is None:
            raise ValueError("<domstatus> without <domain>")
        pid = root.get("pid")
        vcpu_tids = {}
        for vcpu in root.findall("vcpus/vcpu"):
            if vcpu.get("id", "").isdigit() and vcpu.get("pid", "").isdigit():
                vcpu_tids[int(vcpu.get("id"))] = int(vcpu.get("pid"))
    elif root.tag == "domain":
        domain, pid, vcpu_tids = root, None, {}
    else:
        raise ValueError("expected <domstatus> or <domain>, found <%s>" % root.tag)
    vcpu_element = domain.find("vcpu")
    count = 0
    default_cpuset = None
    if vcpu_element is not None:
        count = int((vcpu_element.text or "0").strip() or 0)
        default_cpuset = _cpuset(vcpu_element, "<vcpu cpuset>")
    vcpupin, iothreadpin = {}, {}
    emulatorpin = None
    cputune = domain.find("cputune")
    if cputune is not None:
        for pin in cputune.findall("vcpupin"):
            vcpupin[int(pin.get("vcpu"))] = _cpuset(pin, "<vcpupin cpuset>")
        for pin in cputune.findall("iothreadpin"):
            iothreadpin[int(pin.get("iothread"))] = _cpuset(pin, "<iothreadpin cpuset>")
        pin = cputune.find("emulatorpin")
        if pin is not None:
            emulatorpin = _cpuset(pin, "<emulatorpin cpuset>")
    iothreads = [int(i.get("id")) for i in domain.findall("iothreadids/iothread") if i.get("id", "").isdigit()]
    if not iothreads:
        number = (domain.findtext("iothreads") or "").strip()
        if number.isdigit():
            iothreads = list(range(1, int(number) + 1))
    return {
        "name": (domain.findtext("name") or "").strip(),
        "id": int(domain.get("id")) if (domain.get("id") or "").lstrip("-").isdigit() else None,
        "uuid": (domain.findtext("uuid") or "").strip() or None,
        "pid": int(pid) if pid and pid.isdigit() else None,
        "partition": (domain.findtext("resource/partition") or "").strip() or None,
        "vcpus": count,
        "vcpu_tids": vcpu_tids,
        "default_cpuset": default_cpuset,
        "vcpupin": vcpupin,
        "emulatorpin": emulatorpin,
        "iothreads": iothreads,
        "iothreadpin": iothreadpin,
    }


def _cpuset(element, what):
    """The element's cpuset; without the attribute the thread is not pinned (None)."""
    text = element.get("cpuset")
    return None if text is None else parse_libvirt_cpuset(text, what)


def expected_pinning(domain, role, number=None):
    """The CPUs the domain XML pins a thread to, or None when the XML leaves it unpinned."""
    if role == "vcpu":
        pin = domain["vcpupin"].get(number)
    elif role == "iothread":
        pin = domain["iothreadpin"].get(number)
    else:
        pin = domain["emulatorpin"]
    return pin if pin is not None else domain["default_cpuset"]


def classify_qemu_thread(comm, tid, vcpu_tids):
    """Return ``(role, number)``: ``("vcpu", N)``, ``("iothread", N)`` or ``("emulator", None)``.

    The status XML's ``<vcpus><vcpu id pid>`` wins; otherwise QEMU's thread names
    ``CPU N/KVM`` (``/TCG``) and ``IO iothreadN`` decide.
    """
    for vcpu, vcpu_tid in vcpu_tids.items():
        if vcpu_tid == tid:
            return "vcpu", vcpu
    match = _VCPU_COMM.match(comm)
    if match:
        return "vcpu", int(match.group(1))
    match = _IOTHREAD_COMM.match(comm)
    if match:
        return "iothread", int(match.group(1))
    return "emulator", None


def partition_cgroup_paths(partition, subsystems=()):
    """Where a libvirt partition name (``/machine/rt``, ``/rt``) lives in a cgroup hierarchy.

    Returns the non-systemd path (``machine/rt.partition``, as libvirt names and escapes it) and
    the systemd path (``machine.slice/machine-rt.slice``).
    """
    try:
        pname = parse_name(partition, subsystems)
    except PartitionNameError as exc:
        raise IsolationError("realtime partition: %s" % exc) from None
    return pname.cgroup_path, pname.slice_path


# --------------------------------------------------------------------------------------------
# Reading helpers
# --------------------------------------------------------------------------------------------

def _read_bytes(path, size=8192):
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, size)
        if len(data) == size:
            chunks = [data]
            while True:
                more = os.read(fd, 65536)
                if not more:
                    break
                chunks.append(more)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def _read_text(path):
    """The stripped text of a small file, or None when it does not exist or cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _list_dir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _rebase(sys_root, mountpoint):
    """A cgroup mountpoint under /sys, moved onto ``sys_root`` (test trees put cgroupfs there)."""
    if sys_root.rstrip("/") == "/sys" or not mountpoint.startswith("/sys/"):
        return mountpoint
    return sys_root.rstrip("/") + mountpoint[len("/sys"):]


class _Context(object):
    """Values gathered along the way: warnings and the CPU-list parsing limit."""

    def __init__(self, limit):
        self.limit = limit
        self.warnings = []

    def cpus(self, text, what):
        """Parse a CPU list the kernel printed or was given; a bad one becomes a warning."""
        if text is None:
            return None
        try:
            if self.limit is not None and re.search(r"(^|[,-])N($|[,:-])", text):
                text = re.sub(r"(?<![0-9A-Za-z])N(?![0-9A-Za-z])", str(self.limit - 1), text)
            return parse_cpulist(text, what=what)
        except CpuListError as exc:
            self.warnings.append("ignored %s: %s" % (what, exc))
            return None


def _fmt(cpus):
    return None if cpus is None else format_cpulist(cpus)


# --------------------------------------------------------------------------------------------
# The pass over /proc
# --------------------------------------------------------------------------------------------

class _TaskScan(object):
    """One pass over ``/proc/*/task/*``: stat and status of every task, read once."""

    def __init__(self):
        self.count = 0
        self.leaks = {}        # pid -> [comm, tids, isolated cpus, affinity texts]
        self.placed = {}       # pid -> [comm, tids, affinity cpus]
        self.kthreads = []     # (pid, comm, affinity text, cpus)
        self.guest_tasks = {}  # qemu pid -> [(tid, comm, state, last_cpu, rt_priority, policy, affinity text, flags)]
        self.unreadable = 0


def scan_tasks(proc_root, isolated, guest_pids=(), affinity_of=None, affinity_is_status=False):
    """Walk every task once; sort those allowed on ``isolated`` CPUs and keep the QEMU tasks.

    ``affinity_of``: a function TID → set of CPUs (``os.sched_getaffinity``), only for the real
    ``/proc`` of this PID namespace and only when every isolated CPU is online (it returns the
    allowed CPUs that are active, ``status`` all of them).  Then a task that is not a guest's and
    whose affinity misses the isolated CPUs is counted and skipped after one system call, without
    its ``stat`` and ``status`` (the kernel formats ``status`` in full: at 10,000 tasks that read was
    most of the scan).  Every other task is read as before, so the facts are the same.
    ``affinity_is_status``: besides, no CPU is offline (possible == online), so the set equals
    ``Cpus_allowed_list`` and ``status`` is not read for the other tasks either (only ``stat``).
    """
    scan = _TaskScan()
    guest_pids = {str(pid) for pid in guest_pids}
    for pid in guest_pids:
        scan.guest_tasks[int(pid)] = []
    # affinity text -> (cpus, class, isolated part); class 0 none, 1 only isolated, 2 mixed
    cache = {}
    outside = {}  # affinity_of's sets -> True when they miss the isolated CPUs
    texts = {}    # affinity_of's sets -> Cpus_allowed_list text
    leaks, placed, kthreads, guest_tasks = scan.leaks, scan.placed, scan.kthreads, scan.guest_tasks
    prefix = proc_root.rstrip("/") + "/"
    count = 0
    try:
        entries = os.scandir(proc_root)
    except OSError as exc:
        raise IsolationError("cannot list %s: %s" % (proc_root, exc.strerror)) from None
    with entries:
        for entry in entries:
            pid = entry.name
            if not pid.isdigit():
                continue
            task_dir = prefix + pid + "/task/"
            try:
                tids = os.listdir(task_dir)
            except OSError:
                continue  # gone meanwhile
            is_guest = pid in guest_pids
            for tid in tids:
                allowed = None
                if affinity_of is not None and (affinity_is_status or not is_guest):
                    try:
                        allowed = frozenset(affinity_of(int(tid)))
                    except ProcessLookupError:
                        continue  # gone meanwhile
                    except OSError:
                        allowed = None
                    if allowed is not None and not is_guest:
                        miss = outside.get(allowed)
                        if miss is None:
                            miss = outside[allowed] = not allowed & isolated
                        if miss:
                            count += 1
                            continue
                base = task_dir + tid
                if allowed is not None and affinity_is_status:
                    try:
                        stat = _read_bytes(base + "/stat", 1024)
                    except OSError:
                        continue
                    count += 1
                    affinity = texts.get(allowed)
                    if affinity is None:
                        affinity = texts[allowed] = format_cpulist(allowed).encode("ascii")
                else:
                    try:
                        stat = _read_bytes(base + "/stat", 1024)
                        status = _read_bytes(base + "/status")
                    except OSError:
                        continue
                    count += 1
                    start = status.find(_AFFINITY_KEY)
                    if start < 0:
                        scan.unreadable += 1
                        continue
                    start += _AFFINITY_KEY_LEN
                    affinity = status[start:status.find(b"\n", start)].strip()
                known = cache.get(affinity)
                if known is None:
                    cpus = parse_cpulist(affinity.decode("ascii"), what="Cpus_allowed_list")
                    inside = cpus & isolated
                    klass = 0 if not inside else (1 if inside == cpus else 2)
                    known = cache[affinity] = (cpus, klass, inside)
                right = stat.rfind(b")")
                fields = stat[right + 2:].split()
                state = fields[0]
                if state == b"Z" or state == b"X":
                    continue
                if is_guest:
                    guest_tasks[int(pid)].append((
                        int(tid), stat[stat.find(b"(") + 1:right].decode("utf-8", "replace"),
                        state.decode("ascii", "replace"), int(fields[36]), int(fields[37]), int(fields[38]),
                        affinity.decode("ascii"), int(fields[6])))
                klass = known[1]
                if not klass:
                    continue
                flags = int(fields[6])
                comm = stat[stat.find(b"(") + 1:right].decode("utf-8", "replace")
                if flags & PF_KTHREAD:
                    if len(known[0]) == 1 or flags & PF_NO_SETAFFINITY:
                        continue  # per-CPU, or follows the workqueue cpumask
                    kthreads.append((int(pid), comm, affinity.decode("ascii"), known[2]))
                    continue
                target = leaks if klass == 2 else placed
                record = target.get(pid)
                if record is None:
                    record = target[pid] = [comm if tid == pid else None, [], set(), set()]
                elif tid == pid:
                    record[0] = comm
                record[1].append(int(tid))
                record[2].update(known[2])
                record[3].update(known[0])
    scan.count = count
    # A process is named by its main thread (a QEMU process, not its "CPU 0/KVM").
    for records in (leaks, placed):
        for pid, record in records.items():
            if record[0] is None:
                try:
                    record[0] = parse_stat(_read_bytes(prefix + pid + "/stat", 1024))[0]
                except (OSError, ValueError, IndexError):
                    record[0] = "?"
    return scan


# --------------------------------------------------------------------------------------------
# gather()
# --------------------------------------------------------------------------------------------

def _discover(proc_root, sys_root):
    text = _read_text(os.path.join(proc_root, "self", "mountinfo"))
    if text is None:
        raise CgroupDiscoveryError("cannot read %s/self/mountinfo" % proc_root)

    def controllers(mountpoint):
        return _read_text(os.path.join(_rebase(sys_root, mountpoint), "cgroup.controllers"))

    return parse_mountinfo(text, controllers)


def _walk_cgroups(top):
    """Yield every cgroup directory below and including ``top`` (depth first, sorted)."""
    stack = [top]
    while stack:
        path = stack.pop()
        yield path
        try:
            with os.scandir(path) as entries:
                children = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        stack.extend(reversed(children))


def _cgroup_cpus(ctx, path, version, relative):
    """(cpuset.cpus as written, effective CPUs) of a cgroup directory."""
    if version == 1:
        written = _read_text(os.path.join(path, "cpuset.cpus"))
        effective = _read_text(os.path.join(path, "cpuset.effective_cpus"))
        if effective is None:
            effective = written
    else:
        written = _read_text(os.path.join(path, "cpuset.cpus"))
        effective = _read_text(os.path.join(path, "cpuset.cpus.effective"))
        if effective is None:
            effective = written
    return written, ctx.cpus(effective, "effective cpus of cgroup %s" % relative)


def _v2_partitions(ctx, unified_dir):
    """Every v2 cgroup whose cpuset.cpus.partition is root or isolated (valid or not)."""
    partitions = []
    for path in _walk_cgroups(unified_dir):
        if path == unified_dir:
            continue
        state = _read_text(os.path.join(path, "cpuset.cpus.partition"))
        if not state or state == "member":
            continue
        relative = "/" + os.path.relpath(path, unified_dir)
        mode, _sep, reason = state.partition(" ")
        valid = not reason.startswith("invalid")
        effective = ctx.cpus(_read_text(os.path.join(path, "cpuset.cpus.effective")),
                             "cpuset.cpus.effective of %s" % relative)
        partitions.append({
            "path": relative,
            "mode": mode,
            "valid": valid,
            "state": state,
            "cpus": _fmt(effective) if valid else "",
            "_cpus": effective if valid else frozenset(),
        })
    return partitions


def _read_guests(ctx, run_root, proc_root):
    """The running libvirt guests: ``<name>.pid`` files with their status XML."""
    guests = []
    for entry in sorted(_list_dir(run_root)):
        if not entry.endswith(".pid"):
            continue
        name = entry[:-len(".pid")]
        if name == "driver":
            continue  # libvirtd's own lock file for the QEMU driver, not a guest
        pid_text = _read_text(os.path.join(run_root, entry))
        if not pid_text or not pid_text.isdigit():
            ctx.warnings.append("guest %s: %s/%s does not hold a pid" % (name, run_root, entry))
            continue
        pid = int(pid_text)
        xml_path = os.path.join(run_root, name + ".xml")
        domain = None
        xml_text = _read_text(xml_path)
        if xml_text is None:
            ctx.warnings.append("guest %s: no status XML at %s; pinning from the XML unknown" % (name, xml_path))
        else:
            try:
                domain = parse_domain_status(xml_text)
            except (ET.ParseError, ValueError, CpuListError) as exc:
                ctx.warnings.append("guest %s: cannot parse %s: %s" % (name, xml_path, exc))
        if not os.path.isdir(os.path.join(proc_root, str(pid))):
            ctx.warnings.append("guest %s: pid %d from %s is not running (stale pid file?)" % (name, pid, entry))
            continue
        guests.append({"name": name, "pid": pid, "domain": domain})
    return guests


# The parts of a persistent definition the realtime_vm role compares (_domain_xml.owned_view) and the pCPU planner
# reads (_pcpu.guest_pins_from_domain_xml); the rest (devices, with graphics passwords and the like) stays out of
# the facts.
_DEFINITION_PARTS = ("name", "uuid", "memory", "currentMemory", "vcpu", "vcpus", "cputune", "numatune", "resource")
_PCPU_METADATA = "{urn:rtvirt:kvm:pcpu:1}pcpu"


def definition_parts(xml_text):
    """A domain XML cut down to the parts in _DEFINITION_PARTS and its ``<rtvirt:pcpu>`` metadata element.

    Raise ``ET.ParseError`` when the text is not XML.
    """
    root = ET.fromstring(xml_text)
    kept = ET.Element(root.tag, {k: v for k, v in root.attrib.items() if k == "type"})
    for child in root:
        if child.tag in _DEFINITION_PARTS:
            kept.append(child)
        elif child.tag == "metadata":
            pcpu = child.find(_PCPU_METADATA)
            if pcpu is not None:
                ET.SubElement(kept, "metadata").append(pcpu)
    return ET.tostring(kept, encoding="unicode")


def read_domain_definitions(config_dir):
    """libvirt's persistent domain definitions, ``[{"name", "xml"}]`` sorted by name, read from the files
    libvirtd keeps them in (``<config_dir>/<name>.xml``, ``/etc/libvirt/qemu`` for qemu:///system); ``xml``
    holds only the parts :func:`definition_parts` keeps.

    A missing directory means no domain is defined (``[]``); an unreadable one, or a file that cannot be read
    or parsed, gives None (unknown).
    """
    try:
        entries = os.listdir(config_dir)
    except FileNotFoundError:
        return []
    except OSError:
        return None
    domains = []
    for entry in sorted(entries):
        if not entry.endswith(".xml"):
            continue
        path = os.path.join(config_dir, entry)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                text = definition_parts(handle.read())
        except (OSError, UnicodeDecodeError, ET.ParseError):
            return None
        domains.append({"name": entry[:-len(".xml")], "xml": text})
    return domains


def partition_state(name, layout, sys_root, subsystems=(), controllers=None, systemd=False):
    """How a libvirt resource partition stands in every cgroup hierarchy libvirt uses (hosts without systemd).

    Returns ``{"name", "cgroup_path", "cpus", "mems", "missing"}``: ``cpus``/``mems`` are the partition's
    ``cpuset.cpus``/``cpuset.mems`` as written (None when unreadable); ``missing`` lists everything
    M(rtvirt.kvm.libvirt_partition) would still create or enable for a partition given only its CPUs: a level's
    directory in a hierarchy, a v2 controller not enabled above it, a v1 cpuset level without CPUs or memory
    nodes, a cgroup below it holding CPUs outside its own (it refuses then); on systemd hosts, or where the
    hierarchies cannot be told, a sentence saying why nothing was read.
    """
    record = {"name": name, "cgroup_path": None, "cpus": None, "mems": None, "missing": []}
    missing = record["missing"]
    try:
        pname = parse_name(name, subsystems)
    except PartitionNameError as exc:
        missing.append(str(exc))
        return record
    record["cgroup_path"] = pname.cgroup_path
    if systemd:
        missing.append("systemd host: the slice %s is not read by the facts" % pname.slice)
        return record
    if layout is None:
        missing.append("the cgroup layout is unknown")
        return record
    hierarchies = libvirt_hierarchies(layout.mounts, controllers)
    if not hierarchies:
        missing.append("none of libvirt's controllers is mounted")
        return record
    cpuset_h = next((h for h in hierarchies if "cpuset" in h.controllers), None)
    for hierarchy in hierarchies:
        mount = next((m for m in layout.mounts if m.mountpoint == hierarchy.mountpoint), None)
        if mount is None or mount.root != "/":
            missing.append("%s is not mounted from its root" % hierarchy.mountpoint)
            continue
        top = _rebase(sys_root, hierarchy.mountpoint)
        for level in pname.levels:
            if not os.path.isdir(os.path.join(top, level)):
                missing.append("%s/%s" % (hierarchy.mountpoint, level))
        if hierarchy.version == 2:
            offered = (_read_text(os.path.join(top, "cgroup.controllers")) or "").split()
            enable = [V2_NAMES.get(c, c) for c in hierarchy.controllers]
            enable = [c for c in V2_DOMAIN_CONTROLLERS if c in enable and c in offered]
            if hierarchy is cpuset_h:
                enable.append("cpuset")
            for level in [""] + pname.levels[:-1]:
                current = (_read_text(os.path.join(top, level, "cgroup.subtree_control")) or "").split()
                for controller in enable:
                    if controller not in current:
                        missing.append("+%s in %s/cgroup.subtree_control" % (
                            controller, os.path.join(hierarchy.mountpoint, level).rstrip("/")))
    if cpuset_h is None:
        missing.append("libvirt uses no cpuset controller here")
        return record
    top = _rebase(sys_root, cpuset_h.mountpoint)
    leaf = os.path.join(top, pname.cgroup_path)
    record["cpus"] = _read_text(os.path.join(leaf, "cpuset.cpus"))
    record["mems"] = _read_text(os.path.join(leaf, "cpuset.mems"))
    try:
        own = parse_cpulist(record["cpus"]) if record["cpus"] else None
    except CpuListError:
        own = None
    if own is not None and os.path.isdir(leaf):
        # libvirt_partition refuses to keep a partition's CPUs while a guest below holds CPUs outside them (v2 lets
        # a child write any CPUs; v1 never does).
        for path in _walk_cgroups(leaf):
            written = _read_text(os.path.join(path, "cpuset.cpus"))
            try:
                outside = parse_cpulist(written) - own if written else frozenset()
            except CpuListError:
                outside = frozenset([-1])
            if outside:
                missing.append("%s/%s holds CPUs outside the partition (%s)"
                               % (cpuset_h.mountpoint, os.path.relpath(path, top), written))
    if cpuset_h.version == 1:
        for level in pname.levels:
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if os.path.isdir(os.path.join(top, level)) and not _read_text(os.path.join(top, level, knob)):
                    missing.append("%s in %s/%s" % (knob, cpuset_h.mountpoint, level))
    return record


class _Cgroups(object):
    """The cpuset hierarchy as the facts see it: thread → cgroup path → cpuset files (cached)."""

    def __init__(self, ctx, layout, sys_root, proc_root):
        self.ctx = ctx
        self.proc_root = proc_root
        self.mount = layout.cpuset if layout is not None else None
        self.dir = _rebase(sys_root, self.mount.mountpoint) if self.mount else None
        self.key = ("cpuset" if self.mount.version == 1 else "") if self.mount else None
        self._files = {}

    def path_of(self, pid, tid):
        if self.mount is None:
            return None
        try:
            paths = cgroup_paths_of("%d/task/%d" % (pid, tid), self.proc_root)
        except OSError:
            return None
        path = paths.get(self.key)
        if path is None:
            return None
        root = self.mount.root.rstrip("/")
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        elif root and path == root:
            path = "/"
        return path

    def files(self, relative):
        """(cpuset.cpus text, its CPUs) of a cgroup; on v2 an empty file means the effective CPUs."""
        if relative in self._files:
            return self._files[relative]
        directory = os.path.join(self.dir, relative.lstrip("/"))
        written, effective = _cgroup_cpus(self.ctx, directory, self.mount.version, relative)
        cpus = None
        if written:
            cpus = self.ctx.cpus(written, "cpuset.cpus of cgroup %s" % relative)
        elif written is not None:
            cpus = effective if self.mount.version == 2 else frozenset()
        result = (written, cpus)
        self._files[relative] = result
        return result


def gather(proc_root="/proc", sys_root="/sys", run_root="/run/libvirt/qemu", layout=None,
           isolated_cpus=None, realtime_partitions=(), gather_threads=True, libvirt_config_dir="/etc/libvirt",
           systemd_run_dir="/run/systemd/system"):
    """Return the ``cpu_isolation`` facts dict (see the module's RETURN for every key).

    ``layout`` is a :class:`CgroupLayout`; None discovers it from ``<proc_root>/self/mountinfo``.
    Cgroup mountpoints under ``/sys`` are read below ``sys_root``.  ``isolated_cpus`` (a list
    string or an iterable of ints) is added to what the kernel reports.  ``libvirt_config_dir`` holds
    ``qemu.conf`` and the persistent domain definitions (``qemu/<name>.xml``); ``systemd_run_dir``
    tells a systemd host.
    """
    cpu_dir = os.path.join(sys_root, "devices", "system", "cpu")
    possible = _read_text(os.path.join(cpu_dir, "possible"))
    limit = None
    try:
        limit = max(parse_cpulist(possible)) + 1 if possible else None
    except (CpuListError, ValueError):
        limit = None
    ctx = _Context(limit)

    # -- caller input ------------------------------------------------------------------------
    if isolated_cpus is None or isolated_cpus == "":
        requested = frozenset()
    elif isinstance(isolated_cpus, str):
        try:
            requested = parse_cpulist(isolated_cpus, what="isolated_cpus")
        except CpuListError as exc:
            raise IsolationError(str(exc)) from None
    else:
        try:
            requested = frozenset(int(c) for c in isolated_cpus)
        except (TypeError, ValueError):
            raise IsolationError("isolated_cpus must be a CPU list such as '2-5' or a list of CPU numbers, "
                                 "not %r" % (isolated_cpus,)) from None
    partition_paths = []
    for partition in realtime_partitions or ():
        partition_paths.extend(partition_cgroup_paths(partition))

    # -- CPUs and topology -------------------------------------------------------------------
    cpus = {}
    for name in ("online", "offline", "present", "possible"):
        cpus[name] = ctx.cpus(_read_text(os.path.join(cpu_dir, name)), "/sys/devices/system/cpu/" + name)
    online = cpus["online"] or frozenset()
    if not online:
        raise IsolationError("cannot read the online CPUs from %s/online" % cpu_dir)
    if limit is None:
        ctx.limit = max(online) + 1

    numa_nodes = []
    node_dir = os.path.join(sys_root, "devices", "system", "node")
    for entry in _list_dir(node_dir):
        if entry.startswith("node") and entry[4:].isdigit():
            node_cpus = ctx.cpus(_read_text(os.path.join(node_dir, entry, "cpulist")), entry + " cpulist")
            numa_nodes.append({"node": int(entry[4:]), "cpus": _fmt(node_cpus or frozenset())})
    numa_nodes.sort(key=lambda n: n["node"])

    siblings = set()
    for cpu in sorted(cpus["present"] or online):
        group = ctx.cpus(_read_text(os.path.join(cpu_dir, "cpu%d" % cpu, "topology", "thread_siblings_list")),
                         "cpu%d thread_siblings_list" % cpu)
        if group:
            siblings.add(frozenset(group))
    smt_groups = [format_cpulist(g) for g in sorted(siblings, key=min)]
    smt_active = _read_text(os.path.join(cpu_dir, "smt", "active"))

    # -- what the command line asks, what the kernel reports ----------------------------------
    cmdline_text = _read_text(os.path.join(proc_root, "cmdline")) or ""
    cmdline = parse_cmdline(cmdline_text)
    for flag in cmdline["isolcpus_unknown_flags"]:
        ctx.warnings.append("isolcpus= has the unknown flag %r, which the kernel ignores" % flag)
    asked = {}
    asked["isolcpus"] = ctx.cpus(cmdline["isolcpus"], "isolcpus=")
    for name in _CMDLINE_LISTS:
        asked[name] = ctx.cpus(cmdline[name], name + "=") if cmdline[name] else None

    kernel_isolated_text = _read_text(os.path.join(cpu_dir, "isolated"))
    kernel_nohz_text = _read_text(os.path.join(cpu_dir, "nohz_full"))
    if kernel_nohz_text == "(null)":
        kernel_nohz_text = ""  # CONFIG_NO_HZ_FULL without nohz_full= prints "(null)"
    kernel_isolated = ctx.cpus(kernel_isolated_text, "/sys/devices/system/cpu/isolated")
    kernel_nohz = ctx.cpus(kernel_nohz_text, "/sys/devices/system/cpu/nohz_full")

    if layout is None:
        try:
            layout = _discover(proc_root, sys_root)
        except CgroupDiscoveryError as exc:
            ctx.warnings.append("cgroup layout unknown: %s" % exc)
            layout = None
    cpuset_isolated = None
    partitions = []
    unified = layout.unified if layout is not None else None
    if unified is not None and "cpuset" in unified.controllers:
        unified_dir = _rebase(sys_root, unified.mountpoint)
        cpuset_isolated = ctx.cpus(_read_text(os.path.join(unified_dir, "cpuset.cpus.isolated")),
                                   "cpuset.cpus.isolated")
        partitions = _v2_partitions(ctx, unified_dir)
    partition_isolated = frozenset()
    for partition in partitions:
        if partition["mode"] == "isolated" and partition["valid"]:
            partition_isolated |= partition["_cpus"]

    sources = {
        "isolcpus": asked["isolcpus"] if asked["isolcpus"] is not None and isolcpus_isolates(cmdline["isolcpus_flags"]) else None,
        "nohz_full": asked["nohz_full"],
        "kernel_isolated": kernel_isolated,
        "kernel_nohz_full": kernel_nohz,
        "cpuset_cpus_isolated": cpuset_isolated,
        "isolated_partitions": partition_isolated or None,
        "option": requested or None,
    }
    isolated = frozenset()
    for value in sources.values():
        if value:
            isolated |= value
    isolated &= frozenset(range(ctx.limit)) if ctx.limit else isolated
    housekeeping = online - isolated
    if isolated and not housekeeping:
        ctx.warnings.append("every online CPU is isolated: nothing is left for housekeeping")

    violations = []
    _check_cmdline(violations, cmdline, asked, kernel_isolated, kernel_nohz_text, kernel_nohz)

    # -- scheduler, workqueues, IRQs ----------------------------------------------------------
    rt_runtime = _read_text(os.path.join(proc_root, "sys", "kernel", "sched_rt_runtime_us"))
    try:
        rt_runtime = int(rt_runtime) if rt_runtime is not None else None
    except ValueError:
        rt_runtime = None

    workqueue_text = _read_text(os.path.join(sys_root, "devices", "virtual", "workqueue", "cpumask"))
    workqueue = None
    if workqueue_text is not None:
        try:
            workqueue = parse_cpumask(workqueue_text, what="workqueue cpumask")
        except CpuListError as exc:
            ctx.warnings.append(str(exc))
    if workqueue is not None and workqueue & isolated:
        violations.append({
            "kind": "workqueue_cpumask",
            "offender": "/sys/devices/virtual/workqueue/cpumask",
            "message": "unbound workqueues may run on isolated CPUs %s (cpumask %s); write the "
                       "housekeeping CPUs' mask there" % (format_cpulist(workqueue & isolated), workqueue_text),
            "cpus": format_cpulist(workqueue & isolated),
        })

    irqs, default_affinity = _read_irqs(ctx, proc_root, sys_root, isolated, violations)

    # -- guests and threads -------------------------------------------------------------------
    guests = _read_guests(ctx, run_root, proc_root)
    cgroups = _Cgroups(ctx, layout, sys_root, proc_root)
    scan = None
    if gather_threads:
        # sched_getaffinity answers for the TIDs of this PID namespace: only with the real /proc (and /sys, which
        # told the online CPUs); the allowed CPUs it returns are the active ones, so every isolated CPU must be online.
        fast = (os.path.realpath(proc_root) == "/proc" and os.path.realpath(sys_root) == "/sys"
                and hasattr(os, "sched_getaffinity") and isolated <= online)
        scan = scan_tasks(proc_root, isolated, [g["pid"] for g in guests],
                          affinity_of=os.sched_getaffinity if fast else None,
                          affinity_is_status=fast and cpus["possible"] == online)
        if scan.unreadable:
            ctx.warnings.append("%d task(s) had no Cpus_allowed_list in their status" % scan.unreadable)
    given = {}  # cgroup relative path -> isolated CPUs the domain XML gives it
    guest_facts = [_guest_facts(g, scan, cgroups, isolated, violations, given) for g in guests]

    threads_on_isolated = []
    if scan is not None:
        _thread_violations(scan, violations, threads_on_isolated)

    # -- cgroups ------------------------------------------------------------------------------
    _cgroup_violations(ctx, cgroups, isolated, partition_paths, given, violations)

    # -- what the realtime_vm role plans with: topology, definitions, partitions ---------------
    try:
        topology = read_topology(sys_root).as_dict()
    except TopologyError as exc:
        ctx.warnings.append("CPU topology unknown: %s" % exc)
        topology = None
    domains = read_domain_definitions(os.path.join(libvirt_config_dir, "qemu"))
    if domains is None:
        ctx.warnings.append("cannot read the domain definitions in %s/qemu" % libvirt_config_dir)
    rt_partitions = []
    if realtime_partitions:
        subsystems = parse_proc_cgroups(_read_text(os.path.join(proc_root, "cgroups")) or "")
        qemu_conf = _read_text(os.path.join(libvirt_config_dir, "qemu.conf"))
        controllers = parse_qemu_conf_controllers(qemu_conf) if qemu_conf else None
        systemd = os.path.isdir(systemd_run_dir)
        for partition in sorted(set(realtime_partitions)):
            rt_partitions.append(partition_state(partition, layout, sys_root, subsystems, controllers, systemd))

    return {
        "cgroup": layout.as_dict() if layout is not None else None,
        "cpus": {name: _fmt(value) for name, value in cpus.items()},
        "numa_nodes": numa_nodes,
        "smt_siblings": smt_groups,
        "smt_active": smt_active == "1" if smt_active is not None else None,
        "cmdline": {
            "isolcpus": _fmt(asked["isolcpus"]),
            "isolcpus_flags": cmdline["isolcpus_flags"],
            "nohz_full": _fmt(asked["nohz_full"]),
            "rcu_nocbs": _fmt(asked["rcu_nocbs"]) if cmdline["rcu_nocbs"] else cmdline["rcu_nocbs"],
            "irqaffinity": _fmt(asked["irqaffinity"]),
        },
        "kernel": {
            "isolated": _fmt(kernel_isolated),
            "nohz_full": _fmt(kernel_nohz),
            "cpuset_cpus_isolated": _fmt(cpuset_isolated),
            "partitions": [{k: v for k, v in p.items() if not k.startswith("_")} for p in partitions],
        },
        "isolated_cpus": format_cpulist(isolated),
        "isolated_sources": {name: _fmt(value) for name, value in sources.items() if value},
        "housekeeping_cpus": format_cpulist(housekeeping),
        "sched_rt_runtime_us": rt_runtime,
        "workqueue_cpumask": _fmt(workqueue),
        "irq_default_affinity": _fmt(default_affinity),
        "irqs": irqs,
        "guests": guest_facts,
        "threads_scanned": scan.count if scan is not None else None,
        "threads_on_isolated": threads_on_isolated,
        "violations": violations,
        "topology": topology,
        "domains": domains,
        "realtime_partitions": rt_partitions,
        "warnings": ctx.warnings,
    }


def _check_cmdline(violations, cmdline, asked, kernel_isolated, kernel_nohz_text, kernel_nohz):
    """What the command line asks and the kernel does not do (old boot, bad list, missing config)."""
    if asked["isolcpus"] is not None and isolcpus_isolates(cmdline["isolcpus_flags"]) \
            and kernel_isolated is not None and asked["isolcpus"] != kernel_isolated:
        violations.append({
            "kind": "cmdline_mismatch",
            "offender": "isolcpus=",
            "message": "the command line asks isolcpus=%s but /sys/devices/system/cpu/isolated says %r "
                       "(reboot pending, or CPUs the kernel refused)"
                       % (format_cpulist(asked["isolcpus"]), format_cpulist(kernel_isolated)),
            "requested": format_cpulist(asked["isolcpus"]),
            "reported": format_cpulist(kernel_isolated),
        })
    if asked["nohz_full"]:
        if kernel_nohz_text is None:
            violations.append({
                "kind": "cmdline_mismatch",
                "offender": "nohz_full=",
                "message": "the command line asks nohz_full=%s but the kernel has no "
                           "/sys/devices/system/cpu/nohz_full (built without CONFIG_NO_HZ_FULL?)"
                           % format_cpulist(asked["nohz_full"]),
                "requested": format_cpulist(asked["nohz_full"]),
                "reported": None,
            })
        elif kernel_nohz is not None and kernel_nohz != asked["nohz_full"]:
            violations.append({
                "kind": "cmdline_mismatch",
                "offender": "nohz_full=",
                "message": "the command line asks nohz_full=%s but the kernel reports %r"
                           % (format_cpulist(asked["nohz_full"]), format_cpulist(kernel_nohz)),
                "requested": format_cpulist(asked["nohz_full"]),
                "reported": format_cpulist(kernel_nohz),
            })


def irq_changeable(proc_root, sys_root, number):
    """False for IRQs the kernel will not move: a read-only smp_affinity (the kernel creates it without write
    permission when user space may not set the affinity, e.g. managed IRQs) or, where debugfs is mounted, a
    managed, per-CPU or no-balancing IRQ. None when it cannot tell."""
    try:
        if not os.stat(os.path.join(proc_root, "irq", str(number), "smp_affinity")).st_mode & 0o200:
            return False
    except OSError:
        pass
    text = _read_text(os.path.join(sys_root, "kernel", "debug", "irq", "irqs", str(number)))
    if text is None:
        return None
    return not ("IRQD_AFFINITY_MANAGED" in text or "IRQD_PER_CPU" in text or "IRQD_NO_BALANCING" in text)


def _read_irqs(ctx, proc_root, sys_root, isolated, violations):
    irq_dir = os.path.join(proc_root, "irq")
    default_affinity = None
    default_text = _read_text(os.path.join(irq_dir, "default_smp_affinity"))
    if default_text is not None:
        try:
            default_affinity = parse_cpumask(default_text, what="default_smp_affinity")
        except CpuListError as exc:
            ctx.warnings.append(str(exc))
    if default_affinity is not None and default_affinity & isolated:
        violations.append({
            "kind": "irq_default_affinity",
            "offender": "/proc/irq/default_smp_affinity",
            "message": "new IRQs get affinity %s, which includes isolated CPUs %s (set irqaffinity= on "
                       "the command line or write the mask)"
                       % (format_cpulist(default_affinity), format_cpulist(default_affinity & isolated)),
            "cpus": format_cpulist(default_affinity & isolated),
        })
    table = parse_interrupts(_read_text(os.path.join(proc_root, "interrupts")) or "")
    irqs = []
    for number in sorted(int(e) for e in _list_dir(irq_dir) if e.isdigit()):
        entry = str(number)
        path = os.path.join(irq_dir, entry)
        affinity = ctx.cpus(_read_text(os.path.join(path, "smp_affinity_list")), "irq %d smp_affinity_list" % number)
        if affinity is None:
            continue
        effective = ctx.cpus(_read_text(os.path.join(path, "effective_affinity_list")),
                             "irq %d effective_affinity_list" % number)
        actions = sorted(e for e in _list_dir(path) if os.path.isdir(os.path.join(path, e)))
        info = table.get(number, {})
        name = ",".join(actions) or info.get("name", "")
        irqs.append({
            "irq": number,
            "name": name,
            "chip": info.get("chip", ""),
            "affinity": format_cpulist(affinity),
            "effective": _fmt(effective),
            "in_use": bool(actions),
        })
        changeable = irq_changeable(proc_root, sys_root, number)
        irqs[-1]["changeable"] = changeable
        inside = affinity & isolated
        if inside:
            if not actions:
                note = "no handler is registered (unused IRQ); harmless until a driver requests it"
            elif changeable is False:
                note = ("a managed or per-CPU IRQ: writing smp_affinity fails with EIO; "
                        "isolcpus=managed_irq keeps managed IRQs off isolated CPUs")
            elif effective is not None and not (effective & isolated):
                note = ("currently delivered to housekeeping CPU(s) %s, but the allowed set includes "
                        "isolated CPUs" % format_cpulist(effective))
            else:
                note = ("if writing smp_affinity fails with EIO this is a managed or per-CPU IRQ that "
                        "userspace cannot move (isolcpus=managed_irq keeps managed IRQs off isolated CPUs)")
            violations.append({
                "kind": "irq_affinity",
                "offender": "irq %d (%s)" % (number, name or "unnamed"),
                "message": "irq %d may be delivered to isolated CPUs %s (smp_affinity_list %s)"
                           % (number, format_cpulist(inside), format_cpulist(affinity)),
                "irq": number,
                "cpus": format_cpulist(inside),
                "affinity": format_cpulist(affinity),
                "effective": _fmt(effective),
                "changeable": changeable,
                "note": note,
            })
    return irqs, default_affinity


def _guest_facts(guest, scan, cgroups, isolated, violations, given):
    domain = guest["domain"]
    name = guest["name"]
    facts = {
        "name": name,
        "pid": guest["pid"],
        "id": domain["id"] if domain else None,
        "partition": (domain["partition"] or "/machine") if domain else None,
        "pinning": None,
        "threads": [],
    }
    if domain:
        facts["pinning"] = {
            "vcpus": {str(v): _fmt(expected_pinning(domain, "vcpu", v)) for v in range(domain["vcpus"])},
            "emulator": _fmt(expected_pinning(domain, "emulator")),
            "iothreads": {str(i): _fmt(expected_pinning(domain, "iothread", i)) for i in domain["iothreads"]},
        }
    if scan is None:
        return facts
    vcpu_tids = domain["vcpu_tids"] if domain else {}
    for tid, comm, state, last_cpu, rt_priority, policy, affinity_text, flags in sorted(
            scan.guest_tasks.get(guest["pid"], ())):
        if flags & PF_USER_WORKER:
            role, number = "kernel_worker", None
        else:
            role, number = classify_qemu_thread(comm, tid, vcpu_tids)
        path = cgroups.path_of(guest["pid"], tid)
        cpuset_text, cpuset = (None, None)
        if path is not None:
            cpuset_text, cpuset = cgroups.files(path)
        affinity = parse_cpulist(affinity_text)
        pin = expected_pinning(domain, role, number) if domain and role != "kernel_worker" else None
        facts["threads"].append({
            "tid": tid,
            "comm": comm,
            "role": role,
            "id": number,
            "cgroup": path,
            "cpuset": _fmt(cpuset),
            "affinity": format_cpulist(affinity),
            "pinning": _fmt(pin),
            "policy": POLICIES.get(policy, str(policy)),
            "rt_priority": rt_priority,
            "last_cpu": last_cpu,
            "state": state,
        })
        if pin is None:
            continue
        if path is not None and pin & isolated:
            given[path] = given.get(path, frozenset()) | (pin & isolated)
        if pin != affinity or (cpuset is not None and cpuset != pin):
            label = "vcpu %d" % number if role == "vcpu" else (
                "iothread %d" % number if role == "iothread" else "emulator")
            violations.append({
                "kind": "pinning_drift",
                "offender": "guest %s %s (tid %d, %s)" % (name, label, tid, comm),
                "message": "guest %s %s: the domain XML pins %s, the cgroup %s holds %s, the thread may run on %s"
                           % (name, label, format_cpulist(pin), path, _fmt(cpuset), format_cpulist(affinity)),
                "guest": name,
                "role": role,
                "id": number,
                "tid": tid,
                "xml": format_cpulist(pin),
                "cgroup": path,
                "cpuset": _fmt(cpuset),
                "affinity": format_cpulist(affinity),
            })
    return facts


def _thread_violations(scan, violations, threads_on_isolated):
    for pid in sorted(scan.leaks, key=int):
        comm, tids, inside, allowed = scan.leaks[pid]
        tids.sort()
        violations.append({
            "kind": "thread_on_isolated",
            "offender": "pid %s (%s)" % (pid, comm),
            "message": "%d thread(s) of pid %s (%s) may run on isolated CPUs %s together with "
                       "housekeeping CPUs (allowed: %s)"
                       % (len(tids), pid, comm, format_cpulist(inside), format_cpulist(allowed)),
            "pid": int(pid),
            "comm": comm,
            "tids": tids[:MAX_TIDS],
            "thread_count": len(tids),
            "cpus": format_cpulist(inside),
            "affinity": format_cpulist(allowed),
        })
    for pid, comm, affinity, inside in sorted(scan.kthreads):
        violations.append({
            "kind": "kthread_on_isolated",
            "offender": "kthread %d (%s)" % (pid, comm),
            "message": "kernel thread %d (%s) is not bound to one CPU and may run on isolated CPUs %s "
                       "(allowed: %s); move it to the housekeeping CPUs" % (pid, comm, format_cpulist(inside), affinity),
            "pid": pid,
            "comm": comm,
            "cpus": format_cpulist(inside),
            "affinity": affinity,
        })
    for pid in sorted(scan.placed, key=int):
        comm, tids, inside, allowed = scan.placed[pid]
        tids.sort()
        threads_on_isolated.append({
            "pid": int(pid), "comm": comm, "tids": tids[:MAX_TIDS], "thread_count": len(tids),
            "cpus": format_cpulist(allowed),
        })


def _cgroup_violations(ctx, cgroups, isolated, partition_paths, given, violations):
    if cgroups.mount is None or not isolated:
        return
    top = cgroups.dir
    found = []
    for start in ("machine", "machine.slice"):
        if os.path.isdir(os.path.join(top, start)):
            for path in _walk_cgroups(os.path.join(top, start)):
                found.append("/" + os.path.relpath(path, top))
    # Ancestors of a cgroup given isolated CPUs must hold them too.
    total = dict(given)
    for path, cpus in given.items():
        parent = path.rsplit("/", 1)[0]
        while parent:
            total[parent] = total.get(parent, frozenset()) | cpus
            parent = parent.rsplit("/", 1)[0]
    declared = ["/" + p for p in partition_paths]
    for path in found:
        # Inside a declared realtime partition everything is the operator's choice; its ancestors
        # must hold its CPUs.
        if any(path == p or path.startswith(p + "/") for p in declared):
            continue
        _written, cpus = cgroups.files(path)
        inside = (cpus or frozenset()) & isolated
        if not inside:
            continue
        allowed = total.get(path, frozenset())
        for partition in declared:
            if partition.startswith(path + "/"):
                _w, partition_cpus = cgroups.files(partition)
                allowed = allowed | ((partition_cpus or frozenset()) & isolated)
        leak = inside - allowed
        if leak:
            violations.append({
                "kind": "cgroup_cpuset",
                "offender": path,
                "message": "cgroup %s holds isolated CPUs %s that no realtime partition or domain pinning gives "
                           "it (cpus %s)" % (path, format_cpulist(leak), format_cpulist(cpus)),
                "path": os.path.join(top, path.lstrip("/")),
                "cpus": format_cpulist(leak),
                "cpuset": format_cpulist(cpus),
            })
