# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter of the host_prep role: which of the facts' violations host_prep answers for (its verify step after a
change; on a converged host rtvirt.kvm.host_prep_state returns the same selection itself)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def host_prep_violations(cpu_isolation, kinds, unmovable_irqs=()):
    # Imported here: a task that uses any of the collection's filters loads every filter file.
    from ansible_collections.rtvirt.kvm.plugins.module_utils._host_state import host_prep_violations as select

    if not isinstance(cpu_isolation, dict) or "violations" not in cpu_isolation:
        raise AnsibleFilterError("host_prep_violations expects the cpu_isolation fact of "
                                 "rtvirt.kvm.cpu_isolation_facts, got %s" % type(cpu_isolation).__name__)
    return select(cpu_isolation["violations"], kinds, unmovable_irqs)


class FilterModule:
    def filters(self):
        return {"host_prep_violations": host_prep_violations}
