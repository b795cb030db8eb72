# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IRQs of the isolation facts: every IRQ's affinity, whether the kernel lets it move, and the
IRQs that may be delivered to isolated CPUs.
"""

from __future__ import annotations

import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import parse_interrupts
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import format_cpus, list_dir, read_text


def irq_changeable(proc_root, sys_root, number):
    """False for IRQs the kernel will not move: a read-only smp_affinity (the kernel creates it without write
    permission when user space may not set the affinity, e.g. managed IRQs) or, where debugfs is mounted, a
    managed, per-CPU or no-balancing IRQ. None when it cannot tell."""
    try:
        if not os.stat(os.path.join(proc_root, "irq", str(number), "smp_affinity")).st_mode & 0o200:
            return False
    except OSError:
        pass
    text = read_text(os.path.join(sys_root, "kernel", "debug", "irq", "irqs", str(number)))
    if text is None:
        return None
    return not ("IRQD_AFFINITY_MANAGED" in text or "IRQD_PER_CPU" in text or "IRQD_NO_BALANCING" in text)


def read_irqs(ctx, proc_root, sys_root, isolated, violations):
    """``(irqs, default affinity)``: every IRQ's facts; an ``irq_default_affinity`` violation and an
    ``irq_affinity`` one per IRQ that may be delivered to isolated CPUs are appended to ``violations``."""
    irq_dir = os.path.join(proc_root, "irq")
    default_affinity = ctx.cpumask(read_text(os.path.join(irq_dir, "default_smp_affinity")), "default_smp_affinity")
    if default_affinity is not None and default_affinity & isolated:
        violations.append({
            "kind": "irq_default_affinity",
            "offender": "/proc/irq/default_smp_affinity",
            "message": "new IRQs get affinity %s, which includes isolated CPUs %s (set irqaffinity= on "
                       "the command line or write the mask)"
                       % (format_cpulist(default_affinity), format_cpulist(default_affinity & isolated)),
            "cpus": format_cpulist(default_affinity & isolated),
        })
    table = parse_interrupts(read_text(os.path.join(proc_root, "interrupts")) or "")
    irqs = []
    for number in sorted(int(e) for e in list_dir(irq_dir) if e.isdigit()):
        entry = str(number)
        path = os.path.join(irq_dir, entry)
        affinity = ctx.cpus(read_text(os.path.join(path, "smp_affinity_list")), "irq %d smp_affinity_list" % number)
        if affinity is None:
            continue
        effective = ctx.cpus(read_text(os.path.join(path, "effective_affinity_list")),
                             "irq %d effective_affinity_list" % number)
        actions = sorted(e for e in list_dir(path) if os.path.isdir(os.path.join(path, e)))
        info = table.get(number, {})
        name = ",".join(actions) or info.get("name", "")
        irqs.append({
            "irq": number,
            "name": name,
            "chip": info.get("chip", ""),
            "affinity": format_cpulist(affinity),
            "effective": format_cpus(effective),
            "in_use": bool(actions),
        })
        changeable = irq_changeable(proc_root, sys_root, number)
        irqs[-1]["changeable"] = changeable
        inside = affinity & isolated
        if inside:
            if not actions:
                note = "no handler is registered (unused IRQ); harmless until a driver requests it"
            elif changeable is False:
                note = ("a managed or per-CPU IRQ: writing smp_affinity fails with EIO; "
                        "isolcpus=managed_irq keeps managed IRQs off isolated CPUs")
            elif effective is not None and not (effective & isolated):
                note = ("currently delivered to housekeeping CPU(s) %s, but the allowed set includes "
                        "isolated CPUs" % format_cpulist(effective))
            else:
                note = ("if writing smp_affinity fails with EIO this is a managed or per-CPU IRQ that "
                        "userspace cannot move (isolcpus=managed_irq keeps managed IRQs off isolated CPUs)")
            violations.append({
                "kind": "irq_affinity",
                "offender": "irq %d (%s)" % (number, name or "unnamed"),
                "message": "irq %d may be delivered to isolated CPUs %s (smp_affinity_list %s)"
                           % (number, format_cpulist(inside), format_cpulist(affinity)),
                "irq": number,
                "cpus": format_cpulist(inside),
                "affinity": format_cpulist(affinity),
                "effective": format_cpus(effective),
                "changeable": changeable,
                "note": note,
            })
    return irqs, default_affinity
