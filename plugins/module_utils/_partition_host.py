# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One libvirt partition, planned and converged on this host: the entry point libvirt_partition runs, and the
one the roles' plan calls (host_plan, guest_plan) run in check mode, so "what would the partition task
change" is answered by the task's own code."""

from __future__ import annotations

import json
import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import discover_layout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import LOCK_PATH, HostLock
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import KernelFiles, WriteGate
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    LIBVIRT_CONTROLLERS,
    parse_desired,
    parse_proc_cgroups,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_cgroupfs import converge_cgroupfs, read_text
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_record import (
    RECORD_PATH,
    describe,
    plan_record,
    read_record,
    write_record,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_systemd import converge_systemd


class Host:
    """Where this host keeps what the planner reads, and how it writes; unit tests point these at a fake tree
    (``files``: a ``PlainFiles`` for a tree of plain files)."""

    mountinfo = "/proc/self/mountinfo"
    proc_cgroups = "/proc/cgroups"
    proc_root = "/proc"
    sys_root = "/sys"
    qemu_run_dir = "/run/libvirt/qemu"
    systemd_run_dir = "/run/systemd/system"
    unit_dir = "/etc/systemd/system"
    qemu_conf = "/etc/libvirt/qemu.conf"
    lock_path = LOCK_PATH
    partition_record = RECORD_PATH     # what the qemu hook may re-create (_partition_record)
    files = None            # None: KernelFiles(sys_root)


def partition_argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        cpus=dict(type="str"),
        mems=dict(type="str"),
        exclusive=dict(type="bool"),
        cpu_shares=dict(type="int"),
        memory_hard_limit=dict(type="str"),
        memory_soft_limit=dict(type="str"),
        memory_swap_hard_limit=dict(type="str"),
        blkio_weight=dict(type="int"),
        controllers=dict(type="list", elements="str", choices=list(LIBVIRT_CONTROLLERS)),
        lock_timeout=dict(type="int", default=60),
        record=dict(type="bool", default=True),
    )


def partition_params(**given):
    """libvirt_partition's parameters with its defaults, for a caller that is not that module."""
    params = {key: spec.get("default") for key, spec in partition_argument_spec().items()}
    params.update((key, value) for key, value in given.items() if value is not None)
    return params


def converge_partition(module, params, host, check_mode):
    """libvirt_partition's result for ``params``: planned (``planned``: the changes in words, empty on a converged
    host) and, unless ``check_mode``, applied.  ``module`` runs systemctl on systemd hosts (read-only calls only
    in check mode).  Raises PartitionError, PlanError, CgroupDiscoveryError, LockTimeout or ApplyError."""
    desired = parse_desired(params, parse_proc_cgroups(read_text(host.proc_cgroups) or ""))
    layout = discover_layout(host.mountinfo)
    gate = WriteGate(host.files if host.files is not None else KernelFiles(host.sys_root))
    if os.path.isdir(host.systemd_run_dir):
        return converge_systemd(module, host, gate, layout, desired, params["lock_timeout"], check_mode)
    diff = getattr(module, "_diff", False)
    result = converge_cgroupfs(host, gate, layout, desired, check_mode, params["lock_timeout"], diff=diff)
    _converge_record(host, desired, result, check_mode, params["lock_timeout"], diff, keep=params.get("record", True))
    return result


def _converge_record(host, desired, result, check_mode, lock_timeout, diff, keep=True):
    """Enter the partition in (or drop it from) the record the qemu hook re-creates from, as one more planned step
    of the same run: after the cgroups, so a partition the kernel refused is never recorded."""
    path = host.partition_record

    def step():
        record = read_record(path)
        after = plan_record(record, desired, keep)
        if after is not None and not check_mode:
            write_record(path, after)
        return record, after

    if check_mode:
        record, after = step()
    else:
        # The same lock as the cgroups: two runs recording different partitions must not lose one of them.
        with HostLock(path=host.lock_path, timeout=lock_timeout):
            record, after = step()
    if after is None:
        return
    name = desired.pname.name
    entry = after["partitions"].get(name)
    result["changed"] = True
    result["planned"].append(describe(path, name, entry))
    if not check_mode:
        result["writes"].append({"file": path, "value": "<record %s>" % name})
    if diff:
        shown = result.setdefault("diff", {"before": "", "after": "", "before_header": "cgroup hierarchies",
                                           "after_header": "cgroup hierarchies"})
        previous = record["partitions"].get(name)
        shown["before"] += "%s %s = %s\n" % (path, name, json.dumps(previous, sort_keys=True) if previous else "absent")
        shown["after"] += "%s %s = %s\n" % (path, name, json.dumps(entry, sort_keys=True) if entry else "absent")


def planned_steps(module, **given):
    """What libvirt_partition with ``given`` would do on this host, in its words ([]: nothing): its own planner, in
    check mode.  Raises as converge_partition does."""
    return converge_partition(module, partition_params(**given), Host(), check_mode=True)["planned"]
