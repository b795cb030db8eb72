#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcpu_allocation
short_description: Choose dedicated host CPUs (pCPUs) for a pinned libvirt/KVM guest
version_added: "0.1.0"
description:
  - Computes which pCPUs of the realtime partition a guest's vCPUs should be pinned to, so that no
    pCPU is shared between guests.
  - The defined libvirt domains are the only record of who holds what; there is no state file.
    A guest holds the CPUs named in its C(<cputune>) C(<vcpupin>), C(<emulatorpin>) and
    C(<iothreadpin>) elements (C(<vcpu cpuset=...>) for vCPUs without a C(<vcpupin>)), plus the
    SMT siblings recorded as reserved in its C(<metadata>) (see RV(metadata)).
  - Allocating a guest never moves another guest's pins. A guest that is already pinned keeps the
    pins of the vCPUs it still has; a larger O(vcpus) adds pins, a smaller one frees the highest vCPUs.
  - Deterministic. The lowest NUMA node, core and CPU are used first, and one NUMA node is used
    whenever one has room; otherwise the guest spans nodes and the module warns.
  - When the guest does not fit, the module fails and says how many pCPUs are free, on which nodes,
    and which guests hold the rest.
  - This module only computes. It never changes the host or any domain; write RV(vcpupin) and
    RV(metadata) into the domain definition with another task.
  - Its result is a plan from the books as they were when it ran. M(rtvirt.kvm.realtime_domain) checks the pCPUs
    against the books again, under a host-wide lock, right before it defines the guest, and fails naming the guest
    that took a pCPU in the meantime (another run planned from the same books).
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - Name of the libvirt domain (guest) to allocate for.
      - One of O(name) and O(guests) is required.
    type: str
  guests:
    description:
      - Plan several guests as one change instead of one O(name). Every V(absent) guest is planned first (it frees
        its pCPUs), then the V(present) ones in list order, each seeing the pCPUs planned for the guests before it
        as held, as if those were already defined.
      - The module fails for the first guest that cannot be met and says after which guests of the list it was
        planned, so a caller can refuse the whole list before defining any guest (bad input anywhere changes nothing).
      - The per-guest results are in RV(plans); the top-level results describe the last guest of the list.
      - O(state), O(vcpus), O(smt_policy), O(numa_node) and O(pcpus) are the defaults of the entries.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the guest.
        type: str
        required: true
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
      vcpus:
        description: As O(vcpus).
        type: int
      pcpus:
        description: As O(pcpus).
        type: list
        elements: str
      smt_policy:
        description: As O(smt_policy).
        type: str
        choices: [isolate, prefer, require]
      numa_node:
        description: As O(numa_node).
        type: int
      emulator_cpus:
        description:
          - CPUs the guest's emulator threads will be pinned to. Where they fall into O(pool), the guests after it
            see them as held.
        type: str
  state:
    description:
      - V(present) plans pins for the guest.
      - V(absent) plans the guest's removal. RV(pins) is empty and RV(free) includes the pCPUs it held.
    type: str
    choices: [present, absent]
    default: present
  vcpus:
    description:
      - Number of vCPUs, each given a dedicated pCPU.
      - Defaults to the number of pCPUs in O(pcpus). With O(state=present) one of O(vcpus) and O(pcpus) is required.
    type: int
  pool:
    description:
      - The CPUs of the realtime partition that guests may be pinned to, in the kernel's list syntax
        (for example V(2-7,10-15)).
      - CPUs that are not online are left out with a warning.
    type: str
    required: true
  smt_policy:
    description:
      - How vCPUs are placed on SMT (hyper-)threads, after OpenStack Nova's C(hw:cpu_thread_policy).
      - V(prefer) packs the guest onto whole cores when possible (vCPUs 0/1, 2/3, ... on thread
        siblings) and otherwise uses any free thread. Nothing is reserved.
      - V(isolate) puts each vCPU on a core nobody else uses; the other threads of that core in the
        pool are reserved to the guest and stay idle. On a host without SMT it is one vCPU per CPU.
      - V(require) needs SMT. vCPUs fill whole free cores, sibling by sibling. With a vCPU count
        that is not a multiple of the threads per core, the spare threads of the last core are
        reserved to the guest. Fails when the host has no SMT or the pool holds no complete sibling group.
    type: str
    choices: [isolate, prefer, require]
    default: prefer
  numa_node:
    description:
      - Keep the guest on this NUMA node; fail rather than span nodes.
    type: int
  pcpus:
    description:
      - Explicit pCPUs, in order. vCPU 0 gets the first one, vCPU 1 the second, and so on. Each element may be a
        CPU list such as V(4-7) (expanded in ascending order).
      - They are checked. Each must be in O(pool) and not held by another guest, and they must satisfy O(smt_policy)
        and O(numa_node).
    type: list
    elements: str
  domains_xml:
    description:
      - The XML of every defined domain, as C(virsh dumpxml --inactive) prints it.
      - When omitted, the module reads the inactive XML of every domain from C(qemu:///system) with
        libvirt-python.
      - Include the guest's own XML so that its existing pins are kept.
    type: list
    elements: str
  sys_root:
    description:
      - Where sysfs is mounted; the topology is read from C(devices/system/cpu) and C(devices/system/node) below it.
      - Meant for tests.
      - Spelled as in M(rtvirt.kvm.cpu_isolation_facts); the alias O(sysfs_root) is the name it had before.
    type: path
    default: /sys
    aliases: [sysfs_root]
attributes:
  check_mode:
    support: full
    details: The module only computes; it behaves the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with sysfs; libvirt-python when O(domains_xml) is omitted.
requirements:
  - libvirt-python (python3-libvirt) on the target, only when O(domains_xml) is omitted.
notes:
  - Only the persistent (inactive) definition counts. Pins changed live with C(virsh vcpupin --live) are not seen.
  - Guests without any pinning float and hold nothing.
  - Keep the RV(metadata) element in the domain's C(<metadata>). Without it, the siblings reserved by
    V(isolate) and V(require) are not recorded and may be given to the next guest.
seealso:
  - name: OpenStack Nova CPU thread policies
    description: The C(hw:cpu_thread_policy) semantics that O(smt_policy) follows.
    link: https://docs.openstack.org/nova/latest/admin/cpu-topologies.html
  - name: libvirt CPU tuning
    description: The C(<cputune>) elements the pins are written to.
    link: https://libvirt.org/formatdomain.html#cpu-tuning
"""

EXAMPLES = r"""
- name: Plan four dedicated pCPUs for rt1 on one NUMA node, one vCPU per core
  rtvirt.kvm.pcpu_allocation:
    name: rt1
    vcpus: 4
    pool: "2-7,10-15"
    smt_policy: isolate
  register: rt1_pcpus

- name: Show the plan
  ansible.builtin.debug:
    msg: "rt1 gets {{ rt1_pcpus.cpus }} on node(s) {{ rt1_pcpus.numa_nodes }}; still free: {{ rt1_pcpus.free }}"

- name: Pin an audio guest to pCPUs chosen by hand (checked against the other guests)
  rtvirt.kvm.pcpu_allocation:
    name: audio
    pcpus: [6, 7]
    pool: "2-7"
    domains_xml: "{{ all_domain_xml }}"

- name: Plan a whole guest list before defining any of it (rt3 sees rt2's pCPUs as held)
  rtvirt.kvm.pcpu_allocation:
    pool: "2-15"
    guests:
      - name: rt1
        state: absent
      - name: rt2
        vcpus: 2
      - name: rt3
        vcpus: 4
        smt_policy: isolate
  register: plan

- name: See what removing rt2 would free
  rtvirt.kvm.pcpu_allocation:
    name: rt2
    state: absent
    pool: "2-15"
  register: rt2_gone
"""

RETURN = r"""
pins:
  description: vCPU to pCPU pairs, sorted by vCPU. Empty for O(state=absent).
  returned: always
  type: list
  elements: dict
  contains:
    vcpu:
      description: vCPU index.
      type: int
    pcpu:
      description: Host CPU the vCPU is pinned to.
      type: int
  sample: [{"vcpu": 0, "pcpu": 2}, {"vcpu": 1, "pcpu": 3}]
vcpupin:
  description: vCPU index (as a string) to the cpuset for C(<vcpupin vcpu=... cpuset=...>).
  returned: always
  type: dict
  sample: {"0": "2", "1": "3"}
cpus:
  description: The guest's pinned pCPUs as a CPU list. Empty for O(state=absent).
  returned: always
  type: str
  sample: "2-3"
numa_nodes:
  description: NUMA nodes of the pinned pCPUs.
  returned: always
  type: list
  elements: int
  sample: [0]
spans_nodes:
  description: Whether the guest spans more than one NUMA node (a warning is issued then).
  returned: always
  type: bool
  sample: false
reserved:
  description:
    - Every pool CPU the guest holds afterwards, as a CPU list. This includes its pins, the SMT siblings
      reserved to it, and its emulator or I/O thread pins inside the pool.
  returned: always
  type: str
  sample: "2-3,10-11"
siblings_reserved:
  description: SMT siblings kept idle for the guest by O(smt_policy=isolate) or O(smt_policy=require), as a CPU list.
  returned: always
  type: str
  sample: "10-11"
free:
  description: Pool CPUs nobody holds once this plan is applied, as a CPU list.
  returned: always
  type: str
  sample: "4-7,12-15"
freed:
  description: Pool CPUs the guest held before and releases with this plan, as a CPU list.
  returned: always
  type: str
  sample: ""
holders:
  description: Guest name to the pool CPUs it holds once this plan is applied, as a CPU list.
  returned: always
  type: dict
  sample: {"rt0": "2-3,10-11", "rt1": "4-5"}
unchanged:
  description: True when the guest already has exactly these pins and reservations, so its definition needs no update.
  returned: always
  type: bool
  sample: true
plans:
  description:
    - With O(guests), one entry per guest in the order of O(guests), each with RV(plans[].name), RV(plans[].state) and
      the keys returned for a single guest (RV(pins), RV(vcpupin), RV(cpus), RV(numa_nodes), RV(spans_nodes),
      RV(reserved), RV(siblings_reserved), RV(free), RV(freed), RV(holders), RV(unchanged), RV(metadata)) as they
      are once that guest and the ones planned before it are applied. Empty without O(guests).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The guest.
      type: str
    state:
      description: V(present) or V(absent).
      type: str
  sample: [{"name": "rt2", "state": "present", "vcpupin": {"0": "2", "1": "3"}, "cpus": "2-3"}]
metadata:
  description:
    - Element to keep in the domain's C(<metadata>). It records O(smt_policy) and RV(siblings_reserved)
      for later runs. Empty for O(state=absent).
  returned: always
  type: str
  sample: '<rtvirt:pcpu xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1" smt_policy="isolate" reserved="10-11"/>'
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._libvirt import LibvirtError, read_domains
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import PcpuError, holdings_from_domain_xml
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import (
    SMT_POLICIES,
    Request,
    allocate,
    allocate_all,
    ordered_pcpus,
    requests_from_entries,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import TopologyError, read_topology


class InputError(Exception):
    """Options that cannot go together, found before anything is read."""


def get_argument_spec():
    return dict(
        name=dict(type="str"),
        guests=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"]),
            vcpus=dict(type="int"),
            pcpus=dict(type="list", elements="str"),
            smt_policy=dict(type="str", choices=list(SMT_POLICIES)),
            numa_node=dict(type="int"),
            emulator_cpus=dict(type="str"),
        )),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        vcpus=dict(type="int"),
        pool=dict(type="str", required=True),
        smt_policy=dict(type="str", choices=list(SMT_POLICIES), default="prefer"),
        numa_node=dict(type="int"),
        pcpus=dict(type="list", elements="str"),
        domains_xml=dict(type="list", elements="str"),
        sys_root=dict(type="path", default="/sys", aliases=["sysfs_root"]),
    )


def _read_domains():
    """Inactive XML of every domain on qemu:///system."""
    definitions, _running = read_domains("qemu:///system", "to read the defined domains when domains_xml is not given",
                                         hint=" or pass domains_xml")
    return list(definitions.values())


def _result(plan):
    return dict(
        pins=[dict(vcpu=vcpu, pcpu=pcpu) for vcpu, pcpu in plan.pins],
        vcpupin={str(vcpu): cpuset for vcpu, cpuset in plan.vcpupin.items()},
        cpus=format_cpulist(plan.cpus),
        numa_nodes=list(plan.numa_nodes),
        spans_nodes=plan.spans_nodes,
        reserved=format_cpulist(plan.reserved),
        siblings_reserved=format_cpulist(plan.siblings_reserved),
        free=format_cpulist(plan.free),
        freed=format_cpulist(plan.freed),
        holders={name: format_cpulist(cpus) for name, cpus in plan.holders.items()},
        unchanged=plan.unchanged,
        metadata=plan.metadata_xml() if plan.state == "present" else "",
    )


def _requests(params):
    """One Request per entry of guests (the top-level options are the defaults), or the single one."""
    if params["guests"] is None:
        pcpus = ordered_pcpus(params["pcpus"]) if params["pcpus"] is not None else None
        return [Request(name=params["name"], vcpus=params["vcpus"], smt_policy=params["smt_policy"],
                        numa_node=params["numa_node"], pcpus=pcpus, state=params["state"])], {}
    return requests_from_entries(params["guests"], params)


def main():
    module = new_module(
        AnsibleModule,
        get_argument_spec(),
        required_one_of=[("name", "guests")],
        mutually_exclusive=[("name", "guests")],
        supports_check_mode=True,
    )
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    params = module.params
    failure = None
    try:
        if params["guests"] is None and params["state"] == "present" and params["vcpus"] is None \
                and params["pcpus"] is None:
            raise InputError("state is present but any of the following are missing: vcpus, pcpus")
        pool = parse_cpulist(params["pool"], what="pool")
        requests, emulators = _requests(params)
        topology = read_topology(params["sys_root"])
        xml_texts = params["domains_xml"] if params["domains_xml"] is not None else _read_domains()
        holdings = holdings_from_domain_xml(xml_texts)
        if params["guests"] is None:
            plans = [allocate(topology, pool, holdings, requests[0])]
        else:
            plans = allocate_all(topology, pool, holdings, requests, emulators)
    except InputError as exc:
        failure = dict(msg=str(exc))
    except LibvirtError as exc:
        failure = dict(msg=str(exc), exception=exc.exception)
    except (PcpuError, TopologyError, CpuListError) as exc:
        failure = dict(msg=str(exc), guest=params["name"], pool=params["pool"])
    if failure is not None:
        module.fail_json(**failure)

    for plan in plans:
        for warning in plan.warnings:
            module.warn(warning)
    if plans:
        result = _result(plans[-1])
    else:  # an empty guests list: nothing planned, the pool as it is
        result = dict(pins=[], vcpupin={}, cpus="", numa_nodes=[], spans_nodes=False, reserved="",
                      siblings_reserved="", free=format_cpulist(frozenset(pool) - holdings.held()), freed="",
                      holders={name: format_cpulist(cpus) for name, cpus in holdings.holders_of(pool).items()},
                      unchanged=True, metadata="")
    result["plans"] = [dict(name=plan.name, state=plan.state, **_result(plan)) for plan in plans] \
        if params["guests"] is not None else []
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
