# -*- coding: utf-8 -*-
"""guest_plan's planner: every guest resolved once, planned with the modules' own planners, and a host where the
plan was applied (its definitions rendered from it) planning no change.

The topology is the recorded v1-isolcpus tree's (2 NUMA nodes x 2 cores x 2 SMT threads).
"""
from __future__ import annotations

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import DomainSpecError, render
from ansible_collections.rtvirt.kvm.plugins.module_utils._guest_plan import (
    NO_POOL,
    Defaults,
    GuestPlanError,
    HostGuests,
    guest_spec,
    plan_guests,
    status_line,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import AllocationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import read_topology
from tests.unit.fixtures.hosts import make_hosts

POOL, EMULATOR = "2-3,6-7", "0-1"


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    make_hosts.v1_isolcpus(root)
    return read_topology(str(root / "v1-isolcpus" / "sys"))


def _apply(plan, host=None):
    """What realtime_domain leaves when the role applies ``plan``: each present guest rendered and running."""
    host = host or HostGuests()
    definitions, running, starts = dict(host.definitions), set(host.running), set(host.autostart)
    for guest in plan.guests:
        if guest["state"] == "absent":
            definitions.pop(guest["name"], None)
            running.discard(guest["name"])
            starts.discard(guest["name"])
            continue
        definitions[guest["name"]] = render(guest_spec(guest), definitions.get(guest["name"], guest["base_xml"]))
        running.add(guest["name"])
        (starts.add if guest["autostart"] else starts.discard)(guest["name"])
    return HostGuests(definitions=definitions, running=frozenset(running), autostart=frozenset(starts))


def _plan(topology, guests, host=None, pool=POOL, **defaults):
    return plan_guests(guests, topology, host or HostGuests(), pool, EMULATOR, Defaults(**defaults))


def test_a_new_guest_is_resolved_once_and_planned_to_be_defined_and_started(topology):
    plan = _plan(topology, [{"name": "rt1", "vcpus": 2}])
    (guest,) = plan.guests
    assert guest["changes"] == ["define", "start"]
    assert (guest["vcpus"], guest["memory_mib"], guest["fifo_priority"], guest["partition"], guest["domain_type"]) \
        == (2, 128, 1, "/rt", "kvm")
    assert guest["emulator_cpus"] == EMULATOR and len(guest["numa_nodes"]) == 1
    assert set(guest["vcpupin"]) == {"0", "1"} and "rtvirt:pcpu" in guest["metadata"]
    assert plan.partitions == [{"name": "/rt", "cpus": "0-3,6-7"}]
    assert plan.changes() == ["guest rt1: define", "guest rt1: start"]


def test_the_entry_wins_over_the_defaults(topology):
    plan = _plan(topology, [{"name": "rt1", "vcpus": 1, "memory_mib": 256, "fifo_priority": 9, "partition": "/x",
                             "emulator_cpus": "0", "domain_type": "qemu"}], memory_mib=64, fifo_priority=2)
    guest = plan.guests[0]
    assert (guest["memory_mib"], guest["fifo_priority"], guest["partition"], guest["emulator_cpus"],
            guest["domain_type"]) == (256, 9, "/x", "0", "qemu")
    # None is what Ansible's suboptions give for a key the entry leaves out: the default applies.
    plan = _plan(topology, [{"name": "rt1", "vcpus": 1, "memory_mib": None, "partition": None}], memory_mib=64)
    assert (plan.guests[0]["memory_mib"], plan.guests[0]["partition"]) == (64, "/rt")


def test_an_applied_plan_plans_nothing_and_says_steady(topology):
    guests = [{"name": "rt1", "vcpus": 2}, {"name": "rt2", "vcpus": 1, "fifo_priority": 5}]
    first = _plan(topology, guests)
    pinned = [set(g["vcpupin"].values()) for g in first.guests]
    assert not pinned[0] & pinned[1], pinned
    again = _plan(topology, guests, _apply(first))
    assert again.changes() == [] and [g["vcpupin"] for g in again.guests] == [g["vcpupin"] for g in first.guests]
    assert status_line(again, again.changes()).startswith("steady state: rt1, rt2 as asked")
    assert status_line(again, ["partition /rt: mkdir x"]) == "to do: partition /rt: mkdir x"


def test_a_hand_change_or_a_stopped_guest_is_planned(topology):
    guests = [{"name": "rt1", "vcpus": 1}]
    host = _apply(_plan(topology, guests))
    pin = _plan(topology, guests, host).guests[0]["vcpupin"]["0"]
    edited = host.definitions["rt1"].replace('vcpu="0" cpuset="%s"' % pin, 'vcpu="0" cpuset="0"')
    assert edited != host.definitions["rt1"]
    changed = _plan(topology, guests, HostGuests({"rt1": edited}, host.running, host.autostart))
    assert changed.guests[0]["changes"] == ["its definition differs in vcpupin"]
    stopped = _plan(topology, guests, HostGuests(host.definitions, frozenset(), host.autostart))
    assert stopped.guests[0]["changes"] == ["start"]
    bigger = _plan(topology, [{"name": "rt1", "vcpus": 1, "memory_mib": 512}], host)
    assert bigger.guests[0]["changes"] == ["its definition differs in memory_kib"]


def test_autostart_defaults_on_and_a_flag_that_differs_is_planned(topology):
    guests = [{"name": "rt1", "vcpus": 1}, {"name": "rt2", "vcpus": 1, "autostart": False}]
    first = _plan(topology, guests)
    assert [g["autostart"] for g in first.guests] == [True, False]
    assert first.guests[0]["changes"] == ["define", "start"]   # a new guest gets its flag with its definition
    host = _apply(first)
    assert host.autostart == {"rt1"} and _plan(topology, guests, host).changes() == []
    cleared = HostGuests(host.definitions, host.running, frozenset())
    assert _plan(topology, guests, cleared).changes() == ["guest rt1: autostart on"]
    assert _plan(topology, guests, host, autostart=False).changes() == ["guest rt1: autostart off"]
    flipped = [dict(guests[0], autostart=False), dict(guests[1], autostart=True)]
    assert _plan(topology, flipped, host).changes() == ["guest rt1: autostart off", "guest rt2: autostart on"]


def test_absent_guests_are_removed_only_when_libvirt_has_them(topology):
    host = _apply(_plan(topology, [{"name": "rt1", "vcpus": 1}]))
    plan = _plan(topology, [{"name": "rt1", "state": "absent"}, {"name": "gone", "state": "absent"}], host, pool="")
    assert [(g["name"], g["changes"]) for g in plan.guests] == [("rt1", ["remove"]), ("gone", [])]
    assert plan.partitions == []          # removing needs no pool and no partition


@pytest.mark.parametrize("guests, pool, error, message", [
    ([{"name": "bad/name", "vcpus": 1}], POOL, GuestPlanError, "is not accepted"),
    ([{"name": "rt1", "vcpus": 1}, {"name": "rt1", "vcpus": 1}], POOL, GuestPlanError, "listed twice"),
    ([{"name": "rt1", "vcpus": 1, "fifo_priority": 0}], POOL, GuestPlanError, "out of range"),
    ([{"name": "rt1"}], POOL, GuestPlanError, "give vcpus (or pcpus)"),
    ([{"name": "rt1", "vcpus": 1}], "", GuestPlanError, NO_POOL),
    ([{"name": "rt1", "vcpus": 5}], POOL, AllocationError, "needs 5 pCPUs but only 4 are free"),
    ([{"name": "rt1", "vcpus": 1, "partition": "rel"}], POOL, DomainSpecError, "must be an absolute path"),
    ([{"name": "rt1", "vcpus": 1, "base_xml": "<domain"}], POOL, DomainSpecError, "not well-formed XML"),
    ([{"name": "rt1", "vcpus": 1, "autostart": "yes"}], POOL, GuestPlanError, "guest rt1: autostart must be true or false, got 'yes'"),
])
def test_bad_input_is_refused_by_the_plan(topology, guests, pool, error, message):
    with pytest.raises(error, match=None) as caught:
        _plan(topology, guests, pool=pool)
    assert message in str(caught.value)
