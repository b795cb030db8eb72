# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The realtime guests as they are to be: every guest's settings resolved once, its pCPUs planned, its
definition rendered and compared with the one libvirt holds.

:func:`plan_guests` is pure: the guest_plan module reads the host (topology, isolated CPUs, libvirt's
definitions and running guests) and hands it in.  Its resolved guests are exactly what the realtime_vm role's
tasks give realtime_domain, so the role repeats no default and predicts nothing: what it applies is what was
planned here, with the same planners (``allocate_all``, ``plan_definition``) the modules use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    DomainSpecError,
    allocation_requests,
    guest_list_problems,
    plan_definition,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import holdings_from_domain_xml
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import allocate_all, requests_from_entries

# pcpu_allocation's top-level defaults: a guest entry leaves nothing to them but what it does not say.
_ALLOCATION_DEFAULTS = {"state": "present", "vcpus": None, "smt_policy": "prefer", "numa_node": None, "pcpus": None}
NO_POOL = ("No realtime pool: the host reports no isolated CPUs, host_prep did not run in this play and left no layout "
           "on the host. Run the roles together (site.yml), set realtime_vm_pool (or realtime_vm_isolated_cpus), or "
           "boot the host with isolcpus=.")


@dataclass
class Defaults:
    """What a guest entry leaves out (the realtime_vm_* variables of the same names)."""

    partition: str = "/rt"
    smt_policy: str = "prefer"
    memory_mib: int = 128
    fifo_priority: int = 1
    domain_type: str = "kvm"
    autostart: bool = True


@dataclass
class HostGuests:
    """What libvirt holds: ``definitions`` {name: inactive XML}, the ``running`` names and the ``autostart`` ones."""

    definitions: dict = field(default_factory=dict)
    running: frozenset = frozenset()
    autostart: frozenset = frozenset()


@dataclass
class GuestsPlan:
    pool: str
    emulator_cpus: str
    guests: list            # resolved entries, each with its "changes"
    partitions: list        # [{"name", "cpus"}]: what every present guest's partition must hold
    warnings: list = field(default_factory=list)

    @property
    def present(self):
        return [g for g in self.guests if g["state"] == "present"]

    def changes(self):
        return ["guest %s: %s" % (g["name"], change) for g in self.guests for change in g["changes"]]


class GuestPlanError(ValueError):
    """The guest list or a setting cannot be planned; nothing was changed."""


def _cpus(text, what):
    try:
        return parse_cpulist(str(text), what=what)
    except CpuListError as exc:
        raise GuestPlanError(str(exc)) from None


def guest_spec(resolved):
    """The DomainSpec realtime_domain builds from a resolved guest's options."""
    return DomainSpec(name=resolved["name"], vcpus=resolved["vcpus"], memory_mib=resolved["memory_mib"],
                      vcpupin=resolved["vcpupin"], emulator_cpus=resolved["emulator_cpus"],
                      fifo_priority=resolved["fifo_priority"], partition=resolved["partition"],
                      numa_nodes=tuple(resolved["numa_nodes"]), metadata=resolved["metadata"],
                      domain_type=resolved["domain_type"], iothreads=resolved["iothreads"])


def _given(guest):
    return {key: value for key, value in guest.items() if value is not None}


def plan_guests(guests, topology, host, pool, emulator_cpus, defaults=Defaults(), exists=os.path.exists):
    """The :class:`GuestsPlan` of ``guests`` (realtime_vm_guests entries) on ``topology`` with libvirt's ``host``.

    ``pool`` and ``emulator_cpus`` are settled CPU lists (text); ``exists`` checks a base_xml's disk paths.  Raises GuestPlanError (the list's problems,
    no pool) or the planners' own errors (PcpuError, DomainSpecError) before anything is changed.
    """
    entries = [_given(guest) for guest in guests]
    problems = guest_list_problems(entries)
    if problems:
        raise GuestPlanError("; ".join(problems))
    entries = [dict(e, state=e.get("state", "present")) for e in entries]
    result = GuestsPlan(pool=pool, emulator_cpus=emulator_cpus, guests=[], partitions=[])
    for guest in entries:
        if guest["state"] == "absent":
            gone = guest["name"] in host.definitions or guest["name"] in host.running
            result.guests.append({"name": guest["name"], "state": "absent", "changes": ["remove"] if gone else []})
    wanted = [g for g in entries if g["state"] == "present"]
    if not wanted:
        return result
    if not pool:
        raise GuestPlanError(NO_POOL)
    pool_cpus = _cpus(pool, "pool")
    # Absent guests go in too: the allocator frees their pCPUs before it plans the present ones.
    requests, emulators = requests_from_entries(allocation_requests(entries, defaults.smt_policy, emulator_cpus),
                                                _ALLOCATION_DEFAULTS)
    holdings = holdings_from_domain_xml(list(host.definitions.values()))
    plans = {plan.name: plan for plan in allocate_all(topology, pool_cpus, holdings, requests, emulators)}
    for guest in wanted:
        plan = plans[guest["name"]]
        result.warnings.extend(plan.warnings)
        resolved = {
            "name": guest["name"], "state": "present", "vcpus": len(plan.pins),
            "memory_mib": guest.get("memory_mib", defaults.memory_mib),
            "vcpupin": {str(vcpu): cpus for vcpu, cpus in plan.vcpupin.items()},
            "emulator_cpus": str(guest.get("emulator_cpus", emulator_cpus)),
            "fifo_priority": guest.get("fifo_priority", defaults.fifo_priority),
            "partition": guest.get("partition", defaults.partition),
            "numa_nodes": list(plan.numa_nodes), "metadata": plan.metadata_xml(),
            "base_xml": guest.get("base_xml"), "domain_type": guest.get("domain_type", defaults.domain_type),
            "iothreads": guest.get("iothreads", 0),
            "autostart": guest.get("autostart", defaults.autostart),
        }
        spec = guest_spec(resolved)
        current = host.definitions.get(spec.name)
        changed = plan_definition(spec, current, resolved["base_xml"], exists).differences
        if current is None:
            resolved["changes"] = ["define"]
        else:
            resolved["changes"] = ["its definition differs in %s" % ", ".join(changed)] if changed else []
            # A new guest gets its autostart flag with its definition; a defined one only when the flag differs.
            if resolved["autostart"] != (spec.name in host.autostart):
                resolved["changes"].append("autostart %s" % ("on" if resolved["autostart"] else "off"))
        if spec.name not in host.running:
            resolved["changes"].append("start")
        result.guests.append(resolved)
    cpus = format_cpulist(pool_cpus | _cpus(emulator_cpus, "emulator CPUs"))
    for name in sorted({g["partition"] for g in result.present}):
        result.partitions.append({"name": name, "cpus": cpus})
    return result


def status_line(plan, changes):
    """The role's one line: what is to be done (``changes``, all of it), or the steady state with the vCPU pins."""
    if changes:
        return "to do: " + "; ".join(changes)
    pins = {g["name"]: g["vcpupin"] for g in plan.present}
    return "steady state: %s as asked (vCPU pins %s); nothing else runs" % (
        ", ".join(g["name"] for g in plan.guests) or "no guests", pins)


__all__ = ["Defaults", "DomainSpecError", "GuestPlanError", "GuestsPlan", "HostGuests", "NO_POOL", "guest_spec",
           "plan_guests", "status_line"]
