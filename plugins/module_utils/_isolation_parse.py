# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parsers of the isolation facts: ``/proc/cmdline``, task ``stat`` and ``status``,
``/proc/interrupts`` and libvirt's domain status XML.

They take text or bytes and return plain values; reading the files is left to the callers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.rtvirt.kvm.plugins.module_utils._grub import split_cmdline
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_libvirt_cpuset

PF_USER_WORKER = 0x00004000   # kernel-made tasks inside a user process (vhost, kvm-nx-lpage-recovery)
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000

POLICIES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline", 7: "ext"}

ISOLCPUS_FLAGS = ("nohz", "domain", "managed_irq")

# Kernel parameters whose value is a CPU list and that matter for isolation.
CMDLINE_LISTS = ("nohz_full", "rcu_nocbs", "irqaffinity")


def parse_cmdline(text):
    """Return what ``/proc/cmdline`` asks about isolation.

    ``{"isolcpus": LIST or None, "isolcpus_flags": [...], "isolcpus_unknown_flags": [...],
    "nohz_full": LIST or None, "rcu_nocbs": LIST, "" (given without a list) or None,
    "irqaffinity": LIST or None}``, lists as written on the command line.  A parameter given
    twice: the last one wins.
    """
    result = {"isolcpus": None, "isolcpus_flags": [], "isolcpus_unknown_flags": []}
    for name in CMDLINE_LISTS:
        result[name] = None
    for param in split_cmdline(text):
        key, sep, value = param.partition("=")
        if key == "isolcpus":
            flags, unknown, cpus = _split_isolcpus(value)
            result["isolcpus"] = cpus
            result["isolcpus_flags"] = flags
            result["isolcpus_unknown_flags"] = unknown
        elif key in CMDLINE_LISTS:
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


AFFINITY_KEY = b"\nCpus_allowed_list:"
AFFINITY_KEY_LEN = len(AFFINITY_KEY)


def parse_status_affinity(data):
    """Return the ``Cpus_allowed_list`` value of a ``/proc/.../status`` text (bytes or str), or None."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    start = (b"\n" + data).find(AFFINITY_KEY)
    if start < 0:
        return None
    start += len(AFFINITY_KEY) - 1
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
