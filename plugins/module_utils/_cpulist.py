# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU and NUMA-node lists in the kernel's list syntax (``0-3,8,10-11``), hex masks, and libvirt's cpusets.

The kernel accepts ``N``, ``A-B`` and ``A-B:U/G`` (use U of every G CPUs) separated by commas;
it rejects reversed ranges, empty elements and junk with EINVAL.  We parse the same grammar
strictly so that a bad value fails here, with a sentence, instead of half-way through a plan.
libvirt's cpuset attributes have a grammar of their own (:func:`parse_libvirt_cpuset`).
"""

from __future__ import annotations

import re

# The most CPUs a Linux kernel can be built for (x86_64 MAXSMP: CONFIG_NR_CPUS=8192; NUMA nodes are fewer still).
# A number at or above it names no CPU or node on any host, and ranges up to it stay cheap to expand: without it
# "0-99999999999999999999" would be expanded one number at a time, and a mask of CPU 10**20 never built.
MAX_CPUS = 8192

_ELEMENT = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?$")


class CpuListError(ValueError):
    """A list that the kernel would reject, with a message a person can act on."""


def parse_cpulist(text, what="CPU list", limit=None):
    """Return the frozenset of numbers in ``text``.

    ``what`` names the value in error messages ("cpus", "mems", "isolcpus=").  ``limit`` is the
    exclusive upper bound (e.g. the number of possible CPUs); numbers at or above it are refused.
    An empty or all-blank string is the empty set, as the kernel reads it.
    """
    if text is None:
        return frozenset()
    if not isinstance(text, str):
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        else:
            raise CpuListError("%s must be a string such as '0-3,8', not %r" % (what, text))
    stripped = text.strip()
    if not stripped:
        return frozenset()
    result = set()
    for raw in stripped.split(","):
        element = raw.strip()
        if not element:
            raise CpuListError("%s %r has an empty element (stray comma)" % (what, text))
        match = _ELEMENT.match(element)
        if not match:
            raise CpuListError(
                "%s %r: %r is not a number or range (expected forms: 3, 0-3, 0-7:2/4)" % (what, text, element))
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise CpuListError("%s %r: range %r is reversed (write %d-%d)" % (what, text, element, last, first))
        used, group = 1, 1
        if match.group(3) is not None:
            used, group = int(match.group(3)), int(match.group(4))
            if used == 0 or group == 0 or used > group:
                raise CpuListError(
                    "%s %r: stride %r needs 0 < used <= group" % (what, text, element))
        if limit is not None and last >= limit:
            raise CpuListError("%s %r: %d is out of range (this host has 0-%d)" % (what, text, last, limit - 1))
        if last >= MAX_CPUS:
            raise CpuListError("%s %r: %d is beyond any CPU or NUMA node Linux can have (at most %d, numbered 0-%d)"
                               % (what, text, last, MAX_CPUS, MAX_CPUS - 1))
        for number in range(first, last + 1):
            if (number - first) % group < used:
                result.add(number)
    return frozenset(result)


def parse_libvirt_cpuset(text, what="cpuset"):
    """Parse libvirt's cpuset syntax: ``N``, ``N-M`` and ``^N`` (remove N), left to right.

    The grammar of libvirt's own parser (virBitmapParse): no strides, no ``^N-M``, and an exclusion
    only removes what the elements before it added (``^3,1-4`` is 1-4).  libvirt refuses an empty
    cpuset and one that selects no CPU, so they are errors here too.
    """
    if text is None or not text.strip():
        raise CpuListError("%s is empty" % what)
    result = set()
    for raw in text.split(","):
        element = raw.strip()
        if not element:
            raise CpuListError("%s %r has an empty element (stray comma)" % (what, text))
        negate = element.startswith("^")
        body = element[1:].strip() if negate else element
        if ":" in body or (negate and "-" in body) or not re.match(r"^\d+(\s*-\s*\d+)?$", body):
            raise CpuListError("%s %r: %r is not N, N-M or ^N" % (what, text, element))
        numbers = parse_cpulist(body.replace(" ", ""), what=what)
        if negate:
            result -= numbers
        else:
            result |= numbers
    if not result:
        raise CpuListError("%s %r selects no CPU" % (what, text))
    return frozenset(result)


def format_cpulist(numbers):
    """Return the kernel's normalized list form: sorted, ranges collapsed, no spaces."""
    ordered = sorted(set(numbers))
    parts = []
    start = prev = None
    for number in ordered:
        if start is None:
            start = prev = number
        elif number == prev + 1:
            prev = number
        else:
            parts.append(_range(start, prev))
            start = prev = number
    if start is not None:
        parts.append(_range(start, prev))
    return ",".join(parts)


def _range(start, end):
    return str(start) if start == end else "%d-%d" % (start, end)


def normalize_cpulist(text, what="CPU list", limit=None):
    """Parse and re-format; ``'3,0-2, 8'`` becomes ``'0-3,8'``."""
    return format_cpulist(parse_cpulist(text, what=what, limit=limit))


def parse_cpumask(text, what="CPU mask"):
    """Parse a hex mask as in ``/proc/irq/N/smp_affinity`` (``ff,ffffffff``; bit N = CPU N)."""
    cleaned = (text or "").strip().replace(",", "")
    if not cleaned:
        return frozenset()
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise CpuListError("%s %r is not a hexadecimal mask" % (what, text)) from None
    result = set()
    bit = 0
    while value:
        if value & 1:
            result.add(bit)
        value >>= 1
        bit += 1
    return frozenset(result)


def format_cpumask(numbers):
    """Format a set as the kernel's comma-grouped hex mask (groups of 32 bits)."""
    value = 0
    for number in numbers:
        value |= 1 << number
    digits = "%x" % value
    groups = []
    while len(digits) > 8:
        groups.insert(0, digits[-8:])
        digits = digits[:-8]
    groups.insert(0, digits)
    return ",".join(groups)
