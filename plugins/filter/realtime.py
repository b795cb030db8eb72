# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the realtime_vm role: guest list checks, the CPU map (text and HTML), the placement check."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import allocation_requests, guest_list_problems
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import (
    build_map,
    placement_problems,
    render_html,
    render_text,
)


def _facts(value, name):
    if not isinstance(value, dict) or "cpus" not in value:
        raise AnsibleFilterError("%s expects the cpu_isolation fact of rtvirt.kvm.cpu_isolation_facts, got %s"
                                 % (name, type(value).__name__))
    return value


def cpu_map_text(cpu_isolation, extra_pins=None, title="CPU map"):
    return render_text(build_map(_facts(cpu_isolation, "cpu_map_text"), extra_pins), title=title)


def cpu_map_html(cpu_isolation, extra_pins=None, title="CPU map"):
    return render_html(build_map(_facts(cpu_isolation, "cpu_map_html"), extra_pins), title=title)


def realtime_placement_problems(cpu_isolation, expected):
    return placement_problems(_facts(cpu_isolation, "realtime_placement_problems"), list(expected or ()))


def realtime_guest_problems(guests):
    return guest_list_problems(list(guests or ()))


def realtime_allocation_requests(guests, smt_policy, emulator_cpus):
    return allocation_requests(list(guests or ()), smt_policy, emulator_cpus)


class FilterModule:
    def filters(self):
        return {
            "cpu_map_text": cpu_map_text,
            "cpu_map_html": cpu_map_html,
            "realtime_placement_problems": realtime_placement_problems,
            "realtime_guest_problems": realtime_guest_problems,
            "realtime_allocation_requests": realtime_allocation_requests,
        }
