# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the realtime_vm role: the guest list check, the CPU map (text and HTML) and the placement check.
What the role is to do is guest_plan's answer, not a filter's."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# The planners are imported where a filter runs, not here: a task that uses any of the collection's filters
# loads every filter file, and host_prep's verify step should not pay for realtime_vm's planners.


def _facts(value, name):
    if not isinstance(value, dict) or "cpus" not in value:
        raise AnsibleFilterError("%s expects the cpu_isolation fact of rtvirt.kvm.cpu_isolation_facts, got %s"
                                 % (name, type(value).__name__))
    return value


def cpu_map_text(cpu_isolation, extra_pins=None, title="CPU map", emulator_cpus=None):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import build_map, render_text
    return render_text(build_map(_facts(cpu_isolation, "cpu_map_text"), extra_pins, emulator_cpus), title=title)


def cpu_map_html(cpu_isolation, extra_pins=None, title="CPU map", emulator_cpus=None):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import build_map, render_html
    return render_html(build_map(_facts(cpu_isolation, "cpu_map_html"), extra_pins, emulator_cpus), title=title)


def realtime_placement_problems(cpu_isolation, expected):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import placement_problems
    return placement_problems(_facts(cpu_isolation, "realtime_placement_problems"), list(expected or ()))


def realtime_guest_problems(guests):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import guest_list_problems
    return guest_list_problems(list(guests or ()))


class FilterModule:
    def filters(self):
        return {
            "cpu_map_text": cpu_map_text,
            "cpu_map_html": cpu_map_html,
            "realtime_placement_problems": realtime_placement_problems,
            "realtime_guest_problems": realtime_guest_problems,
        }
