#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: irq_affinity
short_description: Keep IRQs and the default IRQ affinity on housekeeping CPUs
version_added: 0.1.0
description:
  - Writes O(cpus) to C(/proc/irq/default_smp_affinity) (as a mask) and to the C(smp_affinity_list) of every IRQ
    whose affinity is not already within O(cpus).
  - Managed and per-CPU IRQs refuse the write (EIO); they, and any other IRQ the kernel refuses, are listed in
    RV(unmovable) and do not fail the module. C(isolcpus=managed_irq) is the way to keep managed IRQs off
    isolated CPUs.
  - Not persistent; the kernel's C(irqaffinity=) parameter is.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  cpus:
    description: The housekeeping CPUs that IRQs may use, in the kernel's list syntax.
    type: str
    required: true
  exact:
    description:
      - V(true) also writes O(cpus) to IRQs whose affinity is within O(cpus) but not all of it, so that every
        movable IRQ ends on exactly O(cpus). P(rtvirt.kvm.host_prep#role) uses it with every online CPU to take its
        IRQ placement back off.
    type: bool
    default: false
  proc_root:
    description: Where procfs is mounted. For tests against a fake tree.
    type: path
    default: /proc
  sys_root:
    description: Where sysfs is mounted (debugfs's IRQ flags, in check mode). For tests against a fake tree.
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be moved; writes nothing.
      - An IRQ the kernel is known to refuse (a read-only C(smp_affinity), or debugfs's managed, per-CPU or
        no-balancing flags) is listed in RV(unmovable) instead, as a real run would, so a converged host reports
        no change. Other refusals are only known in a real run.
  diff_mode:
    support: none
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: IRQs to CPUs 0-1
  rtvirt.kvm.irq_affinity:
    cpus: 0-1
"""

RETURN = r"""
moved:
  description: IRQs moved (or to be moved in check mode), with C(irq), C(before) and C(after).
  returned: always
  type: list
  elements: dict
  sample: [{irq: 24, before: "0-7", after: "0-1"}]
unmovable:
  description: IRQs the kernel refused to move (in check mode, is known to refuse), with C(irq), C(affinity) and
    C(error).
  returned: always
  type: list
  elements: dict
  sample: [{irq: 0, affinity: "0-7", error: "[Errno 5] Input/output error"}]
default_affinity:
  description: C(/proc/irq/default_smp_affinity) as a CPU list, C(before) and C(after).
  returned: always
  type: dict
  sample: {before: "0-7", after: "0-1"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._irq_plan import UNMOVABLE, plan_irqs


def get_argument_spec():
    return dict(cpus=dict(type="str", required=True), exact=dict(type="bool", default=False), proc_root=dict(type="path", default="/proc"),
                sys_root=dict(type="path", default="/sys"))


def run(module):
    params = module.params
    wanted = parse_cpulist(params["cpus"], what="cpus")
    if not wanted:
        raise CpuListError("cpus is empty: IRQs need at least one CPU")
    planned = plan_irqs(wanted, params["proc_root"], params["sys_root"], exact=params["exact"])
    if module.check_mode:
        # A real run's write would fail on the IRQs the kernel is known to refuse and count no change; so does this.
        unmovable = [{"irq": m.irq, "affinity": format_cpulist(m.before), "error": UNMOVABLE} for m in planned.refused]
        return dict(changed=planned.changed, moved=[planned.item(m) for m in planned.movable], unmovable=unmovable,
                    default_affinity=planned.default_affinity())
    try:
        moved, unmovable = planned.apply()
    except OSError as exc:
        raise OSError("cannot write %s (%s): %s" % (planned.default_path, format_cpumask(wanted), exc)) from None
    return dict(changed=planned.default_changes or bool(moved), moved=moved, unmovable=unmovable,
                default_affinity=planned.default_affinity())


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    failure = None
    try:
        result = run(module)
    except (CpuListError, OSError) as exc:
        failure = str(exc)
    if failure is not None:
        module.fail_json(msg=failure)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
