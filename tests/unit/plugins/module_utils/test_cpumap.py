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
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from tests.unit.fixtures.hosts import make_hosts

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


# ------------------------------------------------------------------- roles on a 2-node SMT host (fake trees)

STOPPED_XML = ("<domain type='kvm'><name>rt2</name><vcpu placement='static'>1</vcpu>"
               "<cputune><vcpupin vcpu='0' cpuset='6'/><emulatorpin cpuset='1'/></cputune>"
               "<metadata><rtvirt:pcpu xmlns:rtvirt='urn:rtvirt:kvm:pcpu:1' smt_policy='isolate' reserved='7'/>"
               "</metadata></domain>")


@pytest.fixture(scope="module")
def two_node_facts(tmp_path_factory):
    """gather() on the recorded v1-isolcpus host (2 nodes x 2 cores x 2 threads, siblings 0,4 1,5 2,6 3,7;
    rt1 running with vCPUs on 2 and 3), with rt2 defined but stopped: vCPU 0 on 6, sibling 7 reserved."""
    base = tmp_path_factory.mktemp("hosts")
    make_hosts.v1_isolcpus(base)
    root = base / "v1-isolcpus"
    (base / "libvirt" / "qemu").mkdir(parents=True)
    (base / "libvirt" / "qemu" / "rt2.xml").write_text(STOPPED_XML)
    return gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"), run_root=str(root / "run/libvirt/qemu"),
                  libvirt_config_dir=str(base / "libvirt"))


def _roles(cpu_map):
    return {c["cpu"]: c["role"] for n in cpu_map["nodes"] for core in n["cores"] for c in core["cpus"]}


def test_roles_from_the_facts_and_the_stopped_definition(two_node_facts):
    cpu_map = build_map(two_node_facts, emulator_cpus="1,5")
    assert _roles(cpu_map) == {0: "housekeeping", 4: "housekeeping", 1: "emulator", 5: "emulator",
                               2: "vcpu", 3: "vcpu", 6: "vcpu", 7: "reserved"}
    assert cpu_map["summary"]["roles"] == {"housekeeping": "0,4", "emulator": "1,5", "vcpu": "2-3,6",
                                           "reserved": "7", "free": ""}
    assert cpu_map["summary"]["guests"] == ["rt1", "rt2"] and cpu_map["summary"]["stopped"] == ["rt2"]
    six, seven = _cpu(cpu_map, 6), _cpu(cpu_map, 7)
    assert (six["guests"], six["node"], six["siblings"]) == (["rt2"], 1, [2])
    assert [o["label"] for o in six["occupants"]] == ["rt2 vCPU0 (stopped)"]
    assert seven["reserved_for"] == ["rt2"] and seven["occupants"] == []
    assert [o["label"] for o in _cpu(cpu_map, 1)["occupants"]] == ["rt1 emu", "rt2 emu (stopped)"]


def test_without_the_stopped_guest_its_cpus_are_free(two_node_facts):
    facts = dict(two_node_facts, domains=[d for d in two_node_facts["domains"] if d["name"] != "rt2"])
    roles = _roles(build_map(facts))
    assert (roles[6], roles[7]) == ("free", "free")
    # No emulator CPUs given: 1 and 5 are housekeeping like 0 and 4.
    assert {roles[c] for c in (0, 1, 4, 5)} == {"housekeeping"}


def test_emulators_sharing_every_housekeeping_cpu_leave_them_housekeeping(two_node_facts):
    # guest_plan's emulator CPUs without host_prep_emulator_cpus are the housekeeping CPUs themselves.
    assert _roles(build_map(two_node_facts, emulator_cpus="0-1,4-5"))[1] == "housekeeping"
    # An isolated CPU given as emulator CPU is not taken from the guests.
    assert _roles(build_map(two_node_facts, emulator_cpus="1,6"))[6] == "vcpu"


def test_unreadable_definition_is_left_out(two_node_facts):
    facts = dict(two_node_facts, domains=[{"name": "bad", "xml": "<domain><vcpu>x</vcpu></domain>"}])
    assert build_map(facts)["summary"]["guests"] == ["rt1"]


def test_extra_pins_reserve_and_pin_emulators(two_node_facts):
    facts = dict(two_node_facts, domains=[])
    cpu_map = build_map(facts, extra_pins={"plan": {"vcpupin": {"0": "6"}, "emulator_cpus": "4", "reserved": "7"}})
    assert _roles(cpu_map)[7] == "reserved"
    assert [o["label"] for o in _cpu(cpu_map, 4)["occupants"]] == ["plan emu (stopped)"]


def test_text_marks_emulator_and_reserved_cpus(two_node_facts):
    text = render_text(build_map(two_node_facts, emulator_cpus="1,5"))
    assert ", of them emulator (E) 1,5;" in text.splitlines()[0]
    assert "cpu 5    E    -" in text
    assert "cpu 7    I !  reserved for rt2  [" in text


class _Tiles(html.parser.HTMLParser):
    """The CPU tiles of the page: {cpu: (attributes, text inside)}, and the legend's guest entries."""

    def __init__(self):
        super().__init__()
        self.tiles, self.legend, self._open, self._depth = {}, [], None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "data-cpu" in attrs:
            self._open, self._depth = int(attrs["data-cpu"]), 0
            self.tiles[self._open] = (attrs, [])
        elif self._open is not None and tag == "div":
            self._depth += 1
        if tag == "li" and "data-guest" in attrs:
            self.legend.append((attrs["data-guest"], attrs.get("style")))

    def handle_endtag(self, tag):
        if self._open is not None and tag == "div":
            if self._depth == 0:
                self._open = None
            else:
                self._depth -= 1

    def handle_data(self, data):
        if self._open is not None:
            self.tiles[self._open][1].append(data)


def test_html_tiles_say_role_guest_node_and_sibling(two_node_facts):
    page = render_html(build_map(two_node_facts, emulator_cpus="1,5"), title="CPU map of h")
    parser = _Tiles()
    parser.feed(page)
    assert sorted(parser.tiles) == list(range(8))
    got = {cpu: (a["data-role"], a["data-node"], a["data-siblings"], a["data-guests"], a["data-vcpus"])
           for cpu, (a, _text) in parser.tiles.items()}
    assert got == {
        0: ("housekeeping", "0", "0,4", "", ""), 4: ("housekeeping", "0", "0,4", "", ""),
        1: ("emulator", "0", "1,5", "", ""), 5: ("emulator", "0", "1,5", "", ""),
        2: ("vcpu", "1", "2,6", "rt1", "rt1:0"), 6: ("vcpu", "1", "2,6", "rt2", "rt2:0"),
        3: ("vcpu", "1", "3,7", "rt1", "rt1:1"), 7: ("reserved", "1", "3,7", "", ""),
    }
    text = {cpu: " ".join("".join(parts).split()) for cpu, (_a, parts) in parser.tiles.items()}
    assert text[2].startswith("CPU 2realtimert1 vCPU 0SMT sibling of CPU 6")
    assert "idle for rt2" in text[7] and "QEMU emulators" in text[5] and "host threads, IRQs" in text[0]
    # Each guest has its own colour in the legend, and its realtime CPUs wear it.
    colours = dict(parser.legend)
    assert len(set(colours.values())) == 2
    assert parser.tiles[2][0]["style"] == colours["rt1"] and parser.tiles[6][0]["style"] == colours["rt2"]
    assert "stopped" in parser.tiles[6][0]["class"].split() and "stopped" not in parser.tiles[2][0]["class"]
    assert "bad" in parser.tiles[3][0]["class"].split()   # pinning drift of rt1 vCPU 1
    assert "pinning_<wbr>drift" in page


def test_filters_pass_the_emulator_cpus_on(two_node_facts):
    from ansible_collections.rtvirt.kvm.plugins.filter.realtime import FilterModule
    filters = FilterModule().filters()
    assert 'data-cpu="5" data-role="emulator"' in filters["cpu_map_html"](two_node_facts, emulator_cpus="1,5")
    assert 'data-cpu="5" data-role="housekeeping"' in filters["cpu_map_html"](two_node_facts)
    assert "cpu 1    E" in filters["cpu_map_text"](two_node_facts, None, "m", "1,5")


def test_io_threads_belong_on_the_emulator_cpus():
    facts = copy.deepcopy(FACTS)
    facts["guests"][0]["threads"].append({"tid": 13, "role": "iothread", "id": 1, "comm": "IO iothread1",
                                          "affinity": "0"})
    want = {"name": "rt<1>", "vcpupin": {"0": "2", "1": "3"}, "emulator_cpus": "0", "fifo_priority": 5,
            "iothreads": 1}
    assert placement_problems(facts, [want]) == []
    facts["guests"][0]["threads"][-1]["affinity"] = "0,3"
    assert placement_problems(facts, [want]) == [
        "guest rt<1> I/O thread 13 (IO iothread1) may run on CPUs 0,3, outside the emulator CPUs 0"]
    assert placement_problems(facts, [dict(want, iothreads=2)])[-1] == "guest rt<1> runs 1 I/O threads, expected 2"
