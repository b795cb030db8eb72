# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What keeping IRQs on a set of CPUs changes: one plan, used by irq_affinity (which applies it) and by
host_plan (which only asks whether it is empty)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_irqs import irq_changeable

UNMOVABLE = "the kernel does not let user space move it (read-only smp_affinity, or a managed or per-CPU IRQ)"


def _read(path):
    with open(path) as handle:
        return handle.read().strip()


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text + "\n")


@dataclass
class IrqMove:
    irq: int
    path: str
    before: frozenset
    changeable: bool | None     # irq_changeable(): False when the kernel is known to refuse the write


@dataclass
class IrqPlan:
    cpus: frozenset
    default_path: str
    default_before: frozenset
    moves: list = field(default_factory=list)
    exact: bool = False

    @property
    def default_changes(self):
        return self.default_before != self.cpus

    @property
    def refused(self):
        """The IRQs outside ``cpus`` a write cannot move: a real run's write would fail and count no change."""
        return [m for m in self.moves if m.changeable is False]

    @property
    def movable(self):
        return [m for m in self.moves if m.changeable is not False]

    @property
    def changed(self):
        return self.default_changes or bool(self.movable)

    def reasons(self):
        """The plan in words, empty when it changes nothing."""
        reasons, wanted = [], format_cpulist(self.cpus)
        if self.default_changes:
            reasons.append("default_smp_affinity is %s, not %s" % (format_cpulist(self.default_before) or "empty", wanted))
        if self.movable:
            reasons.append("IRQ(s) %s %s %s" % (", ".join(str(m.irq) for m in self.movable),
                                                "not on all of" if self.exact else "allowed outside", wanted))
        return reasons

    def default_affinity(self):
        return {"before": format_cpulist(self.default_before), "after": format_cpulist(self.cpus)}

    def item(self, move):
        return {"irq": move.irq, "before": format_cpulist(move.before), "after": format_cpulist(self.cpus)}

    def apply(self):
        """Write the plan: (moved, unmovable).  Every IRQ outside ``cpus`` is tried, the kernel has the last
        word; raises OSError when the default affinity cannot be written."""
        if self.default_changes:
            _write(self.default_path, format_cpumask(self.cpus))
        moved, unmovable = [], []
        for move in self.moves:
            try:
                _write(move.path, format_cpulist(self.cpus))
            except OSError as exc:
                unmovable.append({"irq": move.irq, "affinity": format_cpulist(move.before), "error": str(exc)})
                continue
            moved.append(self.item(move))
        return moved, unmovable


def plan_irqs(cpus, proc_root="/proc", sys_root="/sys", exact=False):
    """The :class:`IrqPlan` that keeps IRQs and the default affinity within ``cpus`` (a frozenset); ``exact``:
    on all of ``cpus``, also for IRQs already within them (the way back spreads IRQs over every CPU again)."""
    irq_dir = os.path.join(proc_root, "irq")
    default_path = os.path.join(irq_dir, "default_smp_affinity")
    result = IrqPlan(cpus=cpus, default_path=default_path,
                     default_before=parse_cpumask(_read(default_path), what=default_path), exact=exact)
    for entry in sorted((e for e in os.listdir(irq_dir) if e.isdigit()), key=int):
        path = os.path.join(irq_dir, entry, "smp_affinity_list")
        try:
            current = parse_cpulist(_read(path), what=path)
        except (OSError, CpuListError):
            continue            # an IRQ that went away, or an affinity the kernel does not show: nothing to move
        if current == cpus or (current <= cpus and not exact):
            continue
        result.moves.append(IrqMove(int(entry), path, current, irq_changeable(proc_root, sys_root, entry)))
    return result
