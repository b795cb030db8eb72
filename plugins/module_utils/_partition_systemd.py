# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt partitions on systemd hosts: the slice unit (or machine.slice's drop-in), systemctl, and the one
thing systemd cannot set, ``cpuset.cpus.partition`` on the slice's cgroup.

A partition ``/machine/tenant/rt`` is the unit ``machine-tenant-rt.slice`` that libvirt asks systemd for
(``_partition.slice_name``).  Unit files go through the run's ``WriteGate``; the partition file through the
cpuset engine on the unified hierarchy, planned first on :func:`systemd_view`, the state systemd will leave,
so that a partition the kernel would refuse is refused before the unit is written.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ApplyError, HostLock, execute
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import CpusetModel, Node, parent_of, partition_base
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError, Request, plan
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    DEFAULT_NOT_EXCLUSIVE,
    LIBVIRT_CONTROLLERS,
    UNLIMITED,
    PartitionError,
    TunableError,
    Tunables,
    check_ranges,
    guest_of_cgroup,
    partition_request,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_keeper import (
    apply_steps,
    describe_step,
    diff_of,
    keeper_fits,
    keeper_unit,
    plan_keeper,
    render_keeper,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_cgroupfs import (
    PARTITION_FILE,
    guests_in,
    memory_knob,
    read_text,
    tasks_of,
    walk,
    weight_shown,
)

UNIT_HEADER = "# Managed by rtvirt.kvm.libvirt_partition for libvirt partition %s; changes are overwritten."


# --------------------------------------------------------------------------------------------
# Unit files

def _systemd_size(value):
    return "infinity" if value == UNLIMITED else str(value)


def slice_properties(cpus=None, mems=None, tunables=Tunables()):
    """[Slice] properties in systemd's vocabulary, as (key, value) pairs in a stable order."""
    props = []
    if cpus is not None:
        props.append(("AllowedCPUs", format_cpulist(cpus)))
    if mems is not None:
        props.append(("AllowedMemoryNodes", format_cpulist(mems)))
    t = tunables
    if t.cpu_shares is not None:
        props.append(("CPUWeight", str(t.cpu_shares)))
    if t.memory_hard_limit is not None:
        props.append(("MemoryMax", _systemd_size(t.memory_hard_limit)))
    if t.memory_soft_limit is not None:
        props.append(("MemoryHigh", _systemd_size(t.memory_soft_limit)))
    if t.memory_swap_hard_limit is not None:
        if t.memory_swap_hard_limit == UNLIMITED:
            props.append(("MemorySwapMax", "infinity"))
        elif t.memory_hard_limit not in (None, UNLIMITED) and t.memory_swap_hard_limit >= t.memory_hard_limit:
            props.append(("MemorySwapMax", str(t.memory_swap_hard_limit - t.memory_hard_limit)))
        else:
            raise ValueError("memory_swap_hard_limit needs a finite memory_hard_limit no larger than it on systemd "
                             "hosts (MemorySwapMax= is the swap beyond MemoryMax=)")
    if t.blkio_weight is not None:
        props.append(("IOWeight", str(t.blkio_weight)))
    return props


def render_slice_unit(pname, cpus=None, mems=None, tunables=Tunables()):
    """The unit file text for partition ``pname`` (a PartitionName)."""
    lines = [UNIT_HEADER % pname.name,
             "[Unit]",
             "Description=libvirt resource partition %s" % pname.name,
             "Documentation=https://libvirt.org/cgroups.html",
             "Before=slices.target",
             "",
             "[Slice]"]
    lines.extend("%s=%s" % pair for pair in slice_properties(cpus, mems, tunables))
    return "\n".join(lines) + "\n"


DROP_IN_NAME = "50-rtvirt-kvm.conf"
DROP_IN_HEADER = ("# Managed by rtvirt.kvm.libvirt_partition for libvirt's default partition %s (a drop-in: the unit "
                  "itself is systemd's); changes are overwritten.")


def render_slice_dropin(pname, cpus=None, mems=None, tunables=Tunables()):
    """A drop-in for a slice systemd ships itself (``machine.slice`` for libvirt's default ``/machine``)."""
    lines = [DROP_IN_HEADER % pname.name, "[Slice]"]
    lines.extend("%s=%s" % pair for pair in slice_properties(cpus, mems, tunables))
    return "\n".join(lines) + "\n"


def unit_target(unit_dir, pname):
    """The file this module owns for ``pname``: its own slice unit, or for libvirt's default /machine a
    drop-in for the machine.slice systemd ships (never a replacement unit file).  Returns (path, is_drop_in)."""
    if pname.is_default:
        return os.path.join(unit_dir, pname.slice + ".d", DROP_IN_NAME), True
    return os.path.join(unit_dir, pname.slice), False


def unit_allowed(text, key):
    """A set property (AllowedCPUs=, AllowedMemoryNodes=) of a unit file's text, or None."""
    value = None
    for line in (text or "").splitlines():
        if line.startswith(key + "="):
            value = line.split("=", 1)[1].strip()
    if value is None:
        return None
    try:
        return frozenset(parse_cpulist(value))
    except CpuListError:
        return None


# --------------------------------------------------------------------------------------------
# The slice's cgroup files, as systemd writes the unit's properties

def slice_knobs(tunables, page):
    """[(property=value, cgroup file, what the kernel reads back)] for the tunables a slice unit carries:
    CPUWeight= is cpu.weight, MemoryMax= memory.max, MemoryHigh= memory.high, MemorySwapMax= memory.swap.max,
    IOWeight= io.weight (``default N``).  The kernel keeps whole pages of a memory limit."""
    props = dict(slice_properties(tunables=tunables))
    knobs = []
    for prop, knob in (("CPUWeight", "cpu.weight"), ("MemoryMax", "memory.max"), ("MemoryHigh", "memory.high"),
                       ("MemorySwapMax", "memory.swap.max"), ("IOWeight", "io.weight")):
        if prop not in props:
            continue
        value = props[prop]
        if prop.startswith("Memory"):
            expect = memory_knob(UNLIMITED if value == "infinity" else int(value), page, 2)[1]
        else:
            expect = value
        knobs.append(("%s=%s" % (prop, value), knob, expect))
    return knobs


def knob_drift(slice_dir, tunables, page, offered):
    """[(property=value, file, what it reads, what it should read)] of the slice's cgroup files that differ
    from its unit's properties (a missing file reads None).  ``offered``: the unified root's cgroup.controllers;
    on a systemd host whose controllers are on v1 hierarchies systemd maps the properties there, not checked."""
    drift = []
    for prop, knob, expect in slice_knobs(tunables, page):
        if knob.split(".")[0] not in offered:
            continue
        text = read_text(os.path.join(slice_dir, knob))
        shown = None if text is None else (weight_shown(text) if knob == "io.weight" else text.strip())
        if shown != expect:
            drift.append((prop, os.path.join(slice_dir, knob), shown, expect))
    return drift


def _refuse_limit_below_usage(slice_dir, pname, tunables):
    """systemd writes MemoryMax= to memory.max, and cgroup v2 meets a limit below what the slice uses with reclaim
    and then the OOM killer inside the slice's guests: refuse it before the unit is written."""
    limit = tunables.memory_hard_limit
    if limit is None or limit == UNLIMITED:
        return
    text = (read_text(os.path.join(slice_dir, "memory.current")) or "").strip()
    if text.isdigit() and limit < int(text):
        raise TunableError(
            "partition %s (%s): memory_hard_limit=%d is below the %s bytes its tasks use now (memory.current): "
            "systemd would write MemoryMax= to memory.max and cgroup v2 would reclaim and then OOM-kill inside the "
            "slice; stop or shrink its guests first, or give a higher limit; nothing was changed" % (
                pname.name, pname.slice, limit, text))


# --------------------------------------------------------------------------------------------
# systemctl

class Systemctl:
    """systemctl through the module's run_command (argv, LC_ALL=C); what changes the host is recorded in the gate."""

    def __init__(self, module, gate):
        self.module = module
        self.gate = gate

    def query(self, *args):
        """A read-only call: (rc, stdout), any rc."""
        argv = [self.module.get_bin_path("systemctl", required=True)] + list(args)
        rc, out, _err = self.module.run_command(argv, environ_update={"LC_ALL": "C"})
        return rc, out

    def journal(self, unit):
        """The last lines ``unit`` logged this boot, for a failure message: (rc, text)."""
        journalctl = self.module.get_bin_path("journalctl")
        if not journalctl:
            return 1, ""
        rc, out, _err = self.module.run_command([journalctl, "-b", "-u", unit, "-n", "5", "-o", "cat", "--no-pager"],
                                                environ_update={"LC_ALL": "C"})
        return rc, out if rc == 0 else ""

    def run(self, *args):
        argv = [self.module.get_bin_path("systemctl", required=True)] + list(args)
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise PartitionError("%s failed with exit code %d: %s" % (" ".join(argv), rc, (err or out).strip()))
        self.gate.ran("systemctl %s" % " ".join(args))


# --------------------------------------------------------------------------------------------
# The unified hierarchy as systemd will leave it

class SystemdView:
    """The unified hierarchy as the cpuset engine should see it once systemd has applied the slice unit:
    the slice chain exists with cpuset enabled above it, and the slice holds the unit's AllowedCPUs=.
    Used to plan (and refuse) a partition before anything is written, and in check mode."""

    def __init__(self, fs, overrides):
        self._fs = fs
        self._overrides = overrides
        self.version = 2

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def exists(self, path):
        return path in self._overrides or self._fs.exists(path)

    def read_node(self, path, known_false=()):
        return self._overrides.get(path) or self._fs.read_node(path, known_false)

    def children(self, path):
        names = set(self._fs.children(path))
        names.update(p.rsplit("/", 1)[-1] for p in self._overrides if p and parent_of(p) == path)
        return sorted(names)

    def tasks(self, path):
        return self._fs.tasks(path) if self._fs.exists(path) else []


def systemd_view(fs, pname, cpus, mems):
    levels = ["/".join(pname.slices[:index]) for index in range(1, len(pname.slices) + 1)]
    overrides = {"": replace(fs.read_node(""), subtree_cpuset=True)}
    for path in levels[:-1]:
        overrides[path] = replace(fs.read_node(path) if fs.exists(path) else Node(), subtree_cpuset=True)
    leaf = fs.read_node(levels[-1]) if fs.exists(levels[-1]) else Node()
    overrides[levels[-1]] = replace(leaf, cpus=cpus if cpus is not None else frozenset(),
                                    mems=mems if mems is not None else leaf.mems)
    return SystemdView(fs, overrides)


# --------------------------------------------------------------------------------------------
# Converging a slice

def _paths(layout, pname):
    paths = {}
    if layout.unified is not None:
        paths["unified"] = os.path.join(layout.unified.mountpoint, pname.slice_path)
    for mount in layout.mounts:
        if mount.version == 1:
            for controller in mount.controllers:
                if controller in LIBVIRT_CONTROLLERS:
                    paths[controller] = os.path.join(mount.mountpoint, pname.slice_path)
    return paths


def _refuse_outside_parent(cpuset_fs, pname, cpus, mems):
    # What the parent can give (v2 effective sets, with this slice counted as a member: a partition
    # this slice already is has taken its CPUs out of the parent's cpuset.cpus.effective).
    model = CpusetModel(cpuset_fs)
    parent_path = "/".join(pname.slices[:-1])
    parent_name = pname.slices[-2] if len(pname.slices) > 1 else "the root cgroup"
    parent_cpus = model.effective_cpus(parent_path, excluding=pname.slice_path)
    parent_mems = model.effective_mems(parent_path)
    if cpus is not None and not cpus <= parent_cpus:
        raise PartitionError("cpus=%s is not within the parent slice %s's CPUs (%s)" % (
            format_cpulist(cpus), parent_name, format_cpulist(parent_cpus)))
    if mems is not None and not mems <= parent_mems:
        raise PartitionError("mems=%s is not within the parent slice %s's memory nodes (%s)" % (
            format_cpulist(mems), parent_name, format_cpulist(parent_mems)))


def _remove(host, systemctl, gate, desired, paths, current, unit_file, check_mode, keeper_steps=()):
    pname, guests, planned = desired.pname, [], []
    slice_dir = paths.get("unified") or next(iter(paths.values()), None)
    if slice_dir and os.path.isdir(slice_dir):
        for rel in walk(slice_dir):
            found = guest_of_cgroup(os.path.basename(rel)) if rel else None
            if found and tasks_of(os.path.join(slice_dir, rel), 2 if "unified" in paths else 1):
                guests.append({"name": found[0], "pid": None, "cgroup": os.path.join(pname.slice_path, rel)})
    guests.extend(g for g in guests_in(host, ["/" + pname.slice_path])
                  if not any(g["name"] == other["name"] for other in guests))
    if guests:
        several = len(guests) > 1
        raise PartitionError("cannot remove partition %s (%s): guest%s %s still run%s inside; shut %s down first" % (
            pname.name, pname.slice, "s" if several else "", ", ".join(g["name"] for g in guests),
            "" if several else "s", "them" if several else "it"))
    rc, _out = systemctl.query("is-active", pname.slice)
    if rc == 0:
        # Stops the keeper too (PartOf=), which needs the slice (Requires=), so it is never running on its own.
        planned.append("systemctl stop %s" % pname.slice)
    if current is not None:
        planned.append("remove %s" % unit_file)
    planned.extend(describe_step(step) for step in keeper_steps)
    if current is not None or keeper_steps:
        planned.append("systemctl daemon-reload")
    failed_keeper = bool(keeper_steps) and _keeper_failed(systemctl, pname)
    if failed_keeper:
        planned.append("systemctl reset-failed %s" % keeper_unit(pname))
    if planned and not check_mode:
        if rc == 0:
            systemctl.run("stop", pname.slice)
        if current is not None:
            gate.unlink(unit_file)
        apply_steps(gate, keeper_steps)
        if current is not None or keeper_steps:
            systemctl.run("daemon-reload")
        if failed_keeper:
            systemctl.run("reset-failed", keeper_unit(pname))
    return planned, guests


def _desired_unit(desired, current, drop_in):
    render = render_slice_dropin if drop_in else render_slice_unit
    try:
        new = render(desired.pname, desired.cpus, desired.mems, desired.tunables)
    except ValueError as exc:
        raise PartitionError(str(exc)) from None
    if desired.cpus is None and desired.mems is None and current is not None:
        # Keep what the unit already says when cpus/mems are not given.
        kept = [line for line in current.splitlines() if line.startswith(("AllowedCPUs=", "AllowedMemoryNodes="))]
        if kept:
            new = new.rstrip("\n").split("\n")
            index = new.index("[Slice]") + 1
            new = "\n".join(new[:index] + kept + new[index:]) + "\n"
    return new


def converge_systemd(module, host, gate, layout, desired, lock_timeout, check_mode):
    """Plan the slice and, unless in check mode, apply it under the host-wide lock; return the module's result."""
    pname, cpus, mems, exclusive = desired.pname, desired.cpus, desired.mems, desired.exclusive
    check_ranges(desired.tunables, 2, pname.name)
    unified = layout.unified
    cpuset_fs = None
    if unified is not None and "cpuset" in (read_text(os.path.join(unified.mountpoint, "cgroup.controllers"))
                                            or "").split():
        cpuset_fs = CpusetFs(unified.mountpoint, 2, gate=gate)
    if exclusive is False and cpuset_fs is None:
        # No cpuset on the unified hierarchy (a systemd host with v1 controllers): the slice cannot be a v2
        # partition, so there is nothing to dissolve.
        exclusive = None
    if exclusive is not None and desired.state == "present":
        if exclusive and pname.is_default:
            raise PartitionError(DEFAULT_NOT_EXCLUSIVE % pname.name)
        if cpuset_fs is None:
            raise PartitionError("exclusive makes the slice a cgroup v2 cpuset partition (cpuset.cpus.partition); this "
                                 "systemd host has no cpuset controller on the unified hierarchy (cgroup v1 or hybrid "
                                 "layout: AllowedCPUs= does not reach a v1 cpuset, and systemd has no exclusive "
                                 "property)")
    unit_file, drop_in = unit_target(host.unit_dir, pname)
    paths = _paths(layout, pname)
    current = read_text(unit_file)
    systemctl = Systemctl(module, gate)
    guests, notes = [], []
    if cpuset_fs is not None and (cpus is not None or mems is not None):
        _refuse_outside_parent(cpuset_fs, pname, cpus, mems)
    partition_state = None
    slice_dir = paths.get("unified")
    offered = (read_text(os.path.join(unified.mountpoint, "cgroup.controllers")) or "").split() if unified else []
    page = os.sysconf("SC_PAGE_SIZE")
    drift = []
    keeper_steps, keeper_runs, keeper_diff = [], [], None
    if desired.state == "absent":
        keeper_steps = plan_keeper(host.unit_dir, pname, None)
        keeper_diff = diff_of(keeper_steps, host.unit_dir, pname)
        planned, guests = _remove(host, systemctl, gate, desired, paths, current, unit_file, check_mode, keeper_steps)
        new = None
    else:
        planned = []
        new = _desired_unit(desired, current, drop_in)
        if slice_dir is not None and "memory" in offered:
            _refuse_limit_below_usage(slice_dir, pname, desired.tunables)
        rc, _out = systemctl.query("is-active", pname.slice)
        if new != current:
            planned.extend(["write %s" % unit_file, "systemctl daemon-reload"])
        elif rc == 0 and slice_dir is not None and desired.tunables.any():
            # The unit is as asked but the kernel holds other values (written by hand, or by
            # systemctl set-property): a daemon-reload makes systemd write the unit's properties again.
            drift = knob_drift(slice_dir, desired.tunables, page, offered)
            if drift:
                planned.append("systemctl daemon-reload (%s)" % "; ".join(
                    "%s reads %s, not %s as %s says" % (path, shown, expect, prop) for prop, path, shown, expect in drift))
        if rc != 0:
            planned.append("systemctl start %s" % pname.slice)
        kind = None
        if exclusive is not None:
            kind = partition_request(exclusive, cpuset_fs.kernel_release())
            unit_cpus = cpus if cpus is not None else unit_allowed(new, "AllowedCPUs")
            unit_mems = mems if mems is not None else unit_allowed(new, "AllowedMemoryNodes")
            # Planned on the state systemd will leave: a partition the kernel would mark invalid is
            # refused here, before the unit is written.
            predicted = plan(systemd_view(cpuset_fs, pname, unit_cpus, unit_mems),
                             [Request(path=pname.slice_path, partition=kind)])
            partition_state = cpuset_fs.read(pname.slice_path, PARTITION_FILE)
            if predicted.changed:
                partition_ops = ["%s (in %s; systemd has no property for it)" % (op.describe(2), cpuset_fs.mountpoint)
                                 for op in predicted.ops]
                # A partition is dissolved before systemd changes the slice's CPUs (AllowedCPUs= growing onto a
                # sibling's CPUs while this slice is still a partition would be refused or invalidate it), and
                # formed after them.
                if kind == "member":
                    planned[:0] = partition_ops
                else:
                    planned.extend(partition_ops)
                if new == current and rc == 0 and partition_state is not None:
                    notes.append(
                        "%s reads %r: systemd creates a slice's cgroup afresh (a member) whenever the slice is "
                        "stopped and started again (systemctl restart, or the last unit in it going away after a "
                        "stop), and it has no property for cpuset.cpus.partition; written again (%s, which does "
                        "that on every start of the slice, is %s)" % (
                            os.path.join(cpuset_fs.mountpoint, pname.slice_path, PARTITION_FILE), partition_state,
                            keeper_unit(pname), "not installed yet" if _keeper_missing(host, pname) else
                            "installed: see journalctl -u %s" % keeper_unit(pname)))
            keeper_steps, keeper_runs = _plan_keeper(host, systemctl, pname, cpuset_fs, kind, unit_cpus)
            keeper_diff = diff_of(keeper_steps, host.unit_dir, pname)
            stops = [step for step in keeper_runs if step.startswith("systemctl stop ")]
            planned.extend(stops)
            planned.extend(describe_step(step) for step in keeper_steps)
            planned.extend(step for step in keeper_runs if step not in stops)
        if planned and not check_mode:
            with HostLock(path=host.lock_path, timeout=lock_timeout):
                partition_state = _apply(systemctl, gate, pname, unit_file, current, new, rc, cpuset_fs, kind,
                                         reload=bool(drift))
                _apply_keeper(systemctl, gate, pname, keeper_steps, keeper_runs)
            if slice_dir is not None and desired.tunables.any():
                _verify_knobs(gate, pname, slice_dir, desired.tunables, page, offered)
    result = dict(changed=bool(planned), name=pname.name, cgroup_path=pname.slice_path, paths=paths,
                  unit=pname.slice, unit_file=unit_file, planned=planned, notes=notes, guests=guests,
                  writes=[{"file": f, "value": v} for f, v in gate.writes])
    if partition_state is not None and desired.state == "present":
        result["partition"] = partition_state
    if getattr(module, "_diff", False) and planned:
        if drift:
            result["diff"] = {"before": "".join("%s = %s\n" % (path, shown) for _p, path, shown, _e in drift),
                              "after": "".join("%s = %s\n" % (path, expect) for _p, path, _s, expect in drift),
                              "before_header": "cgroup files of %s" % pname.slice,
                              "after_header": "cgroup files of %s" % pname.slice}
        else:
            result["diff"] = {"before": current or "", "after": new or "",
                              "before_header": unit_file, "after_header": unit_file}
        if keeper_steps:
            # Ansible's diff callback takes a list: the slice's unit first, then the keeper's files.
            shown = {"before": keeper_diff[0], "after": keeper_diff[1],
                     "before_header": "%s (keeper)" % keeper_unit(pname),
                     "after_header": "%s (keeper)" % keeper_unit(pname)}
            result["diff"] = [result["diff"], shown] if (new != current or drift) else [shown]
    return result


def _keeper_failed(systemctl, pname):
    return systemctl.query("is-active", keeper_unit(pname))[1].strip() == "failed"


def _keeper_missing(host, pname):
    return not os.path.exists(os.path.join(host.unit_dir, keeper_unit(pname)))


def _remote(cpuset_fs, pname):
    """Whether the slice would be a remote partition: its parent is a slice that is not a partition root."""
    parent = "/".join(pname.slices[:-1])
    if not parent:
        return False
    return partition_base(cpuset_fs.read(parent, PARTITION_FILE) or "member") not in ("root", "isolated")


def _plan_keeper(host, systemctl, pname, cpuset_fs, kind, unit_cpus):
    """(file steps, systemctl steps in words) for the keeper of an exclusive slice, or for its removal when the
    slice is to be a member again."""
    keeper = keeper_unit(pname)
    if kind == "member":
        text = None
    else:
        if not keeper_fits(pname):
            raise PartitionError("partition %s: the unit that keeps %s a partition, %s, would be longer than systemd's "
                                 "255 characters; choose a shorter name" % (pname.name, pname.slice, keeper))
        try:
            text = render_keeper(pname, cpuset_fs.mountpoint, kind, unit_cpus, _remote(cpuset_fs, pname))
        except ValueError as exc:
            raise PartitionError("partition %s: %s" % (pname.name, exc)) from None
    steps = plan_keeper(host.unit_dir, pname, text)
    active, state = systemctl.query("is-active", keeper)
    runs = []
    if text is None:
        if active == 0:
            runs.append("systemctl stop %s" % keeper)
        if steps:
            runs.append("systemctl daemon-reload")
        # Stopped (or its failure forgotten) before its files go: a loaded unit without its file would linger as
        # "not-found", a failed one in systemctl --failed.
        if steps and state.strip() == "failed":
            runs.append("systemctl reset-failed %s" % keeper)
        return steps, runs
    if steps:
        runs.append("systemctl daemon-reload")
    if steps or active != 0:
        # Run once now: a keeper the kernel refuses fails this run, not the next boot.
        runs.append("systemctl restart %s" % keeper)
    return steps, runs


def _apply_keeper(systemctl, gate, pname, steps, runs):
    """Stop (when it goes), write or remove the keeper's files, reload, run it once (when it stays).  Run after the
    partition is in place, so a failure here leaves a correct partition and says what the keeper lacks."""
    keeper = keeper_unit(pname)
    failed_at = "could not be stopped"
    try:
        if "systemctl stop %s" % keeper in runs:
            systemctl.run("stop", keeper)
        failed_at = "could not be written"
        apply_steps(gate, steps)
        failed_at = "was not loaded"
        if "systemctl daemon-reload" in runs:
            systemctl.run("daemon-reload")
        if "systemctl reset-failed %s" % keeper in runs:
            systemctl.run("reset-failed", keeper)
        failed_at = "failed"
        if "systemctl restart %s" % keeper in runs:
            systemctl.run("restart", keeper)
    except (OSError, PartitionError) as exc:
        _rc, journal = systemctl.journal(keeper)
        raise ApplyError(
            "partition %s (%s): the partition is in place, but its keeper %s %s: %s%s; the partition, the unit files "
            "and systemd's state are left as they are (see systemctl status %s)" % (
                pname.name, pname.slice, keeper, failed_at, exc,
                ("; its journal: " + " | ".join(journal.strip().splitlines()[-5:])) if journal.strip() else "",
                keeper),
            list(gate.writes), [], ["the keeper is left as written"]) from None


def _verify_knobs(gate, pname, slice_dir, tunables, page, offered):
    """Read the slice's cgroup files back: systemd only logs a property the kernel refused, so a unit that says
    one thing while the kernel holds another would otherwise pass as converged."""
    drift = knob_drift(slice_dir, tunables, page, offered)
    if drift:
        raise ApplyError(
            "partition %s (%s): systemd took the unit, but the kernel holds other values: %s (see journalctl -u "
            "%s); the unit file is left as written" % (
                pname.name, pname.slice, "; ".join("%s reads %s, not %s (%s)" % (path, shown, expect, prop)
                                                   for prop, path, shown, expect in drift), pname.slice),
            list(gate.writes), [], ["the unit file and systemd's state are left as written"])


def _set_partition(gate, pname, cpuset_fs, kind):
    """Plan ``kind`` on the slice's cgroup as it is now (systemd may just have re-created it) and write it;
    returns the fs it planned on."""
    fs = CpusetFs(cpuset_fs.mountpoint, 2, gate=gate)
    engine_plan = plan(fs, [Request(path=pname.slice_path, partition=kind)])
    if engine_plan.changed:
        execute(fs, engine_plan.ops, before=engine_plan.before)
    return fs


def _restore_unit(systemctl, gate, unit_file, current):
    """Put the unit file back as it was before this run (``current`` None: there was none) and reload systemd;
    returns the rollback step as the result lists it."""
    if current is None:
        if os.path.exists(unit_file):
            gate.unlink(unit_file)
    else:
        gate.replace_file(unit_file, current)
    systemctl.run("daemon-reload")
    return "write %s" % unit_file


def _undo_unit(systemctl, gate, pname, unit_file, current, unit_changed, exc):
    """Raise ApplyError for ``exc`` (systemd's refusal, in its words) once the unit change is undone."""
    restored, failures = [], []
    if unit_changed:
        try:
            restored.append(_restore_unit(systemctl, gate, unit_file, current))
        except (OSError, PartitionError) as undo_exc:
            failures.append("could not restore %s: %s" % (unit_file, undo_exc))
    message = "%s: %s; %s" % (pname.slice, exc, "ROLLBACK INCOMPLETE: %s" % "; ".join(failures) if failures else
                              "the unit change was undone" if restored else "nothing was changed")
    raise ApplyError(message, list(gate.writes), restored, failures) from None


def _apply(systemctl, gate, pname, unit_file, current, new, was_active, cpuset_fs, kind, reload=False):
    """Unit file, daemon-reload and start through systemd; then the partition file on the slice's cgroup
    (planned again on what systemd really left).  A partition the kernel refuses or marks invalid undoes
    the partition write and the unit change.  Returns cpuset.cpus.partition as read back.

    ``kind == "member"`` (exclusive: false) goes the other way round: the running slice's partition is
    dissolved first, while its CPUs are still the ones the partition was formed with, and only then does
    systemd get the new unit."""
    unit_changed = new != current
    member_state = None
    if kind == "member" and was_active == 0:
        try:
            fs = _set_partition(gate, pname, cpuset_fs, kind)
        except PlanError as exc:
            raise ApplyError("%s: %s; nothing was changed" % (pname.slice, exc), list(gate.writes), [], []) from None
        kind = None
        member_state = fs.read(pname.slice_path, PARTITION_FILE)
    try:
        if unit_changed:
            gate.replace_file(unit_file, new)
        if unit_changed or reload:
            # reload alone: the unit is as asked but the kernel drifted; systemd writes the properties again.
            systemctl.run("daemon-reload")
        if was_active != 0:
            systemctl.run("start", pname.slice)
    except (OSError, PartitionError) as exc:
        # systemd refused the unit or the start (an assertion, a masked parent, a failed dependency): put the
        # unit file back, so that what systemd loads is what it loaded before this run.
        _undo_unit(systemctl, gate, pname, unit_file, current, unit_changed, exc)
    if kind is None:
        return member_state
    try:
        fs = _set_partition(gate, pname, cpuset_fs, kind)
    except (PlanError, ApplyError) as exc:
        message = str(exc) if isinstance(exc, PlanError) else exc.message
        restored = list(getattr(exc, "rolled_back", []))
        failures = list(getattr(exc, "rollback_failures", []))
        try:
            if was_active != 0:
                systemctl.run("stop", pname.slice)
                restored.append("systemctl start %s" % pname.slice)
            if unit_changed:
                restored.append(_restore_unit(systemctl, gate, unit_file, current))
        except (OSError, PartitionError) as undo_exc:
            failures.append("could not restore %s: %s" % (unit_file, undo_exc))
        message = "%s: %s; %s" % (pname.slice, message,
                                  "unit change and slice start undone" if not failures else
                                  "ROLLBACK INCOMPLETE: %s" % "; ".join(failures))
        raise ApplyError(message, list(gate.writes), restored, failures) from None
    return fs.read(pname.slice_path, PARTITION_FILE)
