# -*- coding: utf-8 -*-
from __future__ import annotations

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist as P
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import (
    RealtimeCpusError,
    choose,
    plan_argument_spec,
    plan_host,
    validate,
)
from tests.unit.fixtures.hosts.make_hosts import write


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


@pytest.fixture
def sysfs(tmp_path):
    cpu = tmp_path / "devices/system/cpu"
    write(str(cpu / "online"), "0-2")
    write(str(cpu / "present"), "0-3")
    for n in range(4):
        write(str(cpu / ("cpu%d/topology/thread_siblings_list" % n)), str(n))
    write(str(tmp_path / "devices/system/node/node0/cpulist"), "0-1")
    write(str(tmp_path / "devices/system/node/node1/cpulist"), "2-3")
    return str(tmp_path)


def plan(sysfs, **args):
    """plan_host with the options as AnsibleModule hands them over (defaults and suboptions filled in)."""
    params = {key: spec.get("default") for key, spec in plan_argument_spec().items()}
    params.update(args, sys_root=sysfs)
    params["partitions"] = [dict({"cpus": None, "exclusive": None}, **p) for p in params["partitions"]]
    result, warnings = plan_host(params)
    return dict(result, warnings=warnings)


def test_plan_host_automatic(sysfs):
    result = plan(sysfs, partitions=[{"name": "/rt"}])
    assert result["realtime_cpus"] == "1" and result["housekeeping_cpus"] == "0,2"
    # Shared emulator CPUs: the partition holds them, so it cannot be exclusive, and the module says so.
    assert result["partitions"] == [{"name": "/rt", "cpus": "0-2", "exclusive": False}]
    assert (result["machine_cpus"], result["emulator_cpus"], result["emulator_mode"]) == ("0,2", "0,2", "shared")
    assert any("cannot be exclusive" in w for w in result.get("warnings", []))
    assert result["changed"] is False


def test_plan_host_dedicated_emulator_cpus(sysfs):
    result = plan(sysfs, cpus="1", emulator_cpus="2", partitions=[{"name": "/rt"}])
    assert result["partitions"] == [{"name": "/rt", "cpus": "1-2", "exclusive": True}]
    assert (result["machine_cpus"], result["emulator_cpus"], result["emulator_mode"]) == ("0", "2", "dedicated")
    assert not any("cannot be exclusive" in w for w in result.get("warnings", []))


def test_plan_host_below_machine_when_not_narrowed(sysfs):
    result = plan(sysfs, cpus="1", narrow_machine=False, partitions=[{"name": "/machine/rt"}])
    assert result["partitions"] == [{"name": "/machine/rt", "cpus": "0-2", "exclusive": False}], result


@pytest.mark.parametrize("args, match", [
    ({"cpus": "1,3"}, "offline"),
    ({"cpus": "2"}, "NUMA node 1"),
    ({"cpus": "1", "partitions": [{"name": "/rt", "cpus": "0"}]}, "holds none of the realtime CPUs"),
    ({"cpus": "1", "partitions": [{"name": "/rt", "cpus": "1,3"}]}, "not online"),
    ({"cpus": "1", "partitions": [{"name": "rt"}]}, "not absolute"),
    ({"cpus": "1", "partitions": [{"name": "/machine/rt"}]}, "put it beside /machine (e.g. /rt)"),
    ({"cpus": "1", "partitions": [{"name": "/rt", "exclusive": True}]}, "cannot be exclusive"),
    ({"cpus": "1", "emulator_cpus": "1", "partitions": [{"name": "/rt"}]}, "realtime CPUs too"),
    ({"cpus": "1", "emulator_cpus": "0,2", "partitions": [{"name": "/rt"}]}, "leaves no housekeeping CPU"),
    ({"cpus": "1", "emulator_cpus": "2", "partitions": [{"name": "/rt"}, {"name": "/rt2"}]},
     "share CPUs 1-2; give each its own cpus"),
    ({"cpus": "1-"}, "cpus"),
])
def test_plan_host_bad_input(sysfs, args, match):
    with pytest.raises((RealtimeCpusError, CpuListError)) as raised:
        plan(sysfs, **args)
    assert match in str(raised.value)
