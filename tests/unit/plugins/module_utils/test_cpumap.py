# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure tests of the CPU map and the placement check."""

from __future__ import annotations

import copy
import html.parser

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpumap import (
    build_map,
    placement_problems,
    render_html,
    render_text,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import guest_list_problems

FACTS = {
    "cpus": {"online": "0-7"},
    "numa_nodes": [{"node": 0, "cpus": "0-3"}, {"node": 1, "cpus": "4-7"}],
    "smt_siblings": ["0,2", "1,3", "4,6", "5,7"],
    "isolated_cpus": "1-3,5-7",
    "guests": [{
        "name": "rt<1>", "pinning": {"vcpus": {"0": "2", "1": "3"}, "emulator": "0"},
        "threads": [
            {"tid": 11, "role": "vcpu", "id": 0, "affinity": "2", "policy": "fifo", "rt_priority": 5},
            {"tid": 12, "role": "vcpu", "id": 1, "affinity": "3", "policy": "fifo", "rt_priority": 5},
            {"tid": 10, "role": "emulator", "comm": "qemu", "affinity": "0"},
        ]}],
    "violations": [{"kind": "irq_affinity", "message": "irq 24 may be delivered to isolated CPUs 5", "cpus": "5"},
                   {"kind": "cmdline_mismatch", "message": "no CPUs here"}],
}


def _cpu(cpu_map, number):
    return next(c for n in cpu_map["nodes"] for core in n["cores"] for c in core["cpus"] if c["cpu"] == number)


def test_nodes_cores_and_marks():
    cpu_map = build_map(FACTS)
    assert [n["node"] for n in cpu_map["nodes"]] == [0, 1]
    assert [[c["cpu"] for c in core["cpus"]] for core in cpu_map["nodes"][0]["cores"]] == [[0, 2], [1, 3]]
    assert _cpu(cpu_map, 0)["kind"] == "housekeeping" and _cpu(cpu_map, 2)["kind"] == "isolated"
    assert [o["label"] for o in _cpu(cpu_map, 2)["occupants"]] == ["rt<1> vCPU0 fifo:5"]
    assert [o["label"] for o in _cpu(cpu_map, 0)["occupants"]] == ["rt<1> emu"]
    assert _cpu(cpu_map, 5)["violations"] == ["irq_affinity"]
    assert cpu_map["unplaced_violations"] == 1


def test_text_table():
    text = render_text(build_map(FACTS), title="CPU map of h1")
    assert text.startswith("CPU map of h1: online 0-7, housekeeping (H) 0,4, isolated (I) 1-3,5-7")
    assert "cpu 2    I    rt<1> vCPU0 fifo:5" in text
    assert "cpu 5    I !  -  [irq_affinity]" in text
    assert "violations: 2" in text and "! irq_affinity (1)" in text


def test_shared_pcpu_is_flagged():
    facts = copy.deepcopy(FACTS)
    facts["guests"].append({"name": "rt2", "pinning": {"vcpus": {"0": "2"}, "emulator": "0"}, "threads": []})
    cpu_map = build_map(facts)
    assert _cpu(cpu_map, 2)["shared"]
    assert "cpu 2    I  X" in render_text(cpu_map)


def test_stopped_guests_from_extra_pins():
    cpu_map = build_map(FACTS, extra_pins={"rt9": {"vcpupin": {"0": "6"}}})
    assert [o["label"] for o in _cpu(cpu_map, 6)["occupants"]] == ["rt9 vCPU0 (stopped)"]


def test_no_numa_facts_means_one_node():
    facts = dict(FACTS, numa_nodes=[], smt_siblings=[])
    cpu_map = build_map(facts)
    assert len(cpu_map["nodes"]) == 1 and len(cpu_map["nodes"][0]["cores"]) == 8


class _Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.external += [v for k, v in attrs if k in ("src", "href")]


def test_html_is_self_contained_and_escaped():
    page = render_html(build_map(FACTS), title="CPU map <h1>")
    checker = _Checker()
    checker.feed(page)
    assert "script" not in checker.tags and checker.external == []
    assert "rt&lt;1&gt; vCPU0 fifo:5" in page and "<title>CPU map &lt;h1&gt;</title>" in page
    assert "NUMA node 1" in page and "irq 24 may be delivered" in page


def test_placement_ok_and_wrong():
    good = [{"name": "rt<1>", "vcpupin": {"0": "2", "1": "3"}, "emulator_cpus": "0-1", "fifo_priority": 5}]
    assert placement_problems(FACTS, good) == []
    bad = [{"name": "rt<1>", "vcpupin": {"0": "3", "1": "3", "2": "4"}, "emulator_cpus": "1", "fifo_priority": 6},
           {"name": "gone", "vcpupin": {"0": "1"}, "emulator_cpus": "0", "fifo_priority": 1}]
    problems = placement_problems(FACTS, bad)
    assert any("vCPU 0 (tid 11) may run on CPUs 2, but is pinned to 3" in p for p in problems)
    assert any("runs fifo priority 5, expected fifo priority 6" in p for p in problems)
    assert any("no thread for vCPU 2" in p for p in problems)
    assert any("emulator thread 10 (qemu) may run on CPUs 0, outside the emulator CPUs 1" in p for p in problems)
    assert any("guest gone is not running" in p for p in problems)


@pytest.mark.parametrize("guests, message", [
    ([{"name": "a/b", "vcpus": 1, "memory_mib": 1}], "guest name 'a/b' is not accepted"),
    ([{"name": "a", "vcpus": 1, "memory_mib": 1, "fifo_priority": 0}], "fifo_priority 0 is out of range"),
    ([{"name": "a", "vcpus": 1, "memory_mib": 1}, {"name": "a", "state": "absent"}], "listed twice"),
    ([{"name": "a", "memory_mib": 1}], "give vcpus"),
    ([{"name": "a", "vcpus": 1, "memory_mib": 1, "cpus": 3}], "unknown keys cpus"),
    ([{"name": "a", "vcpus": 1, "memory_mib": 1, "state": "gone"}], "state 'gone'"),
])
def test_guest_list_problems(guests, message):
    assert any(message in p for p in guest_list_problems(guests))


def test_absent_guests_need_only_a_name():
    assert guest_list_problems([{"name": "a", "state": "absent"}]) == []
