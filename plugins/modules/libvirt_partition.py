#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_partition
short_description: Create and remove libvirt resource partitions (cgroups or systemd slices)
version_added: 0.1.0
description:
  - Makes the resource partition a domain names in C(<resource><partition>) exist wherever libvirt looks
    for it, so that the domain starts. libvirt creates only its default C(/machine) itself; any other
    partition fails the start until the administrator creates it.
  - On hosts without systemd (cgroup v1, hybrid, or v2) it creates one directory per level, named as
    libvirt names them (C(/machine/tenant/rt) is C(machine/tenant.partition/rt.partition)), in every
    hierarchy libvirt 9.0 uses on this host, detected from the mounts rather than assumed. On a hybrid
    host that includes the cgroup2 tree. The cpuset hierarchy is written through the collection's cpuset
    engine, parents first, so every level has CPUs and memory nodes before a guest can be put in it.
  - A partition that is present in only some hierarchies (libvirt removes the other ones when a start
    fails because one is missing) is repaired; what is already there is left alone.
  - On systemd hosts (C(/run/systemd/system) exists) it writes the slice unit libvirt asks systemd for
    (C(/machine/tenant/rt) is C(machine-tenant-rt.slice), C(/rt) is C(rt.slice)) under C(/etc/systemd/system),
    reloads systemd and starts the slice. Tunables are unit properties (C(CPUWeight=), C(MemoryMax=),
    C(MemoryHigh=), C(MemorySwapMax=), C(IOWeight=)), so they persist; the slice's cgroup files are read back after
    systemd applied them, and a file that differs from the unit (changed by hand) is put back with
    C(systemctl daemon-reload). For C(/machine) it writes a drop-in,
    C(/etc/systemd/system/machine.slice.d/50-rtvirt-kvm.conf), and never replaces systemd's own C(machine.slice).
  - V(absent) refuses while a guest (or any other task) runs inside the partition and names it.
  - On hosts without systemd it keeps a record of the partitions it manages,
    C(/etc/libvirt/hooks/rtvirt-kvm-partitions.json) (JSON, mode 0644), with the CPUs, memory nodes and
    exclusivity each was given; V(absent) drops the entry. It is what the qemu hook of the P(rtvirt.kvm.host_prep#role)
    role re-creates at a guest's start after a reboot; a missing partition that is not recorded fails the guest's
    start instead of becoming a new cgroup. The record is one more planned step (RV(planned), the diff), written
    after the cgroups, under the same lock, and never in check mode.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - The partition exactly as the domain XML's C(<partition>) spells it, for example C(/machine/production)
        or C(/machine/tenant/rt).
      - It must be absolute. Realtime partitions belong at the top level beside libvirt's default C(/machine)
        (C(/rt) is C(rt.partition) in every v1 controller and C(rt.slice) on systemd hosts), so that C(/machine)
        can be kept off the realtime CPUs; partitions below C(/machine) work too.
      - C(/machine) itself can be given with O(cpus) and O(mems) to keep ordinary guests on the housekeeping
        CPUs; libvirt creates and removes it, so V(absent) is refused for it.
      - C(/system/...) and C(/user/...) are refused because on systemd hosts they map into systemd's own
        C(system.slice) and C(user.slice), whose C(system-*.slice) and C(user-*.slice) names systemd and logind
        already use.
      - Each level may hold letters, digits, C(_), C(-), C(.) and C(:). Empty levels, C(.), C(..) and
        names of libvirt domain or systemd unit cgroups are refused.
    type: str
    required: true
  state:
    description:
      - V(present) creates (or repairs) the partition and sets what is asked; V(absent) removes its deepest
        level (with anything below it, deepest first) from every hierarchy, or stops and deletes its slice unit
        (with the keeper of an exclusive slice and its symlinks, see O(exclusive)).
      - Levels above the partition are created when missing and never removed.
    type: str
    choices: [present, absent]
    default: present
  cpus:
    description:
      - The partition's CPUs in the kernel's list syntax (C(cpuset.cpus), or C(AllowedCPUs=) on systemd hosts).
      - When omitted, a new partition gets its parent's CPUs and an existing one keeps its own.
      - Must lie within the parent's CPUs.
    type: str
  mems:
    description:
      - The partition's NUMA memory nodes (C(cpuset.mems), or C(AllowedMemoryNodes=)). Omitted works as for O(cpus).
    type: str
  exclusive:
    description:
      - Kernel-enforced exclusivity of the partition's CPUs. No sibling may overlap them.
      - cgroup v1 (and hybrid hosts without systemd) C(cpuset.cpu_exclusive) on every level of the partition,
        C(/machine) included (the kernel only lets a cpuset be exclusive when its parent is).
      - cgroup v2, with or without systemd, makes the partition a kernel cpuset partition,
        C(cpuset.cpus.partition=isolated) (Linux 5.15 and later, no load balancing and no scheduler domain) or
        C(root) on older kernels, through the collection's cpuset engine. A top-level partition (C(/rt)) is a
        local partition (its parent is the root cgroup); one below C(/machine) is a remote partition and needs
        C(cpuset.cpus.exclusive) written top-down (Linux 6.7 and later; refused naming the kernel before).
        Requests the kernel would mark invalid (CPUs shared with a sibling, the parent's last CPUs, no CPUs,
        parent not a partition) are refused before anything is written, naming the rule; an invalid state the
        kernel reports anyway is read back, reported with the kernel's reason and rolled back.
      - On systemd hosts the slice's CPUs go through systemd (C(AllowedCPUs=) in the unit) but
        C(cpuset.cpus.partition) is written directly on the slice's cgroup, because systemd has no property for
        it. A C(systemctl daemon-reload) keeps it; a reboot or C(systemctl restart) (or stop and start) of the
        slice makes systemd create the cgroup afresh, as a C(member).
      - So on systemd hosts V(true) also installs and enables the slice's keeper,
        C(/etc/systemd/system/rtvirt-partition-<slice>.service) (C(rtvirt-partition-rt.service) for C(/rt)), a
        C(Type=oneshot) unit with C(RemainAfterExit=yes), C(Requires=), C(After=) and C(PartOf=) the slice, linked
        into C(<slice>.wants/) and C(multi-user.target.wants/) and ordered C(Before=libvirtd.service
        virtqemud.service), whose C(ExecStart=) (one C(/bin/sh -c) line) writes the partition (for a remote
        partition C(cpuset.cpus.exclusive) on every level first) whenever the slice starts, at boot before
        libvirt autostarts guests. It is idempotent and fails with the cgroup, the knob, the value and the
        kernel's rule in the journal when the kernel refuses. The module writes it after the partition is in place
        and runs it once (C(systemctl restart)), so a keeper that fails fails the run. A missing or failed keeper,
        or a partition found as a C(member), is put right by the next run, saying so in RV(notes).
      - V(false) turns a partition back into a member (v2) or clears the flag (v1), and on systemd hosts stops and
        removes the keeper and its symlinks; omitted leaves both as they are.
        Clearing comes before any CPU change in the same call (v1 C(cpu_exclusive=0) before the CPUs widen; on
        systemd hosts C(member) is written before systemd gets the new C(AllowedCPUs=)), so a partition can widen
        onto CPUs a sibling holds in one call. On a systemd host without cpuset on the unified hierarchy, where
        no slice can be a partition, V(false) does nothing.
      - Refused for C(/machine) on cgroup v2, where every guest without a C(<partition>) runs.
    type: bool
  cpu_shares:
    description:
      - The partition's CPU weight, as C(virsh schedinfo cpu_shares) sets it for a domain. cgroup v1 C(cpu.shares)
        (2-262144; the kernel clamps other values silently, so they are refused), cgroup v2 C(cpu.weight) (1-10000),
        systemd C(CPUWeight=).
      - Tunables are written on the partition's own level and read back as the kernel shows them; a second run
        compares with that, so the kernel's rounding never makes a run changed. A value outside the knob's range, a
        knob this kernel lacks, or a limit the kernel refuses fails naming the partition, the option, the value and
        the rule; a refused write undoes the run's earlier writes.
    type: int
  memory_hard_limit:
    description:
      - As C(virsh memtune --hard-limit). Bytes, a size with a binary unit (C(4G), C(512MiB)), or C(unlimited).
        cgroup v1 C(memory.limit_in_bytes), v2 C(memory.max), systemd C(MemoryMax=).
      - The kernel keeps whole pages (rounds down); C(unlimited) reads back as the kernel's maximum on v1
        (C(9223372036854771712) with 4 KiB pages) and as C(max) on v2.
      - On cgroup v1 a limit below what the partition's tasks use is tried by the kernel, which reclaims and refuses
        (EBUSY) what it cannot reclaim. On cgroup v2 and systemd hosts such a limit is refused before any write,
        naming C(memory.current), because the kernel's answer there would be the OOM killer inside the partition.
    type: str
  memory_soft_limit:
    description:
      - As C(virsh memtune --soft-limit). cgroup v1 C(memory.soft_limit_in_bytes), v2 C(memory.high) (what
        libvirt uses for it), systemd C(MemoryHigh=).
    type: str
  memory_swap_hard_limit:
    description:
      - As C(virsh memtune --swap-hard-limit), memory plus swap. cgroup v1 C(memory.memsw.limit_in_bytes);
        on v2 C(memory.swap.max) and on systemd C(MemorySwapMax=) get the difference to O(memory_hard_limit),
        as libvirt writes them, so there O(memory_hard_limit) is needed too.
    type: str
  blkio_weight:
    description:
      - As C(virsh blkiotune --weight). cgroup v1 C(blkio.bfq.weight) (1-1000) or, on kernels before 5.0 with CFQ,
        C(blkio.weight); v2 C(io.bfq.weight) or C(io.weight) (1-10000); systemd C(IOWeight=). Needs the blkio/io
        controller.
      - BFQ's weight exists only while the BFQ scheduler is built in or loaded, and acts only on devices that use
        it; RV(notes) says when no device does. A kernel with neither BFQ nor CFQ (nor iocost on v2) has no block
        weight at all, and the option is then refused, naming the files looked for.
    type: int
  controllers:
    description:
      - libvirt's controllers to create the partition for, as qemu.conf C(cgroup_controllers) lists them.
      - When omitted, the C(cgroup_controllers) of C(/etc/libvirt/qemu.conf) when it sets one, else all of
        libvirt's (cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls, perf_event) that are mounted.
    type: list
    elements: str
    choices: [cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls, perf_event]
  lock_timeout:
    description:
      - Seconds to wait for another run holding the collection's host-wide cgroup lock.
    type: int
    default: 60
  record:
    description:
      - V(false) keeps the partition out of the partition record (an entry is dropped), so the qemu hook does not
        re-create it. P(rtvirt.kvm.host_prep#role)'s way back uses it to give C(/machine) every CPU again, libvirt's
        own default, which nothing needs to re-create. Hosts with systemd keep no record.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Plans every directory, knob and unit change; writes, runs and locks nothing.
  diff_mode:
    support: full
    details:
      - Every directory and knob before and after (the unit file on systemd hosts), with real paths.
      - On systemd hosts a keeper change (see O(exclusive)) makes the diff a list, the slice's unit and then the
        keeper's unit file and symlinks, each under its path.
  platform:
    platforms: linux
notes:
  - Needs root. Reads C(/proc/self/mountinfo), C(/proc/cgroups), C(/etc/libvirt/qemu.conf) and
    C(/run/libvirt/qemu/*.pid).
  - The directory names follow libvirt's C(virCgroupSetPartitionSuffix) and C(virCgroupPartitionEscape), the
    slice names C(virSystemdMakeSliceName).
seealso:
  - name: libvirt control groups
    description: Resource partitions and how libvirt maps them to cgroups and slices.
    link: https://libvirt.org/cgroups.html
  - module: rtvirt.kvm.cgroup_cpuset
"""

EXAMPLES = r"""
- name: A partition for production guests on CPUs 2-7, with its parent's memory nodes
  rtvirt.kvm.libvirt_partition:
    name: /machine/production
    cpus: 2-7

- name: A nested partition with libvirt-style tunables
  rtvirt.kvm.libvirt_partition:
    name: /machine/tenant/rt
    cpus: "3"
    cpu_shares: 2048
    memory_hard_limit: 8G

- name: An isolated realtime partition beside /machine; on systemd hosts it stays one across reboots
  rtvirt.kvm.libvirt_partition:
    name: /rt
    cpus: 2-7
    exclusive: true

- name: Remove it again (refused while guests run inside)
  rtvirt.kvm.libvirt_partition:
    name: /machine/tenant/rt
    state: absent
"""

RETURN = r"""
name:
  description: The partition, as given.
  returned: always
  type: str
  sample: /machine/production
cgroup_path:
  description: Its cgroup below each hierarchy's root (the slice chain on systemd hosts).
  returned: always
  type: str
  sample: machine/production.partition
paths:
  description:
    - The partition's directory in every hierarchy libvirt uses, by controller; C(unified) is the cgroup2 tree.
      Present or planned; on V(absent), where it was.
  returned: always
  type: dict
  sample:
    cpu: /sys/fs/cgroup/cpu/machine/production.partition
    cpuset: /sys/fs/cgroup/cpuset/machine/production.partition
    memory: /sys/fs/cgroup/memory/machine/production.partition
    freezer: /sys/fs/cgroup/freezer/machine/production.partition
    unified: /sys/fs/cgroup/unified/machine/production.partition
unit:
  description: The slice unit, on systemd hosts.
  returned: when systemd manages the host
  type: str
  sample: machine-production.slice
partition:
  description:
    - C(cpuset.cpus.partition) of the partition as read back after the run (before it in check mode), on cgroup
      v2 when O(exclusive) is given; C(null) when the cgroup does not exist yet.
  returned: when O(exclusive) is given on a cgroup v2 host
  type: str
  sample: isolated
unit_file:
  description:
    - The slice's unit file, on systemd hosts (the drop-in for C(/machine)). The keeper of an exclusive slice
      (see O(exclusive)) is C(rtvirt-partition-<slice>.service) beside it; its writes are in RV(writes).
  returned: when systemd manages the host
  type: str
  sample: /etc/systemd/system/machine-production.slice
writes:
  description:
    - What was changed, in order, as file (or command) and value (C(<mkdir>), C(<rmdir>), C(<run>),
      C(<unit file>), C(<unlink>), C(<symlink TARGET>)). Empty when nothing changed and in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: /sys/fs/cgroup/freezer/machine/production.partition, value: <mkdir>}
planned:
  description: The planned changes in words; the same in check mode and in a real run.
  returned: always
  type: list
  elements: str
  sample: ["mkdir /sys/fs/cgroup/freezer/machine/production.partition"]
notes:
  description: Decisions taken on the way, such as a partition filled with its parent's CPUs.
  returned: always
  type: list
  elements: str
  sample: ["filled the empty cpus of '/machine/production.partition' with its parent's (0-1)"]
guests:
  description: Guests found inside the partition (name, QEMU pid when running, cgroup).
  returned: always
  type: list
  elements: dict
  sample: [{name: rt1, pid: 4242, cgroup: machine/production.partition/qemu-3-rt1.libvirt-qemu}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ApplyError, LockTimeout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import PartitionError
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_host import (
    Host,
    converge_partition,
    partition_argument_spec,
)


def get_argument_spec():
    return partition_argument_spec()


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    failure = None
    try:
        result = converge_partition(module, module.params, Host(), module.check_mode)
    except ApplyError as exc:
        failure = exc.result()
    except (PartitionError, PlanError, CgroupDiscoveryError, LockTimeout) as exc:
        failure = dict(msg=str(exc), changed=False)
    if failure is not None:
        module.fail_json(**failure)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
