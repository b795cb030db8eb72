#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: realtime_cpus
short_description: Choose or validate the realtime (isolated) CPU set of a host
version_added: 0.1.0
description:
  - "Reads the CPU topology from sysfs and either validates the realtime CPUs given in O(cpus) or, when O(cpus)
    is empty, chooses them: the first O(housekeeping_cores_per_node) whole SMT cores of every NUMA node stay
    housekeeping, all other whole cores become realtime. The choice is deterministic."
  - Fails, before anything on the host is changed by later tasks, when the set names CPUs that do not exist or are
    offline, takes every CPU of a NUMA node, or leaves no housekeeping CPU. A split SMT core is a warning.
  - "Also plans the cgroup layout of docs/LAYOUT.md: C(/machine) on the housekeeping CPUs, the emulator CPUs, and
    every realtime partition's CPUs and exclusivity, checked against libvirt's naming and the kernel's rules."
  - The module never changes anything.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  cpus:
    description:
      - The realtime CPUs in the kernel's list syntax (C(2-5,8)). Empty or omitted chooses them automatically.
    type: str
  housekeeping_cores_per_node:
    description:
      - For the automatic choice, how many whole cores of every NUMA node stay housekeeping.
    type: int
    default: 1
  partitions:
    description:
      - "Realtime partitions to plan, each with C(name) (libvirt's C(<partition>), beside C(/machine) such as
        C(/rt)), optionally C(cpus) and C(exclusive). C(cpus) default to the realtime CPUs plus the emulator CPUs:
        libvirt puts a guest's emulator cgroup inside its partition, and a cpuset must hold its children's CPUs
        (see docs/LAYOUT.md)."
      - "C(exclusive) defaults to true with dedicated O(emulator_cpus) and false without; true without them is
        refused, because the partition then overlaps C(/machine) on the housekeeping CPUs."
    type: list
    elements: dict
    default: []
  emulator_cpus:
    description:
      - CPUs dedicated to the realtime guests' emulator threads, neither realtime nor needed by the host. Empty
        shares the housekeeping CPUs with C(/machine) and the host.
    type: str
    default: ""
  narrow_machine:
    description:
      - Plan C(/machine) on the housekeeping CPUs (minus dedicated emulator CPUs), which rules out realtime
        partitions below C(/machine).
    type: bool
    default: true
  sys_root:
    description: Where sysfs is mounted. For tests against a recorded tree.
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Choose the realtime CPUs automatically
  rtvirt.kvm.realtime_cpus:
  register: rt

- name: Validate an operator's choice
  rtvirt.kvm.realtime_cpus:
    cpus: 2-7
    emulator_cpus: "1"
    partitions:
      - name: /rt
"""

RETURN = r"""
realtime_cpus:
  description: The realtime CPUs, normalized.
  returned: success
  type: str
  sample: "2-7"
housekeeping_cpus:
  description: The online CPUs that are not realtime.
  returned: success
  type: str
  sample: "0-1"
source:
  description: V(given) when O(cpus) was set, V(automatic) otherwise.
  returned: success
  type: str
  sample: automatic
online_cpus:
  description: The online CPUs.
  returned: success
  type: str
  sample: "0-7"
numa_nodes:
  description: Every NUMA node with its online CPUs.
  returned: success
  type: list
  elements: dict
  sample: [{node: 0, cpus: "0-7"}]
partitions:
  description: O(partitions) with C(cpus) and C(exclusive) settled.
  returned: success
  type: list
  elements: dict
  sample: [{name: /rt, cpus: "0-7", exclusive: false}]
machine_cpus:
  description: The CPUs planned for libvirt's default partition C(/machine).
  returned: success
  type: str
  sample: "0-1"
emulator_cpus:
  description: The CPUs of the realtime guests' emulator threads (dedicated, or the housekeeping CPUs).
  returned: success
  type: str
  sample: "0-1"
emulator_mode:
  description: V(dedicated) with O(emulator_cpus), V(shared) without.
  returned: success
  type: str
  sample: shared
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import RealtimeCpusError, plan_argument_spec, plan_host


def get_argument_spec():
    return plan_argument_spec()


def main():
    module = AnsibleModule(argument_spec=get_argument_spec(), supports_check_mode=True)
    try:
        result, warnings = plan_host(module.params)
    except (RealtimeCpusError, CpuListError) as exc:
        module.fail_json(msg="realtime CPUs: %s" % exc)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
