# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the parts of the isolation facts share: their error, file reads that survive a vanishing file,
and the CPU-list parsing that turns a bad list into a warning instead of a failure.
"""

from __future__ import annotations

import os
import re

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist, parse_cpumask


class IsolationError(RuntimeError):
    """The isolation facts cannot be gathered (bad caller input, unreadable essentials)."""


def read_bytes(path, size=8192):
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


def read_text(path):
    """The stripped text of a small file, or None when it does not exist or cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def list_dir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def rebase(sys_root, mountpoint):
    """A cgroup mountpoint under /sys, moved onto ``sys_root`` (test trees put cgroupfs there)."""
    if sys_root.rstrip("/") == "/sys" or not mountpoint.startswith("/sys/"):
        return mountpoint
    return sys_root.rstrip("/") + mountpoint[len("/sys"):]


class Context(object):
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

    def cpumask(self, text, what):
        """Parse a hex CPU mask the kernel printed; a bad one becomes a warning."""
        if text is None:
            return None
        try:
            return parse_cpumask(text, what=what)
        except CpuListError as exc:
            self.warnings.append(str(exc))
            return None


def format_cpus(cpus):
    return None if cpus is None else format_cpulist(cpus)
