# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the realtime_vm role: guest list checks, the CPU map (text and HTML), the placement check,
whether the role has anything to do (its steady state), and the line it prints about that."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# The planners are imported where a filter runs, not here: a task that uses any of the collection's filters
# loads every filter file, and host_prep's verify step should not pay for realtime_vm's planners.


def _facts(value, name):
    if not isinstance(value, dict) or "cpus" not in value:
        raise AnsibleFilterError("%s expects the cpu_isolation fact of rtvirt.kvm.cpu_isolation_facts, got %s"
                                 % (name, type(value).__name__))
    return value


def cpu_map_text(cpu_isolation, extra_pins=None, title="CPU map"):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import build_map, render_text
    return render_text(build_map(_facts(cpu_isolation, "cpu_map_text"), extra_pins), title=title)


def cpu_map_html(cpu_isolation, extra_pins=None, title="CPU map"):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import build_map, render_html
    return render_html(build_map(_facts(cpu_isolation, "cpu_map_html"), extra_pins), title=title)


def realtime_placement_problems(cpu_isolation, expected):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import placement_problems
    return placement_problems(_facts(cpu_isolation, "realtime_placement_problems"), list(expected or ()))


def realtime_guest_problems(guests):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import guest_list_problems
    return guest_list_problems(list(guests or ()))


def realtime_allocation_requests(guests, smt_policy, emulator_cpus):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import allocation_requests
    return allocation_requests(list(guests or ()), smt_policy, emulator_cpus)


def realtime_vm_changes(cpu_isolation, guests, pool="", isolated_cpus="", emulator_cpus="", partition="/rt",
                        manage_partitions=True, smt_policy="prefer", memory_mib=128, fifo_priority=1, verify=True,
                        uri=None):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._steady import SYSTEM_URI, changes_needed
    return changes_needed(_facts(cpu_isolation, "realtime_vm_changes"), list(guests or ()), pool=pool or "",
                          isolated_cpus=isolated_cpus or "", emulator_cpus=emulator_cpus or "", partition=partition,
                          manage_partitions=manage_partitions, smt_policy=smt_policy, memory_mib=memory_mib,
                          fifo_priority=fifo_priority, verify=verify,
                          uri=SYSTEM_URI if uri is None else uri)


def realtime_vm_status_line(cpu_isolation, guests, reasons):
    """The role's line after its decision: why the full path runs, or the steady state with the role's own
    guests' vCPU pins (the host may run many others, which the line is not about)."""
    if reasons:
        return "full path: " + "; ".join(str(reason) for reason in reasons)
    names = [guest["name"] for guest in guests or ()]
    pins = {guest["name"]: (guest.get("pinning") or {}).get("vcpus")
            for guest in _facts(cpu_isolation, "realtime_vm_status_line").get("guests") or () if guest["name"] in names}
    return "steady state: %s as asked (vCPU pins %s); nothing else runs" % (", ".join(names) or "no guests", pins)


class FilterModule:
    def filters(self):
        return {
            "cpu_map_text": cpu_map_text,
            "cpu_map_html": cpu_map_html,
            "realtime_placement_problems": realtime_placement_problems,
            "realtime_guest_problems": realtime_guest_problems,
            "realtime_allocation_requests": realtime_allocation_requests,
            "realtime_vm_changes": realtime_vm_changes,
            "realtime_vm_status_line": realtime_vm_status_line,
        }
