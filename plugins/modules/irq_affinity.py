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

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_irqs import irq_changeable

UNMOVABLE = "the kernel does not let user space move it (read-only smp_affinity, or a managed or per-CPU IRQ)"


def get_argument_spec():
    return dict(cpus=dict(type="str", required=True), proc_root=dict(type="path", default="/proc"),
                sys_root=dict(type="path", default="/sys"))


def _read(path):
    with open(path) as handle:
        return handle.read().strip()


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text + "\n")


def main():
    module = AnsibleModule(argument_spec=get_argument_spec(), supports_check_mode=True)
    irq_dir = os.path.join(module.params["proc_root"], "irq")
    try:
        wanted = parse_cpulist(module.params["cpus"], what="cpus")
    except CpuListError as exc:
        module.fail_json(msg=str(exc))
    if not wanted:
        module.fail_json(msg="cpus is empty: IRQs need at least one CPU")
    changed = False
    default_path = os.path.join(irq_dir, "default_smp_affinity")
    before = parse_cpumask(_read(default_path), what=default_path)
    default = {"before": format_cpulist(before), "after": format_cpulist(before)}
    if before != wanted:
        changed = True
        default["after"] = format_cpulist(wanted)
        if not module.check_mode:
            try:
                _write(default_path, format_cpumask(wanted))
            except OSError as exc:
                module.fail_json(msg="cannot write %s (%s): %s" % (default_path, format_cpumask(wanted), exc))
    moved, unmovable = [], []
    for entry in sorted((e for e in os.listdir(irq_dir) if e.isdigit()), key=int):
        path = os.path.join(irq_dir, entry, "smp_affinity_list")
        try:
            current = parse_cpulist(_read(path), what=path)
        except (OSError, CpuListError):
            continue
        if current <= wanted:
            continue
        item = {"irq": int(entry), "before": format_cpulist(current), "after": format_cpulist(wanted)}
        if module.check_mode:
            # A real run's write would fail on it and count no change, so neither may the dry run.
            if irq_changeable(module.params["proc_root"], module.params["sys_root"], entry) is False:
                unmovable.append({"irq": int(entry), "affinity": format_cpulist(current), "error": UNMOVABLE})
                continue
            moved.append(item)
            changed = True
            continue
        try:
            _write(path, format_cpulist(wanted))
        except OSError as exc:
            unmovable.append({"irq": int(entry), "affinity": format_cpulist(current), "error": str(exc)})
            continue
        moved.append(item)
        changed = True
    module.exit_json(changed=changed, moved=moved, unmovable=unmovable, default_affinity=default)


if __name__ == "__main__":
    main()
