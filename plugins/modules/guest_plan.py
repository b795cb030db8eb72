#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_plan
short_description: Plan realtime guests - settings, pCPUs, definitions, partitions and placement - writing nothing
version_added: "0.2.0"
description:
  - Resolves every guest's settings once (the entry's own values, else the module's defaults), plans all guests'
    pCPUs as one change as M(rtvirt.kvm.pcpu_allocation) does, renders each definition as M(rtvirt.kvm.realtime_domain)
    would write it and compares it with the one libvirt holds, and plans each partition as
    M(rtvirt.kvm.libvirt_partition) would converge it (its own code, in check mode).
  - With O(verify=true), also checks that every running guest's vCPU and emulator threads are placed as planned.
  - Returns the resolved guests (RV(guests)) ready to hand to M(rtvirt.kvm.realtime_domain) unchanged, the partitions,
    what is to be done (RV(changes), empty on a converged host) and one line that says it (RV(msg)).
  - Never changes the host; a bad guest list, a guest that does not fit or a partition that cannot be made fails
    here, before any task changes anything.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  guests:
    description: The guests, as the realtime_vm role's C(realtime_vm_guests).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The libvirt domain name.
        type: str
        required: true
      state:
        description: "V(absent) removes the guest."
        type: str
        choices: [present, absent]
        default: present
      vcpus:
        description: Number of vCPUs (default the number of O(guests[].pcpus)).
        type: int
      memory_mib:
        description: Memory in MiB (default O(memory_mib)).
        type: int
      partition:
        description: libvirt resource partition (default O(partition)).
        type: str
      pcpus:
        description: Exact pCPUs, one per vCPU in order.
        type: list
        elements: str
      smt_policy:
        description: As in M(rtvirt.kvm.pcpu_allocation) (default O(smt_policy)).
        type: str
        choices: [isolate, prefer, require]
      fifo_priority:
        description: SCHED_FIFO priority of the vCPUs (default O(fifo_priority)).
        type: int
      numa_node:
        description: Place the guest on this NUMA node.
        type: int
      base_xml:
        description:
          - The operator's own domain XML; the guest's definition keeps all of it but the parts
            M(rtvirt.kvm.realtime_domain) owns (see its O(rtvirt.kvm.realtime_domain#module:base_xml)).
          - A change to it (a disk, a NIC) is a change of the guest (C(its definition differs in base_xml)).
          - Its name, its disks' files and the I/O threads its devices name are checked here, before anything changes.
        type: str
      iothreads:
        description: Number of I/O threads, pinned to the guest's emulator CPUs (default 0).
        type: int
      emulator_cpus:
        description: CPUs for the emulator threads (default O(emulator_cpus)).
        type: str
      domain_type:
        description: "V(kvm) (realtime) or V(qemu) (TCG, for tests)."
        type: str
        choices: [kvm, qemu]
      autostart:
        description: Whether libvirt starts the guest when libvirtd starts (at boot). Default O(autostart).
        type: bool
  pool:
    description: CPUs guests may be pinned to. Empty - the isolated CPUs (the kernel's, plus O(isolated_cpus) or the
      realtime CPUs of O(layout_file)).
    type: str
    default: ""
  isolated_cpus:
    description: CPUs to count as isolated on a host not (yet) booted with C(isolcpus=).
    type: str
    default: ""
  emulator_cpus:
    description: CPUs for the emulator threads of guests that name none. Empty - the emulator CPUs of O(layout_file),
      else the housekeeping CPUs.
    type: str
    default: ""
  partition:
    description: Partition of guests that name none.
    type: str
    default: /rt
  manage_partitions:
    description: Plan each partition with the pool and the emulator CPUs (libvirt puts the emulator inside it).
    type: bool
    default: true
  smt_policy:
    description: SMT policy of guests that name none.
    type: str
    choices: [isolate, prefer, require]
    default: prefer
  memory_mib:
    description: Memory of guests that name none.
    type: int
    default: 128
  fifo_priority:
    description: SCHED_FIFO priority of guests that name none.
    type: int
    default: 1
  autostart:
    description: libvirt autostart of guests that name none.
    type: bool
    default: true
  verify:
    description: Check the running guests' thread placement.
    type: bool
    default: true
  layout_file:
    description:
      - The layout P(rtvirt.kvm.host_prep#role) leaves on the host (C(host_prep_hook_layout_file)). When O(isolated_cpus) is
        empty, its realtime CPUs count as isolated; when O(emulator_cpus) is empty, its emulator CPUs are the
        default. Missing - neither.
    type: path
    default: /etc/libvirt/hooks/rtvirt-kvm-layout.json
  uri:
    description: libvirt connection URI.
    type: str
    default: "qemu:///system"
attributes:
  check_mode:
    support: full
    details: The module never writes. Without libvirtd (check mode on a fresh host) it warns and plans as if no
      guest were defined.
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Replaces the realtime_vm role's steady-state filters C(realtime_vm_changes) and C(realtime_vm_status_line).
seealso:
  - module: rtvirt.kvm.pcpu_allocation
  - module: rtvirt.kvm.realtime_domain
  - module: rtvirt.kvm.libvirt_partition
"""

EXAMPLES = r"""
- name: Plan two realtime guests
  rtvirt.kvm.guest_plan:
    guests:
      - {name: rt1, vcpus: 2}
      - {name: rt2, vcpus: 1, fifo_priority: 10}
  register: plan

- name: Define and start them as planned
  rtvirt.kvm.realtime_domain:
    name: "{{ item.name }}"
    vcpus: "{{ item.vcpus }}"
    memory_mib: "{{ item.memory_mib }}"
    vcpupin: "{{ item.vcpupin }}"
    emulator_cpus: "{{ item.emulator_cpus }}"
    fifo_priority: "{{ item.fifo_priority }}"
    partition: "{{ item.partition }}"
    numa_nodes: "{{ item.numa_nodes }}"
    metadata: "{{ item.metadata }}"
  loop: "{{ plan.guests | selectattr('state', 'equalto', 'present') }}"
  when: plan.changes | length > 0
"""

RETURN = r"""
guests:
  description:
    - Every guest, resolved. Present ones carry every M(rtvirt.kvm.realtime_domain) option (C(name), C(vcpus),
      C(memory_mib), C(vcpupin), C(emulator_cpus), C(fifo_priority), C(partition), C(numa_nodes), C(metadata),
      C(base_xml), C(domain_type), C(iothreads), C(autostart)); absent ones C(name) only. Each has C(state) and C(changes), what is to be done
      for it (empty - nothing).
  returned: always
  type: list
  elements: dict
  sample: [{name: rt1, state: present, vcpus: 2, vcpupin: {"0": "2", "1": "3"}, emulator_cpus: "0-1", changes: []}]
partitions:
  description: The partitions of the present guests with the CPUs they must hold, and their planned C(changes).
  returned: always
  type: list
  elements: dict
  sample: [{name: /rt, cpus: "0-3", changes: []}]
pool:
  description: The CPUs guests were planned on.
  returned: always
  type: str
  sample: "2-3"
emulator_cpus:
  description: The emulator CPUs of guests that name none.
  returned: always
  type: str
  sample: "0-1"
placement:
  description: With O(verify=true), what differs between the running guests' threads and the plan.
  returned: always
  type: list
  elements: str
changes:
  description: Everything to be done, in words; empty on a converged host.
  returned: always
  type: list
  elements: str
  sample: ["guest rt1: define", "guest rt1: start"]
msg:
  description: One line - what is to be done, or the steady state.
  returned: always
  type: str
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import placement_problems
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ApplyError, LockTimeout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import DomainSpecError
from ansible_collections.rtvirt.kvm.plugins.module_utils._guest_plan import (
    Defaults,
    GuestPlanError,
    HostGuests,
    plan_guests,
    status_line,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._kvm import read_access
from ansible_collections.rtvirt.kvm.plugins.module_utils._libvirt import LibvirtError, read_guests
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import PartitionError
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_host import planned_steps
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import PcpuError
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import Topology, TopologyError

_GUEST_OPTIONS = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    vcpus=dict(type="int"),
    memory_mib=dict(type="int"),
    partition=dict(type="str"),
    pcpus=dict(type="list", elements="str"),
    smt_policy=dict(type="str", choices=["isolate", "prefer", "require"]),
    fifo_priority=dict(type="int"),
    numa_node=dict(type="int"),
    base_xml=dict(type="str"),
    iothreads=dict(type="int"),
    emulator_cpus=dict(type="str"),
    domain_type=dict(type="str", choices=["kvm", "qemu"]),
    autostart=dict(type="bool"),
)


def get_argument_spec():
    return dict(
        guests=dict(type="list", elements="dict", default=[], options=_GUEST_OPTIONS),
        pool=dict(type="str", default=""),
        isolated_cpus=dict(type="str", default=""),
        emulator_cpus=dict(type="str", default=""),
        partition=dict(type="str", default="/rt"),
        manage_partitions=dict(type="bool", default=True),
        smt_policy=dict(type="str", choices=["isolate", "prefer", "require"], default="prefer"),
        memory_mib=dict(type="int", default=128),
        fifo_priority=dict(type="int", default=1),
        autostart=dict(type="bool", default=True),
        verify=dict(type="bool", default=True),
        uri=dict(type="str", default="qemu:///system"),
        layout_file=dict(type="path", default="/etc/libvirt/hooks/rtvirt-kvm-layout.json"),
    )


def read_libvirt(uri):
    """libvirt's guests: every domain's inactive definition, the running ones and those it starts at boot."""
    definitions, running, autostart = read_guests(uri, "to read the defined guests")
    return HostGuests(definitions=definitions, running=running, autostart=autostart)


def read_layout(path):
    """The layout file host_prep writes ({} when there is none, or it is not host_prep's)."""
    try:
        with open(path) as handle:
            layout = json.load(handle)
    except (OSError, ValueError):
        return {}
    return layout if isinstance(layout, dict) else {}


def _partition_changes(module, partitions):
    """Each partition as libvirt_partition would converge it (its own planner, in check mode)."""
    for partition in partitions:
        partition["changes"] = planned_steps(module, name=partition["name"], cpus=partition["cpus"])
    return ["partition %s: %s" % (p["name"], change) for p in partitions for change in p["changes"]]


def run(module):
    params = module.params
    # Without host_prep in the play, the layout it left on the host says which CPUs it made realtime (a host not
    # booted with isolcpus= yet has no other record of them) and where the emulators go.
    layout = read_layout(params["layout_file"])
    # The facts give the topology, the isolated and housekeeping CPUs and (verify) the guests' threads; the
    # partitions are planned by libvirt_partition's planner below, not read here.
    facts = gather(isolated_cpus=params["isolated_cpus"] or layout.get("realtime_cpus") or None,
                   gather_threads=params["verify"])
    try:
        host = read_libvirt(params["uri"])
    except LibvirtError as exc:
        if not module.check_mode:
            raise
        module.warn("%s; check mode plans as if no guest were defined" % exc)
        host = HostGuests()
    defaults = Defaults(partition=params["partition"], smt_policy=params["smt_policy"],
                        memory_mib=params["memory_mib"], fifo_priority=params["fifo_priority"],
                        autostart=params["autostart"])
    plan = plan_guests(params["guests"], Topology.from_dict(facts["topology"]), host,
                       params["pool"] or facts["isolated_cpus"],
                       params["emulator_cpus"] or layout.get("emulator_cpus") or facts["housekeeping_cpus"], defaults)
    for warning in plan.warnings:
        module.warn(warning)
    starting = [g["name"] for g in plan.present if g["domain_type"] == "kvm" and "start" in g["changes"]]
    problem = read_access()[1] if starting else None
    if problem is not None:
        module.warn("guest%s %s: KVM is not usable by QEMU: %s; starting %s fails unless host_prep fixes that first"
                    % ("s" if len(starting) > 1 else "", ", ".join(starting), problem,
                       "them" if len(starting) > 1 else "it"))
    partition_changes = _partition_changes(module, plan.partitions) if params["manage_partitions"] else []
    placement = []
    if params["verify"] and not plan.changes():
        placement = placement_problems(facts, plan.present)
    changes = plan.changes() + partition_changes + placement
    return dict(changed=False, guests=plan.guests, partitions=plan.partitions if params["manage_partitions"] else [],
                pool=plan.pool, emulator_cpus=plan.emulator_cpus, placement=placement, changes=changes,
                msg=status_line(plan, changes))


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    failure = None
    try:
        result = run(module)
    except LibvirtError as exc:
        failure = dict(msg=str(exc), exception=exc.exception)
    except (GuestPlanError, DomainSpecError, PcpuError, TopologyError, CpuListError, IsolationError, PartitionError,
            PlanError, CgroupDiscoveryError, LockTimeout, ApplyError) as exc:
        failure = dict(msg=str(exc))
    if failure is not None:
        module.fail_json(**failure)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
