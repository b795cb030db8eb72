# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit and property tests of the pCPU planner (pure: fake sysfs trees and XML strings)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    METADATA_NS,
    AllocationError,
    DomainXMLError,
    Holdings,
    guest_pins_from_domain_xml,
    holdings_from_domain_xml,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import Request, allocate, allocate_all
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import Topology, TopologyError, read_topology

# ---------------------------------------------------------------------------------------------
# helpers


def domain_xml(name, pins=(), emulator=None, reserved=None, policy=None, vcpus=None, extra=""):
    """A minimal libvirt domain XML with <vcpupin> per (vcpu, cpuset) pair."""
    pins = list(pins.items()) if isinstance(pins, dict) else list(enumerate(pins))
    tune = "".join("<vcpupin vcpu='%d' cpuset='%s'/>" % (v, c) for v, c in pins)
    if emulator is not None:
        tune += "<emulatorpin cpuset='%s'/>" % emulator
    meta = ""
    if policy or reserved:
        meta = "<metadata><rtvirt:pcpu xmlns:rtvirt='%s' smt_policy='%s'%s/></metadata>" % (
            METADATA_NS, policy or "prefer", " reserved='%s'" % reserved if reserved else "")
    return ("<domain type='kvm'><name>%s</name>%s<vcpu placement='static'%s>%d</vcpu>"
            "<cputune>%s</cputune></domain>" % (name, meta, extra, len(pins) if vcpus is None else vcpus, tune))


def xml_of(allocation):
    """What a define task would write: the pins and the metadata element."""
    tune = "".join("<vcpupin vcpu='%d' cpuset='%s'/>" % (v, c) for v, c in allocation.vcpupin.items())
    return ("<domain type='kvm'><name>%s</name><metadata>%s</metadata><vcpu>%d</vcpu><cputune>%s</cputune></domain>"
            % (allocation.name, allocation.metadata_xml(), len(allocation.pins), tune))


def write_sysfs(root, online, siblings, nodes, core_ids=None, packages=None):
    """A fake /sys: online list, per-CPU topology files, node*/cpulist."""
    cpu_dir = root / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "online").write_text(online + "\n")
    for cpu, group in siblings.items():
        topo = cpu_dir / ("cpu%d" % cpu) / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(format_cpulist(group) + "\n")
        (topo / "core_id").write_text("%d\n" % (core_ids or {}).get(cpu, cpu))
        (topo / "physical_package_id").write_text("%d\n" % (packages or {}).get(cpu, 0))
    for node, cpus in nodes.items():
        node_dir = root / "devices" / "system" / "node" / ("node%d" % node)
        node_dir.mkdir(parents=True)
        (node_dir / "cpulist").write_text(cpus + "\n")
    return str(root)


def two_node_smt_siblings():
    # 2 nodes x 4 cores x 2 threads; thread t of core c is CPU t*8+c (x86 numbering).
    return {cpu: frozenset([cpu % 8, cpu % 8 + 8]) for cpu in range(16)}


FLAT8 = Topology.uniform(nodes=1, cores_per_node=8, threads_per_core=1)
SMT2x4 = Topology.uniform(nodes=2, cores_per_node=4, threads_per_core=2)


# ---------------------------------------------------------------------------------------------
# read_topology


def test_read_topology_one_node_no_smt(tmp_path):
    root = write_sysfs(tmp_path, "0-3", {c: {c} for c in range(4)}, {0: "0-3"})
    topo = read_topology(root)
    assert topo.cpus == frozenset(range(4))
    assert topo.nodes == (0,)
    assert not topo.has_smt
    assert all(topo.siblings_of(c) == {c} for c in range(4))


def test_read_topology_two_nodes_smt(tmp_path):
    siblings = two_node_smt_siblings()
    root = write_sysfs(tmp_path, "0-15", siblings, {0: "0-3,8-11", 1: "4-7,12-15"},
                       core_ids={c: c % 4 for c in range(16)}, packages={c: (c % 8) // 4 for c in range(16)})
    topo = read_topology(root)
    assert topo == SMT2x4
    assert topo.nodes == (0, 1)
    assert topo.has_smt
    assert topo.siblings_of(9) == {1, 9}
    assert topo.node_of(12) == 1
    assert topo.core_id(13) == 1 and topo.package_id(13) == 1


def test_read_topology_offline_cpus(tmp_path):
    # CPUs 2 and 10 are offline: no topology directory, absent from the online list; the
    # siblings file of an online CPU lists only online siblings, the node lists may be stale.
    siblings = {c: frozenset([c % 8, c % 8 + 8]) - {2, 10} for c in range(16) if c not in (2, 10)}
    root = write_sysfs(tmp_path, "0-1,3-9,11-15", siblings, {0: "0-3,8-11", 1: "4-7,12-15"})
    topo = read_topology(root)
    assert 2 not in topo.cpus and 10 not in topo.cpus
    assert topo.siblings_of(3) == {3, 11}
    plan = allocate(topo, frozenset(range(1, 16)), Holdings(), Request("g", 2, "prefer"))
    assert plan.cpus == {1, 9}
    assert any("2,10 are not online" in w for w in plan.warnings)


def test_read_topology_present_cpus(tmp_path):
    # host_plan tells an offline CPU ("bring it online") from a missing one by the present list.
    root = write_sysfs(tmp_path, "0-1,3", {0: {0}, 1: {1}, 3: {3}}, {0: "0-3"})
    (tmp_path / "devices" / "system" / "cpu" / "present").write_text("0-3\n")
    assert read_topology(root).present == frozenset(range(4))


def test_read_topology_present_defaults_to_online(tmp_path):
    root = write_sysfs(tmp_path, "0-1", {0: {0}, 1: {1}}, {})
    assert read_topology(root).present == frozenset({0, 1})


def test_read_topology_without_numa_puts_all_on_node0(tmp_path):
    root = write_sysfs(tmp_path, "0-1", {0: {0}, 1: {1}}, {})
    assert read_topology(root).nodes == (0,)


def test_read_topology_missing_sysfs(tmp_path):
    with pytest.raises(TopologyError, match="cannot read the online CPUs"):
        read_topology(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# domain XML


@pytest.mark.parametrize("text", ["", "1-", "^1-3", "a", "1,,2", "4-2", "0-7:2/4", "^1"])
def test_a_bad_cpuset_in_a_definition_is_a_domain_xml_error(text):
    # The grammar itself is tested with _cpulist.parse_libvirt_cpuset; here: the error kind the books raise.
    with pytest.raises(DomainXMLError):
        guest_pins_from_domain_xml("<domain><name>g</name><cputune><vcpupin vcpu='0' cpuset='%s'/></cputune>"
                                   "</domain>" % text)


def test_guest_pins_from_xml():
    guest = guest_pins_from_domain_xml(domain_xml("rt0", {0: "2", 1: "3-5,^4"}, emulator="0-1",
                                                  reserved="10-11", policy="isolate"))
    assert guest.name == "rt0"
    assert guest.vcpupin == {0: {2}, 1: {3, 5}}
    assert guest.emulator == {0, 1}
    assert guest.reserved == {10, 11}
    assert guest.smt_policy == "isolate"
    assert guest.held == {0, 1, 2, 3, 5, 10, 11}


def test_vcpu_cpuset_is_the_default_pin():
    guest = guest_pins_from_domain_xml(domain_xml("g", {1: "5"}, vcpus=3, extra=" cpuset='2-3'"))
    assert guest.vcpupin == {0: {2, 3}, 1: {5}, 2: {2, 3}}
    assert guest.emulator == {2, 3}


def test_unpinned_guest_holds_nothing():
    assert not guest_pins_from_domain_xml("<domain><name>float</name><vcpu>4</vcpu></domain>").held


@pytest.mark.parametrize("text, message", [
    ("<domain>", "not well-formed"),
    ("<domain><vcpu>1</vcpu></domain>", "no <name>"),
    ("<network><name>x</name></network>", "expected <domain>"),
    ("<domain><name>x</name><cputune><vcpupin vcpu='0' cpuset='z'/></cputune></domain>", "vcpupin 0"),
])
def test_bad_domain_xml(text, message):
    with pytest.raises(DomainXMLError, match=message):
        guest_pins_from_domain_xml(text)


def test_duplicate_domain_names():
    with pytest.raises(DomainXMLError, match="given twice"):
        holdings_from_domain_xml([domain_xml("a", [2]), domain_xml("a", [3])])


# ---------------------------------------------------------------------------------------------
# allocate: examples


def held(**guests):
    return holdings_from_domain_xml([domain_xml(name, pins) for name, pins in guests.items()])


def test_fresh_guest_lowest_first():
    plan = allocate(FLAT8, range(2, 8), Holdings(), Request("rt0", 2))
    assert plan.pins == ((0, 2), (1, 3))
    assert plan.vcpupin == {0: "2", 1: "3"}
    assert plan.free == {4, 5, 6, 7}
    assert plan.numa_nodes == (0,) and not plan.spans_nodes
    assert plan.holders == {"rt0": {2, 3}}


def test_does_not_fit_message_names_free_and_holders():
    with pytest.raises(AllocationError) as info:
        allocate(FLAT8, range(2, 8), held(rt0=[2, 3], rt1=[4, 5]), Request("rt2", 4))
    assert str(info.value) == ("guest 'rt2' needs 4 pCPUs but only 2 are free in the realtime pool 2-7 "
                               "(node0: 6-7); held: rt0 2-3, rt1 4-5")


def test_same_count_keeps_exact_pins_even_if_not_lowest():
    holdings = held(rt0=[7, 5], rt1=[2])
    plan = allocate(FLAT8, range(2, 8), holdings, Request("rt0", 2))
    assert plan.pins == ((0, 7), (1, 5))
    assert plan.unchanged


def test_growing_keeps_pins_and_adds():
    plan = allocate(FLAT8, range(2, 8), held(rt0=[6, 7]), Request("rt0", 4))
    assert plan.pins == ((0, 6), (1, 7), (2, 2), (3, 3))
    assert not plan.unchanged


def test_shrinking_drops_highest_vcpus_and_frees_them():
    plan = allocate(FLAT8, range(2, 8), held(rt0=[2, 3, 4]), Request("rt0", 1))
    assert plan.pins == ((0, 2),)
    assert plan.freed == {3, 4}


def test_absent_frees_exactly_the_guest():
    holdings = held(rt0=[2, 3], rt1=[4, 5])
    plan = allocate(FLAT8, range(2, 8), holdings, Request("rt0", state="absent"))
    assert plan.pins == ()
    assert plan.freed == {2, 3}
    assert plan.free == {2, 3, 6, 7}
    assert plan.holders == {"rt1": {4, 5}}


def test_others_emulator_pin_in_pool_is_held():
    holdings = holdings_from_domain_xml([domain_xml("a", [3], emulator="2")])
    plan = allocate(FLAT8, range(2, 8), holdings, Request("b", 1))
    assert plan.cpus == {4}


def test_one_node_when_possible():
    # node0 has 2 free cores, node1 has 4: a 3-vCPU guest goes to node1 entirely.
    holdings = held(a=[0, 1])
    plan = allocate(Topology.uniform(2, 4, 1), range(8), holdings, Request("b", 3))
    assert plan.cpus == {4, 5, 6} and plan.numa_nodes == (1,)


def test_spanning_nodes_warns():
    plan = allocate(Topology.uniform(2, 4, 1), range(2, 8), Holdings(), Request("big", 5))
    assert plan.spans_nodes and plan.numa_nodes == (0, 1)
    assert any("spans NUMA nodes 0, 1" in w for w in plan.warnings)


def test_numa_node_is_honoured_and_never_spanned():
    topo = Topology.uniform(2, 4, 1)
    assert allocate(topo, range(8), Holdings(), Request("g", 2, numa_node=1)).cpus == {4, 5}
    with pytest.raises(AllocationError, match=r"needs 5 pCPUs but only 4 are free on NUMA node 1 .*\(node1: 4-7\)"):
        allocate(topo, range(8), Holdings(), Request("g", 5, numa_node=1))
    with pytest.raises(AllocationError, match="numa_node 3 does not exist"):
        allocate(topo, range(8), Holdings(), Request("g", 1, numa_node=3))


def test_prefer_packs_siblings_together():
    plan = allocate(SMT2x4, range(16), Holdings(), Request("g", 4, "prefer"))
    assert plan.pins == ((0, 0), (1, 8), (2, 1), (3, 9))
    assert plan.siblings_reserved == frozenset()


def test_prefer_odd_guest_then_next_guest_uses_spare_thread_last():
    first = allocate(SMT2x4, range(16), Holdings(), Request("a", 3, "prefer"))
    assert first.cpus == {0, 8, 1}
    second = allocate(SMT2x4, range(16), Holdings().apply(first), Request("b", 2, "prefer"))
    assert second.cpus == {2, 10}  # a whole free core before the half-used one


def test_isolate_reserves_siblings():
    plan = allocate(SMT2x4, range(16), Holdings(), Request("g", 2, "isolate"))
    assert plan.pins == ((0, 0), (1, 1))
    assert plan.siblings_reserved == {8, 9}
    assert plan.reserved == {0, 1, 8, 9}
    assert 'reserved="8-9"' in plan.metadata_xml()


def test_isolate_reservation_survives_the_xml_round_trip():
    first = allocate(SMT2x4, range(16), Holdings(), Request("iso", 2, "isolate"))
    holdings = holdings_from_domain_xml([xml_of(first)])
    second = allocate(SMT2x4, range(16), holdings, Request("other", 2, "prefer"))
    assert not second.cpus & {0, 1, 8, 9}
    again = allocate(SMT2x4, range(16), holdings, Request("iso", 2, "isolate"))
    assert again.pins == first.pins and again.unchanged


def test_isolate_prefers_cores_wholly_in_the_pool():
    plan = allocate(SMT2x4, range(1, 16), Holdings(), Request("g", 1, "isolate"))
    assert plan.cpus == {1} and not plan.warnings


def test_isolate_without_smt_is_one_vcpu_per_cpu():
    plan = allocate(FLAT8, range(2, 8), Holdings(), Request("g", 3, "isolate"))
    assert plan.cpus == {2, 3, 4} and not plan.siblings_reserved


def test_isolate_skips_cores_where_a_sibling_is_held():
    holdings = held(a=[8])  # a holds CPU 8, sibling of 0
    plan = allocate(SMT2x4, range(16), holdings, Request("g", 1, "isolate"))
    assert plan.cpus == {1}


def test_isolate_does_not_fit_counts_cores():
    holdings = held(a=[0, 1, 2, 4, 5, 6])
    with pytest.raises(AllocationError, match=r"each on a core of its own \(smt_policy=isolate\), but only 2 such "
                                              r"cores are free .*held: a 0-2,4-6"):
        allocate(SMT2x4, range(16), holdings, Request("g", 3, "isolate"))


def test_require_fills_whole_cores_and_reserves_odd_spare():
    plan = allocate(SMT2x4, range(16), Holdings(), Request("g", 3, "require"))
    assert plan.pins == ((0, 0), (1, 8), (2, 1))
    assert plan.siblings_reserved == {9}
    assert any("9 stay idle" in w for w in plan.warnings)


def test_require_on_non_smt_host_fails_clearly():
    with pytest.raises(AllocationError, match="smt_policy=require but this host has no SMT"):
        allocate(FLAT8, range(2, 8), Holdings(), Request("g", 2, "require"))


def test_require_with_pool_of_lone_threads_fails_clearly():
    with pytest.raises(AllocationError, match="holds no complete set of thread siblings"):
        allocate(SMT2x4, range(0, 8), Holdings(), Request("g", 2, "require"))


def test_require_skips_half_used_cores():
    plan = allocate(SMT2x4, range(16), held(a=[0]), Request("g", 2, "require"))
    assert plan.cpus == {1, 9}


@pytest.mark.parametrize("pcpus, holdings, message", [
    ((8, 9), held(), r"pcpus 8-9 for guest 'g' are outside the realtime pool 2-7"),
    ((2, 4), held(rt1=[4, 5]), r"pcpus 4 for guest 'g' are held by another guest: rt1 \(4\)"),
    ((2, 2), held(), r"more than once"),
    ((2,), held(), r"asks for 2 vCPUs but pcpus names 1"),
])
def test_explicit_pcpus_errors(pcpus, holdings, message):
    vcpus = 2
    with pytest.raises(AllocationError, match=message):
        allocate(FLAT8, range(2, 8), holdings, Request("g", vcpus, pcpus=pcpus))


def test_explicit_pcpus_honoured_in_order():
    plan = allocate(FLAT8, range(2, 8), held(rt0=[2]), Request("g", pcpus=(7, 3)))
    assert plan.pins == ((0, 7), (1, 3))


def test_explicit_pcpus_reserved_sibling_of_isolate_guest_names_holder():
    first = allocate(SMT2x4, range(16), Holdings(), Request("iso", 1, "isolate"))
    holdings = holdings_from_domain_xml([xml_of(first)])
    with pytest.raises(AllocationError, match=r"pcpus 8 for guest 'g' are held by another guest: iso \(8\)"):
        allocate(SMT2x4, range(16), holdings, Request("g", pcpus=(8,)))


def test_explicit_pcpus_isolate_checks_siblings():
    with pytest.raises(AllocationError, match="thread siblings; give one pCPU per core"):
        allocate(SMT2x4, range(16), Holdings(), Request("g", pcpus=(0, 8), smt_policy="isolate"))
    with pytest.raises(AllocationError, match=r"share a core \(siblings 0,8\) with a \(8\)"):
        allocate(SMT2x4, range(16), held(a=[8]), Request("g", pcpus=(0,), smt_policy="isolate"))
    plan = allocate(SMT2x4, range(16), Holdings(), Request("g", pcpus=(0, 1), smt_policy="isolate"))
    assert plan.siblings_reserved == {8, 9}


def test_explicit_pcpus_require_must_fill_cores():
    with pytest.raises(AllocationError, match="must fill whole cores"):
        allocate(SMT2x4, range(16), Holdings(), Request("g", pcpus=(0, 1), smt_policy="require"))
    plan = allocate(SMT2x4, range(16), Holdings(), Request("g", pcpus=(0, 8, 1), smt_policy="require"))
    assert plan.siblings_reserved == {9}


def test_explicit_pcpus_numa_node_checked():
    with pytest.raises(AllocationError, match="not on numa_node 1"):
        allocate(SMT2x4, range(16), Holdings(), Request("g", pcpus=(0,), numa_node=1))


def test_policy_change_replans_own_pins_only():
    # 'g' sits on siblings 0 and 8 (prefer); asking for isolate moves g, nobody else.
    holdings = held(g=[0, 8], other=[1])
    plan = allocate(SMT2x4, range(16), holdings, Request("g", 2, "isolate"))
    assert plan.cpus == {0, 2} and plan.siblings_reserved == {8, 10}
    assert plan.holders["other"] == {1}
    assert any("do not meet smt_policy=isolate" in w for w in plan.warnings)


def test_pool_offline_only():
    with pytest.raises(AllocationError, match="has no online CPU"):
        allocate(FLAT8, range(20, 24), Holdings(), Request("g", 1))


@pytest.mark.parametrize("request_, message", [
    (Request("g"), "give vcpus or pcpus"),
    (Request("g", 0), "positive number"),
    (Request("g", 1, "bogus"), "smt_policy must be one of"),
    (Request("", 1), "non-empty"),
])
def test_bad_requests(request_, message):
    with pytest.raises(AllocationError, match=message):
        allocate(FLAT8, range(8), Holdings(), request_)


# ---------------------------------------------------------------------------------------------
# properties


@st.composite
def scenarios(draw):
    nodes = draw(st.integers(1, 3))
    cores = draw(st.integers(1, 4))
    threads = draw(st.integers(1, 2))
    topo = Topology.uniform(nodes, cores, threads)
    cpus = sorted(topo.cpus)
    pool = frozenset(draw(st.lists(st.sampled_from(cpus), min_size=1, unique=True)))
    requests = draw(st.lists(
        st.tuples(st.integers(1, 5), st.sampled_from(["isolate", "prefer", "require"]),
                  st.one_of(st.none(), st.sampled_from(topo.nodes))),
        min_size=1, max_size=6))
    return topo, pool, [Request("g%d" % i, v, p, n) for i, (v, p, n) in enumerate(requests)]


def run_sequence(topo, pool, requests):
    """Allocate one by one, each time from the XML a define task would have written."""
    xmls, plans, holdings = {}, {}, Holdings()
    for request in requests:
        try:
            plan = allocate(topo, pool, holdings, request)
        except AllocationError as exc:
            # Only the expected refusals: no room, require without SMT, a node without pool CPUs.
            assert any(word in str(exc) for word in ("free", "smt_policy=require", "has no CPU in the realtime pool"))
            continue
        before = {g.name: g.vcpupin for g in holdings.guests()}
        xmls[request.name] = xml_of(plan)
        plans[request.name] = plan
        holdings = holdings_from_domain_xml(list(xmls.values()))
        after = {g.name: g.vcpupin for g in holdings.guests() if g.name != request.name}
        assert after == before  # nobody else moved
    return plans, holdings


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios())
def test_no_pcpu_is_given_twice_and_results_stay_in_pool(scenario):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    seen = {}
    for guest in holdings.guests():
        for cpu in guest.held:
            assert cpu not in seen, "pCPU %d held by %s and %s" % (cpu, seen.get(cpu), guest.name)
            seen[cpu] = guest.name
    for plan in plans.values():
        assert plan.cpus <= pool and plan.reserved <= pool
        assert len(plan.pins) == len({pcpu for vcpu, pcpu in plan.pins})


@PROPERTY
@given(scenarios())
def test_rerun_keeps_every_guests_pins(scenario):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    for request in requests:
        if request.name in plans:
            again = allocate(topo, pool, holdings, request)
            assert again.pins == plans[request.name].pins
            assert again.siblings_reserved == plans[request.name].siblings_reserved
            assert again.unchanged


@PROPERTY
@given(scenarios(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_domain_order(scenario, rnd):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    shuffled = holdings.guests()
    rnd.shuffle(shuffled)
    newcomer = Request("newcomer", 2, "prefer")
    try:
        first = allocate(topo, pool, holdings, newcomer)
    except AllocationError as exc:
        with pytest.raises(AllocationError) as again:
            allocate(topo, pool, Holdings(shuffled), newcomer)
        assert str(again.value) == str(exc)
        return
    assert allocate(topo, pool, Holdings(shuffled), newcomer) == first
    assert allocate(topo, pool, holdings, newcomer) == first


@PROPERTY
@given(scenarios(), st.data())
def test_absent_frees_exactly_that_guest(scenario, data):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    if not plans:
        return
    name = data.draw(st.sampled_from(sorted(plans)))
    free_before = pool & topo.cpus - holdings.held()
    plan = allocate(topo, pool, holdings, Request(name, state="absent"))
    assert plan.freed == holdings.get(name).held & pool
    assert plan.free == free_before | plan.freed
    assert name not in plan.holders
    assert dict(plan.holders) == {
        n: c for n, c in holdings.holders_of(pool).items() if n != name}


@PROPERTY
@given(scenarios())
def test_isolate_never_shares_a_core(scenario):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    all_pins = {}
    for guest in holdings.guests():
        for cpus in guest.vcpupin.values():
            for cpu in cpus:
                all_pins[cpu] = guest.name
    for plan in plans.values():
        if plan.smt_policy != "isolate":
            continue
        for cpu in plan.cpus:
            for sibling in topo.siblings_of(cpu) - {cpu}:
                assert sibling not in all_pins, "%s's pCPU %d shares a core with %s's %d" % (
                    plan.name, cpu, all_pins[sibling], sibling)


@PROPERTY
@given(scenarios())
def test_require_pins_come_in_sibling_pairs(scenario):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    for plan in plans.values():
        if plan.smt_policy != "require":
            continue
        cpus = plan.cpus
        lone = [c for c in cpus if not (topo.siblings_of(c) - {c}) & cpus]
        assert len(lone) <= 1  # only the last, odd vCPU may sit alone on its (reserved) core
        for cpu in lone:
            assert (topo.siblings_of(cpu) & pool) - {cpu} <= plan.siblings_reserved


@PROPERTY
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 8))
def test_require_on_non_smt_always_fails_clearly(nodes, cores, vcpus):
    topo = Topology.uniform(nodes, cores, 1)
    with pytest.raises(AllocationError, match="this host has no SMT"):
        allocate(topo, topo.cpus, Holdings(), Request("g", vcpus, "require"))


@PROPERTY
@given(scenarios(), st.data())
def test_explicit_pcpus_outside_pool_or_held_name_the_reason(scenario, data):
    topo, pool, requests = scenario
    plans, holdings = run_sequence(topo, pool, requests)
    pcpu = data.draw(st.sampled_from(sorted(topo.cpus)))
    request = Request("explicit", pcpus=(pcpu,))
    owners = [g.name for g in holdings.guests() if pcpu in g.held]
    if pcpu not in pool:
        with pytest.raises(AllocationError, match="outside the realtime pool"):
            allocate(topo, pool, holdings, request)
    elif owners:
        with pytest.raises(AllocationError, match="held by another guest: %s" % owners[0]):
            allocate(topo, pool, holdings, request)
    else:
        assert allocate(topo, pool, holdings, request).pins == ((0, pcpu),)


# ---------------------------------------------------------------------------------------------
# allocate_all: a whole guest list planned before anything is defined


def test_all_later_guest_sees_earlier_guests_planned_pins():
    a, b = allocate_all(FLAT8, range(2, 8), Holdings(), [Request("a", 2), Request("b", 2)])
    assert a.pins == ((0, 2), (1, 3))
    assert b.pins == ((0, 4), (1, 5))
    assert b.holders == {"a": {2, 3}, "b": {4, 5}}
    assert b.free == {6, 7}


def test_all_second_guest_that_does_not_fit_fails_naming_the_first():
    with pytest.raises(AllocationError) as info:
        allocate_all(FLAT8, [1], Holdings(), [Request("a", 1), Request("b", 1)])
    assert str(info.value) == ("guest 'b' needs 1 pCPU but only 0 are free in the realtime pool 1 (none on any node); "
                               "held: a 1 (planned after a of the same list, which count as holding the pCPUs "
                               "planned for them)")


def test_all_explicit_pcpu_of_an_earlier_guest_is_held():
    with pytest.raises(AllocationError, match=r"pcpus 3 for guest 'b' are held by another guest: a \(3\)"):
        allocate_all(FLAT8, range(2, 8), Holdings(), [Request("a", pcpus=(3,)), Request("b", pcpus=(3,))])


def test_all_first_guest_error_is_the_plain_one():
    with pytest.raises(AllocationError) as info:
        allocate_all(FLAT8, range(2, 4), Holdings(), [Request("a", pcpus=(7,)), Request("b", 1)])
    assert str(info.value) == "pcpus 7 for guest 'a' are outside the realtime pool 2-3"


def test_all_absent_guests_free_their_pcpus_first_wherever_they_are_listed():
    holdings = held(old=[1])
    new, gone = allocate_all(FLAT8, [1], holdings, [Request("new", 1), Request("old", state="absent")])
    assert new.pins == ((0, 1),)
    assert gone.freed == {1}
    assert new.holders == {"new": {1}}
    # Planned one at a time against the defined guests, the newcomer would not fit.
    with pytest.raises(AllocationError, match="held: old 1"):
        allocate(FLAT8, [1], holdings, Request("new", 1))


def test_all_existing_guest_keeps_its_pins_and_is_unchanged():
    holdings = held(a=[5])
    a, b = allocate_all(FLAT8, range(2, 8), holdings, [Request("a", 1), Request("b", 1)])
    assert a.pins == ((0, 5),) and a.unchanged
    assert b.pins == ((0, 2),)


def test_all_emulator_cpus_in_the_pool_are_held_for_later_guests():
    a, b = allocate_all(FLAT8, range(2, 8), Holdings(), [Request("a", 1), Request("b", 1)],
                        emulators={"a": frozenset([3])})
    assert a.pins == ((0, 2),)
    assert b.pins == ((0, 4),)


def test_all_errors_name_the_guest():
    with pytest.raises(AllocationError, match="^guest 'b': NUMA node 1 has no CPU in the realtime pool 2"):
        allocate_all(SMT2x4, [2], Holdings(), [Request("b", 1, numa_node=1)])


def test_all_own_emulator_cpus_in_the_pool_are_not_given_to_its_vcpus():
    (a,) = allocate_all(FLAT8, range(0, 4), Holdings(), [Request("a", 2)], emulators={"a": frozenset([0])})
    assert a.pins == ((0, 1), (1, 2))
    assert a.reserved == {0, 1, 2}
    # Planned again once defined (emulator pin 0 in its XML), nothing moves.
    again = allocate(FLAT8, range(0, 4), holdings_from_domain_xml([domain_xml("a", [1, 2], emulator="0")]),
                     Request("a", 2))
    assert again.pins == a.pins and again.unchanged


def test_all_duplicate_names_are_refused():
    with pytest.raises(AllocationError, match="guest 'a' is listed more than once"):
        allocate_all(FLAT8, range(8), Holdings(), [Request("a", 1), Request("b", 1), Request("a", 2)])


def test_all_empty_list_plans_nothing():
    assert allocate_all(FLAT8, range(8), held(a=[1]), []) == []


@PROPERTY
@given(scenarios())
def test_all_equals_defining_one_by_one_or_refuses_the_whole_list(scenario):
    """Planning the list at once gives each guest the pins it gets when the guests before it are
    defined one by one; when any guest of the sequence would be refused, the whole list is."""
    topo, pool, requests = scenario
    plans = run_sequence(topo, pool, requests)[0]
    if len(plans) == len(requests):
        together = allocate_all(topo, pool, Holdings(), requests)
        assert [p.pins for p in together] == [plans[r.name].pins for r in requests]
        assert [p.siblings_reserved for p in together] == [plans[r.name].siblings_reserved for r in requests]
    else:
        first_refused = next(r.name for r in requests if r.name not in plans)
        with pytest.raises(AllocationError) as info:
            allocate_all(topo, pool, Holdings(), requests)
        assert "guest '%s'" % first_refused in str(info.value)


def test_all_iothreads_go_with_the_emulator_and_a_stale_iothread_pin_on_a_realtime_pcpu_is_freed():
    """An old definition pinned its I/O thread to realtime pCPU 4; replanned with emulator CPUs 0-1, the I/O
    threads go there (as realtime_domain pins them), so pCPU 4 is free for the next guest."""
    old = domain_xml("a", [2, 3], emulator="0-1").replace("</cputune>", "<iothreadpin iothread='1' cpuset='4'/></cputune>")
    books = holdings_from_domain_xml([old])
    assert books.get("a").iothreads == {4}
    a, b = allocate_all(FLAT8, range(2, 8), books, [Request("a", 2), Request("b", 1)], {"a": {0, 1}, "b": {0, 1}})
    assert a.pins == ((0, 2), (1, 3)) and b.pins == ((0, 4),)
    assert 4 not in a.reserved
