# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the cgroup hierarchies are: discovery from ``/proc/self/mountinfo``.

A host is ``v1`` (one mount per controller, or combined mounts such as ``cpuset,cpu,cpuacct``),
``v2`` (one unified mount) or ``hybrid`` (v1 controllers plus a cgroup2 mount, usually at
``/sys/fs/cgroup/unified``, that holds no controllers).  The cpuset controller lives in exactly one
of them; that is the hierarchy the cpuset engine writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

V1 = "v1"
V2 = "v2"
HYBRID = "hybrid"

# Controllers a v1 mount may carry; anything else in its super options is a mount option.
_V1_CONTROLLERS = frozenset((
    "cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
    "perf_event", "hugetlb", "pids", "rdma", "misc",
))


class CgroupDiscoveryError(RuntimeError):
    """The host's cgroup setup could not be read or has no usable cpuset hierarchy."""


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy."""

    mountpoint: str
    version: int               # 1 or 2
    controllers: tuple         # v1: the controllers bound to it; v2: those enabled at its root
    root: str = "/"            # the mount's root inside the hierarchy ("/" unless a cgroup namespace/bind)
    name: str = ""             # v1 named hierarchy, e.g. "systemd"

    def as_dict(self):
        return {"mountpoint": self.mountpoint, "version": self.version,
                "controllers": list(self.controllers), "root": self.root, "name": self.name}


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup setup, as the rest of the collection needs it."""

    mode: str                              # v1, v2 or hybrid
    mounts: tuple = field(default_factory=tuple)

    @property
    def unified(self):
        """The cgroup2 mount, or None."""
        for mount in self.mounts:
            if mount.version == 2:
                return mount
        return None

    def v1_mount(self, controller):
        """The v1 mount carrying ``controller`` (combined mounts included), or None."""
        for mount in self.mounts:
            if mount.version == 1 and controller in mount.controllers:
                return mount
        return None

    @property
    def cpuset(self):
        """The hierarchy that carries cpuset: a v1 mount, else the unified mount if it offers it."""
        mount = self.v1_mount("cpuset")
        if mount is not None:
            return mount
        unified = self.unified
        if unified is not None and "cpuset" in unified.controllers:
            return unified
        return None

    def controller_mounts(self):
        """Map every available controller to the mount that carries it (v1 wins on hybrid hosts)."""
        result = {}
        unified = self.unified
        if unified is not None:
            for controller in unified.controllers:
                result[controller] = unified
        for mount in self.mounts:
            if mount.version == 1:
                for controller in mount.controllers:
                    result[controller] = mount
        return result

    def as_dict(self):
        cpuset = self.cpuset
        return {
            "mode": self.mode,
            "mounts": [m.as_dict() for m in self.mounts],
            "cpuset_mountpoint": cpuset.mountpoint if cpuset else None,
            "cpuset_version": cpuset.version if cpuset else None,
        }


def unescape_mount_field(value):
    r"""mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134."""
    if "\\" not in value:
        return value
    out = []
    i = 0
    while i < len(value):
        if value[i] == "\\" and i + 4 <= len(value) and value[i + 1:i + 4].isdigit():
            out.append(chr(int(value[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text, read_controllers=None):
    """Return the :class:`CgroupLayout` described by a mountinfo text.

    ``read_controllers(mountpoint)`` returns the text of ``cgroup.controllers`` at a cgroup2
    mount's root (None when unreadable); injected so that parsing stays testable without a host.
    """
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        after = right.split()
        if len(fields) < 5 or len(after) < 1:
            continue
        fstype = after[0]
        super_options = after[2].split(",") if len(after) > 2 else []
        root = unescape_mount_field(fields[3])
        mountpoint = unescape_mount_field(fields[4])
        if fstype == "cgroup":
            controllers = tuple(o for o in super_options if o in _V1_CONTROLLERS)
            name = ""
            for option in super_options:
                if option.startswith("name="):
                    name = option[len("name="):]
            mounts.append(CgroupMount(mountpoint, 1, controllers, root, name))
        elif fstype == "cgroup2":
            text_controllers = read_controllers(mountpoint) if read_controllers else None
            controllers = tuple((text_controllers or "").split())
            mounts.append(CgroupMount(mountpoint, 2, controllers, root))
    # A hierarchy mounted twice (bind mounts) counts once: keep the first mountpoint.
    seen = set()
    unique = []
    for mount in mounts:
        key = (mount.version, mount.controllers, mount.name)
        if key in seen:
            continue
        seen.add(key)
        unique.append(mount)
    has_v1 = any(m.version == 1 and m.controllers for m in unique)
    has_v2 = any(m.version == 2 for m in unique)
    if has_v1 and has_v2:
        mode = HYBRID
    elif has_v1:
        mode = V1
    elif has_v2:
        mode = V2
    else:
        raise CgroupDiscoveryError("no cgroup hierarchy is mounted (looked for cgroup and cgroup2 in mountinfo)")
    return CgroupLayout(mode, tuple(unique))


def _read_controllers(mountpoint):
    try:
        with open(os.path.join(mountpoint, "cgroup.controllers")) as handle:
            return handle.read()
    except OSError:
        return None


def discover_layout(mountinfo_path="/proc/self/mountinfo"):
    """Read this host's cgroup layout."""
    try:
        with open(mountinfo_path) as handle:
            text = handle.read()
    except OSError as exc:
        raise CgroupDiscoveryError("cannot read %s: %s" % (mountinfo_path, exc.strerror)) from None
    return parse_mountinfo(text, _read_controllers)


def cpuset_features(mountpoint, version):
    """Which optional cpuset knobs this kernel offers, probed in a non-root cgroup when possible.

    The root cgroup lacks most knobs on v2, so look in the first child directory found.
    """
    probe = mountpoint
    try:
        for entry in sorted(os.listdir(mountpoint)):
            candidate = os.path.join(mountpoint, entry)
            if os.path.isdir(candidate) and not os.path.islink(candidate):
                probe = candidate
                break
    except OSError:
        pass

    def has(name):
        return os.path.exists(os.path.join(probe, name)) or os.path.exists(os.path.join(mountpoint, name))

    if version == 1:
        return {"partition": False, "cpus_exclusive": False, "cpus_isolated": False,
                "sched_load_balance": has("cpuset.sched_load_balance")}
    return {
        "partition": has("cpuset.cpus.partition"),
        "cpus_exclusive": has("cpuset.cpus.exclusive"),
        "cpus_isolated": os.path.exists(os.path.join(mountpoint, "cpuset.cpus.isolated")),
        "sched_load_balance": False,
    }


def cgroup_paths_of(pid, proc_root="/proc"):
    """Parse ``/proc/PID/cgroup`` into {controller or "" (unified) or "name=X": path}."""
    result = {}
    with open(os.path.join(proc_root, str(pid), "cgroup")) as handle:
        for line in handle:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            _hid, controllers, path = parts
            if not controllers:
                result[""] = path
                continue
            for controller in controllers.split(","):
                result[controller] = path
    return result


def kernel_at_least(release, version):
    """Whether a kernel release string such as ``6.12.95+deb12-amd64`` is at least ``version``."""
    numbers = []
    for part in release.split(".")[:2]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        numbers.append(int(digits or 0))
    return tuple(numbers) >= tuple(version)
