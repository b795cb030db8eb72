#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cgroup_cpuset
short_description: Converge cpuset cgroups in the order the kernel demands
version_added: 0.1.0
description:
  - Creates, changes and removes cpuset cgroups on cgroup v1 and v2 so that the requested CPUs, memory
    nodes, exclusive flags, partitions and tasks are reached without the kernel refusing a write.
  - Writes parents before children when widening, children before parents when narrowing, C(cpuset.cpus)
    and C(cpuset.mems) before any task is attached, exclusive flags only after the sets no longer overlap,
    and on cgroup v2 C(+cpuset) in C(cgroup.subtree_control) top-down.
  - Every operation is simulated against the kernel's cpuset rules before the first write. A request the
    kernel would refuse fails with a message naming the cgroup, the knob, the value and the rule, and the
    host is left untouched.
  - If the kernel still refuses a write half-way, the writes already made are put back in reverse order and
    both the failure and the rollback are reported.
  - A host-wide lock (C(/run/lock/rtvirt-kvm-cpuset.lock)) keeps two runs from interleaving their plans. It is a
    C(flock), which the kernel drops with its holder, so a run killed halfway (even by C(SIGKILL)) leaves no stale
    lock, and the same call afterwards converges. While it holds the lock, a run writes its PID into the file; a run
    that waits in vain names that holder.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description:
      - The cgroup, relative to the root of the cpuset hierarchy, spelled exactly as the kernel lists it,
        for example C(machine/rt.partition) or C(machine.slice/machine-qemu\\x2d1\\x2drt.scope).
      - Absolute paths, C(..), empty components and paths through symlinks are refused.
      - Mutually exclusive with O(cgroups).
    type: str
  state:
    description:
      - V(present) creates the cgroup and any missing ancestors; V(absent) removes it with its whole subtree,
        deepest first.
    type: str
    choices: [present, absent]
    default: present
  cpus:
    description:
      - CPUs in the kernel's list syntax, for example C(2-5,8).
      - When omitted, an existing cgroup keeps its CPUs. On cgroup v1 a new cgroup (or one whose C(cpuset.cpus)
        is empty, which could never hold a task) gets its parent's; on cgroup v2 it inherits them.
      - On cgroup v1 a request that narrows a cgroup below what its descendants hold narrows those
        descendants too (by intersection, deepest first) and says so in RV(notes); if a descendant would be
        left with no CPUs the module fails before writing.
    type: str
  mems:
    description:
      - NUMA memory nodes in the kernel's list syntax. Omitted works as for O(cpus).
    type: str
  cpu_exclusive:
    description:
      - cgroup v1 C(cpuset.cpu_exclusive). Needs the parent to be exclusive and no overlap with any sibling.
    type: bool
  mem_exclusive:
    description:
      - cgroup v1 C(cpuset.mem_exclusive).
    type: bool
  sched_load_balance:
    description:
      - cgroup v1 C(cpuset.sched_load_balance). It only isolates CPUs if every cpuset containing them, the root
        included, has it off.
    type: bool
  partition:
    description:
      - cgroup v2 C(cpuset.cpus.partition).
      - A partition whose parent is not a partition root (a remote partition) gets C(cpuset.cpus.exclusive)
        written on every level from the top down, which needs Linux 6.7 or later.
      - The kernel accepts an impossible partition and marks it invalid; the module reads the state back, reports
        the kernel's reason and rolls back.
    type: str
    choices: [member, root, isolated]
  procs:
    description:
      - PIDs to move into the cgroup with all their threads, after its CPUs and memory nodes are set.
    type: list
    elements: int
    default: []
  threads:
    description:
      - Single thread IDs to move into the cgroup.
    type: list
    elements: int
    default: []
  cgroups:
    description:
      - Several cgroups converged in one plan, each with the options above (O(path) required). Use this to
        widen a parent and its children together, or to converge a whole tree at once.
    type: list
    elements: dict
    suboptions:
      path:
        description: As O(path).
        type: str
        required: true
      state:
        description: As O(state).
        type: str
        choices: [present, absent]
        default: present
      cpus:
        description: As O(cpus).
        type: str
      mems:
        description: As O(mems).
        type: str
      cpu_exclusive:
        description: As O(cpu_exclusive).
        type: bool
      mem_exclusive:
        description: As O(mem_exclusive).
        type: bool
      sched_load_balance:
        description: As O(sched_load_balance).
        type: bool
      partition:
        description: As O(partition).
        type: str
        choices: [member, root, isolated]
      procs:
        description: As O(procs).
        type: list
        elements: int
        default: []
      threads:
        description: As O(threads).
        type: list
        elements: int
        default: []
  migrate:
    description:
      - With O(state=absent), move tasks still inside the subtree to the nearest surviving ancestor first.
        Without it, a cgroup with tasks makes the module fail and list their PIDs.
    type: bool
    default: false
  all_hierarchies:
    description:
      - With V(true), every cgroup with O(state=absent) is also removed from every other mounted cgroup hierarchy
        (cgroup v1 C(cpu), C(memory), ...; the v2 hierarchy beside a v1 cpuset). Its tasks are moved to the
        cgroup's parent first (threads one by one through C(tasks) on v1, processes through C(cgroup.procs) on v2),
        then its directories are removed deepest first. Results in RV(other_hierarchies).
      - Only for libvirt's trees, paths below C(machine), C(machine.slice) or a top-level partition
        (C(rt.partition), C(rt.slice)). The memory hierarchy's C(process_api) cgroup is never touched.
    type: bool
    default: false
  mountpoint:
    description:
      - The cpuset hierarchy's mount point. Discovered from C(/proc/self/mountinfo) when omitted.
      - A directory that is not a cgroup mount (a rehearsal tree) needs O(hierarchy_version).
    type: path
  hierarchy_version:
    description:
      - The cgroup version of O(mountpoint), when it cannot be discovered.
    type: int
    choices: [1, 2]
  lock_timeout:
    description:
      - Seconds to wait for another run holding the host-wide lock.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    details: Plans and simulates every write; creates, writes and locks nothing.
  diff_mode:
    support: full
    details: Before and after of every cgroup touched, with its real path as the header.
  platform:
    platforms: linux
notes:
  - Needs root (or write access to the cgroup hierarchy).
  - On systemd hosts systemd owns C(*.slice) and C(*.scope) cgroups and re-applies its own settings; use
    M(rtvirt.kvm.libvirt_partition) (slice units) for those, and this module for cgroups systemd does not manage.
seealso:
  - name: Linux cpuset documentation (cgroup v1)
    description: The rules this module follows on cgroup v1.
    link: https://docs.kernel.org/admin-guide/cgroup-v1/cpusets.html
  - name: cgroup v2 cpuset controller
    description: The rules this module follows on cgroup v2.
    link: https://docs.kernel.org/admin-guide/cgroup-v2.html#cpuset
"""

EXAMPLES = r"""
- name: A realtime cgroup three levels deep, created parent-first with the parent's memory nodes
  rtvirt.kvm.cgroup_cpuset:
    path: machine/rt.partition/guest1
    cpus: "1"

- name: Widen a parent and its child together in one plan
  rtvirt.kvm.cgroup_cpuset:
    cgroups:
      - path: machine
        cpus: 0-7
      - path: machine/rt.partition
        cpus: 2-7
        cpu_exclusive: true

- name: Move a process with all its threads, after cpus and mems are set
  rtvirt.kvm.cgroup_cpuset:
    path: machine/rt.partition/app
    cpus: "3"
    procs: ["{{ app_pid | int }}"]

- name: An isolated partition on cgroup v2
  rtvirt.kvm.cgroup_cpuset:
    path: rt.slice
    cpus: 2-3
    partition: isolated

- name: Remove a leftover guest cgroup, moving stray tasks to its parent first
  rtvirt.kvm.cgroup_cpuset:
    path: machine/qemu-3-old.libvirt-qemu
    state: absent
    migrate: true

- name: Remove a dead guest's cgroups from every hierarchy, not only the cpuset one
  rtvirt.kvm.cgroup_cpuset:
    path: machine/qemu-3-old.libvirt-qemu
    state: absent
    migrate: true
    all_hierarchies: true
"""

RETURN = r"""
mountpoint:
  description: The cpuset hierarchy written to.
  returned: always
  type: str
  sample: /sys/fs/cgroup/cpuset
hierarchy_version:
  description: Its cgroup version.
  returned: always
  type: int
  sample: 1
cgroups:
  description: Every cgroup the plan touched, with its state before and after.
  returned: always
  type: list
  elements: dict
  sample:
    - path: machine/rt.partition
      real_path: /sys/fs/cgroup/cpuset/machine/rt.partition
      before: {exists: false}
      after: {exists: true, cpus: "1", mems: "0", cpu_exclusive: false, mem_exclusive: false,
              sched_load_balance: true}
writes:
  description:
    - The kernel writes made, in order, as file and value (C(<mkdir>)/C(<rmdir>) for directories). Empty when
      nothing changed, and in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: /sys/fs/cgroup/cpuset/machine/rt.partition/cpuset.cpus, value: "1"}
planned:
  description: The planned operations in order, in words; the same in check mode and in a real run.
  returned: always
  type: list
  elements: str
  sample: ["mkdir '/machine/rt.partition'", "write '1' to machine/rt.partition/cpuset.cpus"]
other_hierarchies:
  description:
    - With O(all_hierarchies), what was done (in check mode, would be done) in the other hierarchies,
      C(removed), the directories removed deepest first, and C(moved), the tasks moved, with C(tid) and C(to).
      Both empty without it.
  returned: always
  type: dict
  sample: {removed: [/sys/fs/cgroup/cpu/machine/qemu-3-rt1.libvirt-qemu/vcpu0],
           moved: [{tid: 4242, to: /sys/fs/cgroup/cpu/machine}]}
notes:
  description: What the planner decided on its own, such as descendants narrowed to fit a narrowed parent.
  returned: always
  type: list
  elements: str
  sample: ["narrowed '/machine/a/b' cpus from 0-3 to 0-1 because its parent '/machine/a' narrows to 0-1"]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroup_remove import (
    CgroupRemoveError,
    libvirt_path_problem,
    remove_elsewhere,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import (
    CgroupDiscoveryError,
    discover_layout,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import (
    ApplyError,
    HostLock,
    LockTimeout,
    execute,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import (
    CpusetFs,
    CpusetPathError,
    PlainFiles,
    WriteGate,
    is_cgroup_mount,
    normalize_cgroup_path,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError, Request, plan

CGROUP_OPTIONS = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    cpus=dict(type="str"),
    mems=dict(type="str"),
    cpu_exclusive=dict(type="bool"),
    mem_exclusive=dict(type="bool"),
    sched_load_balance=dict(type="bool"),
    partition=dict(type="str", choices=["member", "root", "isolated"]),
    procs=dict(type="list", elements="int", default=[]),
    threads=dict(type="list", elements="int", default=[]),
)


def get_argument_spec():
    spec = dict(
        path=dict(type="str"),
        cgroups=dict(type="list", elements="dict",
                     options=dict(path=dict(type="str", required=True), **CGROUP_OPTIONS)),
        migrate=dict(type="bool", default=False),
        all_hierarchies=dict(type="bool", default=False),
        mountpoint=dict(type="path"),
        hierarchy_version=dict(type="int", choices=[1, 2]),
        lock_timeout=dict(type="int", default=60),
    )
    spec.update(CGROUP_OPTIONS)
    return spec


# The kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit): every task ID is below it.
PID_MAX_LIMIT = 4194304


class InputError(Exception):
    pass


def build_request(entry):
    """Turn one cgroup's options into a planner Request, validating path and lists."""
    try:
        path = normalize_cgroup_path(entry["path"])
    except CpusetPathError as exc:
        raise InputError(str(exc)) from None
    try:
        cpus = None if entry.get("cpus") is None else parse_cpulist(entry["cpus"], what="cgroup '/%s' cpus" % path)
        mems = None if entry.get("mems") is None else parse_cpulist(entry["mems"], what="cgroup '/%s' mems" % path)
    except CpuListError as exc:
        raise InputError(str(exc)) from None
    for kind in ("procs", "threads"):
        for task in entry.get(kind) or ():
            if not 0 < task < PID_MAX_LIMIT:
                raise InputError("cgroup '/%s' %s: %d is not a process or thread ID (Linux numbers them 1-%d)"
                                 % (path, kind, task, PID_MAX_LIMIT - 1))
    return Request(path=path, state=entry.get("state") or "present", cpus=cpus, mems=mems,
                   cpu_exclusive=entry.get("cpu_exclusive"), mem_exclusive=entry.get("mem_exclusive"),
                   sched_load_balance=entry.get("sched_load_balance"), partition=entry.get("partition"),
                   procs=tuple(entry.get("procs") or ()), threads=tuple(entry.get("threads") or ()))


def open_hierarchy(mountpoint, version):
    """The cpuset hierarchy to work on: the given mount point, or the one this host uses."""
    if mountpoint is None:
        layout = discover_layout()
        cpuset = layout.cpuset
        if cpuset is None:
            raise InputError("this host has no cpuset controller mounted (cgroup mode %s); mount it or enable it "
                             "in the cgroup2 root's cgroup.subtree_control" % layout.mode)
        if cpuset.root != "/":
            raise InputError("the cpuset hierarchy at %s is mounted from %s, not its root; give mountpoint "
                             "explicitly" % (cpuset.mountpoint, cpuset.root))
        return CpusetFs(cpuset.mountpoint, version or cpuset.version)
    if version is None:
        layout = discover_layout()
        for mount in layout.mounts:
            if os.path.realpath(mount.mountpoint) == os.path.realpath(mountpoint):
                version = mount.version
        if version is None:
            raise InputError("%s is not a cgroup mount; set hierarchy_version to 1 or 2 to use it" % mountpoint)
    if not os.path.isdir(mountpoint):
        raise InputError("mountpoint %s does not exist" % mountpoint)
    # A rehearsal tree (a plain directory) gets plain files: knob files a write creates and an rmdir removes.
    gate = None if is_cgroup_mount(os.path.abspath(mountpoint)) else WriteGate(PlainFiles())
    return CpusetFs(mountpoint, version, gate=gate)


def render_diff(fs, result_plan):
    before, after = [], []
    for entry in result_plan.cgroups():
        header = "[%s]" % fs.real_path(entry["path"])
        before.append(header)
        after.append(header)
        for key, value in sorted(entry["before"].items()):
            before.append("%s = %s" % (key, value))
        for key, value in sorted(entry["after"].items()):
            after.append("%s = %s" % (key, value))
    return {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n",
            "before_header": fs.mountpoint, "after_header": fs.mountpoint}


def run(module):
    params = module.params
    entries = params["cgroups"] if params["cgroups"] is not None else [params]
    requests = [build_request(entry) for entry in entries]
    removals = [r.path for r in requests if r.state == "absent"] if params["all_hierarchies"] else []
    for path in removals:
        problem = libvirt_path_problem(path)
        if problem:
            raise InputError(problem)
    fs = open_hierarchy(params["mountpoint"], params["hierarchy_version"])
    for request in requests:
        try:
            fs.check_no_symlink(request.path)
        except CpusetPathError as exc:
            raise InputError(str(exc)) from None
    elsewhere = {"removed": [], "moved": []}

    def converge():
        result_plan = plan(fs, requests, migrate=params["migrate"])
        if result_plan.changed and not module.check_mode:
            execute(fs, result_plan.ops, before=result_plan.before)
        if removals:
            mounts = discover_layout().mounts
            for path in removals:
                remove_elsewhere(path, mounts, skip={os.path.realpath(fs.mountpoint)}, check_mode=module.check_mode,
                                 moved=elsewhere["moved"], removed=elsewhere["removed"])
        return result_plan

    if module.check_mode:
        result_plan = converge()
    else:
        with HostLock(timeout=params["lock_timeout"], owner="cgroup_cpuset"):
            result_plan = converge()

    cgroups = result_plan.cgroups()
    for entry in cgroups:
        entry["real_path"] = fs.real_path(entry["path"])
    result = dict(
        changed=result_plan.changed or bool(elsewhere["removed"]),
        mountpoint=fs.mountpoint,
        hierarchy_version=fs.version,
        cgroups=cgroups,
        writes=[{"file": path, "value": value} for path, value in fs.writes],
        planned=[op.describe(fs.version) for op in result_plan.ops],
        notes=result_plan.notes,
        other_hierarchies=elsewhere,
    )
    if module._diff and result_plan.changed:
        result["diff"] = render_diff(fs, result_plan)
    return result


def main():
    module = new_module(
        AnsibleModule,
        get_argument_spec(),
        mutually_exclusive=[("path", "cgroups")],
        required_one_of=[("path", "cgroups")],
        supports_check_mode=True,
    )
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    failure = None
    try:
        result = run(module)
    except (InputError, PlanError, CgroupDiscoveryError, LockTimeout) as exc:
        failure = dict(msg=str(exc), changed=False)
    except CgroupRemoveError as exc:
        failure = dict(msg=str(exc), changed=bool(exc.moved or exc.removed),
                       other_hierarchies={"removed": exc.removed, "moved": exc.moved})
    except ApplyError as exc:
        failure = exc.result()
    if failure is not None:
        module.fail_json(**failure)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
