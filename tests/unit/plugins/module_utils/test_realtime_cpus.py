# -*- coding: utf-8 -*-
from __future__ import annotations

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist as P
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import RealtimeCpusError, choose, validate


def smt(pairs):
    siblings = {}
    for pair in pairs:
        for cpu in pair:
            siblings[cpu] = frozenset(pair)
    return siblings


def test_two_cpus_one_node_picks_cpu1():
    rt, hk = choose(P("0-1"), {0: P("0-1")}, {})
    assert (rt, hk) == (P("1"), P("0"))


def test_every_node_keeps_a_whole_core():
    nodes = {0: P("0-3,8-11"), 1: P("4-7,12-15")}
    siblings = smt([(i, i + 8) for i in range(8)])
    rt, hk = choose(P("0-15"), nodes, siblings)
    assert hk == P("0,8,4,12")
    assert rt == P("1-3,5-7,9-11,13-15")
    assert validate(rt, P("0-15"), nodes, siblings) == []


def test_no_nodes_means_one_node():
    rt, hk = choose(P("0-3"), {}, {})
    assert hk == P("0") and rt == P("1-3")


def test_deterministic():
    args = (P("0-7"), {0: P("0-7")}, smt([(0, 4), (1, 5), (2, 6), (3, 7)]))
    assert choose(*args) == choose(*args)


def test_single_cpu_host_has_nothing_to_give():
    with pytest.raises(RealtimeCpusError, match="no CPU is left"):
        choose(P("0"), {0: P("0")}, {})


@pytest.mark.parametrize("rt, match", [
    ("1,3", "CPU\\(s\\) 3 are offline"),
    ("1,9", "do not exist"),
    ("0-1", "every online CPU of NUMA node 0"),
    ("2-3", "every online CPU of NUMA node 1"),
    ("", "empty"),
])
def test_bad_sets(rt, match):
    with pytest.raises(RealtimeCpusError, match=match):
        validate(P(rt), P("0-2"), {0: P("0-1"), 1: P("2-3")}, {}, present=P("0-3"))


def test_no_housekeeping_left_without_numa():
    with pytest.raises(RealtimeCpusError, match="leaves no housekeeping CPU"):
        validate(P("0-1"), P("0-1"), {}, {})


def test_split_core_warns():
    warnings = validate(P("1"), P("0-3"), {0: P("0-3")}, smt([(0, 2), (1, 3)]))
    assert len(warnings) == 1 and "split" in warnings[0]
