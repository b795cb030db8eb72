# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the host_prep role: which of the facts' violations host_prep answers for, and its verify step's
verdict after a change (on a converged host rtvirt.kvm.host_plan returns both itself)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def _violations(cpu_isolation, name):
    if not isinstance(cpu_isolation, dict) or "violations" not in cpu_isolation:
        raise AnsibleFilterError("%s expects the cpu_isolation fact of rtvirt.kvm.cpu_isolation_facts, got %s"
                                 % (name, type(cpu_isolation).__name__))
    return cpu_isolation["violations"]


def host_prep_violations(cpu_isolation, kinds, unmovable_irqs=()):
    # Imported here: a task that uses any of the collection's filters loads every filter file.
    from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import host_prep_violations as select

    return select(_violations(cpu_isolation, "host_prep_violations"), kinds, unmovable_irqs)


def host_prep_verdict(cpu_isolation, kinds, unmovable_irqs=(), summary="", areas=(), check_mode=False, verify=True):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import host_prep_violations as select
    from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import verdict

    kept, others = [], 0
    if verify:  # without the verify step converge.yml reads no facts again
        every = _violations(cpu_isolation, "host_prep_verdict")
        kept = select(every, kinds, unmovable_irqs)
        others = len(every) - len(kept)
    return verdict(summary, kept, others, kinds, areas, check_mode, verify)


class FilterModule:
    def filters(self):
        return {"host_prep_violations": host_prep_violations, "host_prep_verdict": host_prep_verdict}
