# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Remove a leftover guest cgroup from the hierarchies other than the cpuset one.

The cpuset hierarchy goes through its own planner (``_cpuset_plan``: simulated first, rolled back on
failure). The other hierarchies (cgroup v1 ``cpu``, ``memory``, ... and the v2 one beside a v1 cpuset)
have only one rule here: a cgroup with tasks cannot be removed. So the tasks go to the cgroup's parent
(threads one by one through ``tasks`` on v1, processes through ``cgroup.procs`` on v2), then the
directories go, deepest first.
"""

from __future__ import annotations

import errno
import os

# systemd's own slices hold the host's services and sessions, never a guest.
_SYSTEMD_SLICES = ("-.slice", "system.slice", "user.slice")


class CgroupRemoveError(Exception):
    """A task could not be moved or a directory not removed; ``moved`` and ``removed`` say what was done."""

    def __init__(self, message, moved, removed):
        super().__init__(message)
        self.moved = moved
        self.removed = removed


def libvirt_path_problem(path):
    """Why ``path`` is not a cgroup of libvirt's trees (below /machine or a top-level partition), or None."""
    parts = path.strip("/").split("/")
    top_ok = parts[0] in ("machine", "machine.slice") or parts[0].endswith(".partition") or (
        parts[0].endswith(".slice") and parts[0] not in _SYSTEMD_SLICES)
    if not top_ok or len(parts) < 2 or ".." in parts or "" in parts:
        return ("path %r must lie below machine/, machine.slice/ or a top-level partition (rt.partition/, "
                "rt.slice/), without '..' or empty levels" % path.strip("/"))
    return None


def _ids(path):
    try:
        with open(path) as handle:
            return [int(x) for x in handle.read().split()]
    except OSError:
        return []


def remove_elsewhere(path, mounts, skip=(), check_mode=False, moved=None, removed=None):
    """Remove ``path`` from every mount but the v1 cpuset ones and those in ``skip`` (real paths).

    Appends to ``moved`` ({tid, to}) and ``removed`` (directories, deepest first) and returns both; in check
    mode only lists what a real run would do. Never touches the memory hierarchy's ``process_api`` cgroup.
    """
    moved = [] if moved is None else moved
    removed = [] if removed is None else removed
    path = path.strip("/")
    for mount in mounts:
        if mount.version == 1 and "cpuset" in mount.controllers:
            continue
        if os.path.realpath(mount.mountpoint) in skip:
            continue
        top = os.path.join(mount.mountpoint, path)
        if not os.path.isdir(top) or "process_api" in top:
            continue
        parent = os.path.dirname(top)
        knob = "tasks" if mount.version == 1 else "cgroup.procs"
        dirs = [d for d, _s, _f in os.walk(top)]
        dirs.sort(key=lambda d: d.count("/"), reverse=True)
        for directory in dirs:
            for tid in _ids(os.path.join(directory, knob)):
                moved.append({"tid": tid, "to": parent})
                if check_mode:
                    continue
                try:
                    with open(os.path.join(parent, knob), "w") as handle:
                        handle.write(str(tid))
                except OSError as exc:
                    # A task that exited meanwhile has nothing left to move.
                    if exc.errno != errno.ESRCH:
                        raise CgroupRemoveError("cannot move task %d from %s to %s: %s" % (tid, directory, parent, exc),
                                                moved, removed) from exc
            removed.append(directory)
            if not check_mode:
                try:
                    os.rmdir(directory)
                except OSError as exc:
                    raise CgroupRemoveError("cannot remove %s: %s" % (directory, exc), moved, removed) from exc
    return moved, removed
