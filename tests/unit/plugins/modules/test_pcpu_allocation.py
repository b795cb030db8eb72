# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pcpu_allocation module through main(): fake sysfs under tmp_path, domain XML strings."""

from __future__ import annotations

import sys
import types

import pytest

from _module_runner import run_module

from ansible_collections.rtvirt.kvm.plugins.modules import pcpu_allocation


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def sysfs_smt(tmp_path):
    """2 NUMA nodes x 4 cores x 2 threads; CPU t*8+c is thread t of core c."""
    root = tmp_path / "sys"
    _write(root / "devices/system/cpu/online", "0-15")
    for cpu in range(16):
        topo = root / ("devices/system/cpu/cpu%d/topology" % cpu)
        _write(topo / "thread_siblings_list", "%d,%d" % (cpu % 8, cpu % 8 + 8))
        _write(topo / "core_id", str(cpu % 4))
        _write(topo / "physical_package_id", str((cpu % 8) // 4))
    _write(root / "devices/system/node/node0/cpulist", "0-3,8-11")
    _write(root / "devices/system/node/node1/cpulist", "4-7,12-15")
    return str(root)


@pytest.fixture
def sysfs_flat(tmp_path):
    """1 node, 8 CPUs, no SMT."""
    root = tmp_path / "flat"
    _write(root / "devices/system/cpu/online", "0-7")
    for cpu in range(8):
        _write(root / ("devices/system/cpu/cpu%d/topology/thread_siblings_list" % cpu), str(cpu))
    _write(root / "devices/system/node/node0/cpulist", "0-7")
    return str(root)


def domain(name, pins, metadata="", emulator="0-1"):
    tune = "".join("<vcpupin vcpu='%s' cpuset='%s'/>" % (v, c) for v, c in pins.items())
    if emulator:
        tune += "<emulatorpin cpuset='%s'/>" % emulator
    return ("<domain type='kvm'><name>%s</name><metadata>%s</metadata><vcpu placement='static'>%d</vcpu>"
            "<cputune>%s</cputune></domain>" % (name, metadata, len(pins), tune))


def args(sysfs, **kwargs):
    base = dict(pool="2-7", sys_root=sysfs, domains_xml=[])
    base.update(kwargs)
    return base


def test_fresh_guest(sysfs_flat):
    others = [domain("rt0", {0: "2", 1: "3"})]
    result = run_module(pcpu_allocation, args(sysfs_flat, name="rt1", vcpus=2, domains_xml=others))
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["pins"] == [{"vcpu": 0, "pcpu": 4}, {"vcpu": 1, "pcpu": 5}]
    assert result["vcpupin"] == {"0": "4", "1": "5"}
    assert result["cpus"] == "4-5"
    assert result["numa_nodes"] == [0]
    assert result["free"] == "6-7"
    assert result["holders"] == {"rt0": "2-3", "rt1": "4-5"}
    assert result["unchanged"] is False
    assert 'smt_policy="prefer"' in result["metadata"]


def test_second_run_with_own_xml_is_idempotent(sysfs_smt):
    first = run_module(pcpu_allocation, args(sysfs_smt, name="rt1", vcpus=3, smt_policy="isolate", pool="0-15"))
    assert not first.get("failed"), first
    assert first["cpus"] == "0-2" and first["siblings_reserved"] == "8-10"
    own = domain("rt1", first["vcpupin"], first["metadata"], emulator=None)
    second = run_module(pcpu_allocation, args(sysfs_smt, name="rt1", vcpus=3, smt_policy="isolate",
                                              pool="0-15", domains_xml=[own]))
    assert second["pins"] == first["pins"]
    assert second["unchanged"] is True and second["changed"] is False
    # Another guest then never lands on rt1's reserved siblings.
    other = run_module(pcpu_allocation, args(sysfs_smt, name="rt2", vcpus=2, pool="0-15", domains_xml=[own]))
    assert other["cpus"] == "3,11"
    assert other["holders"]["rt1"] == "0-2,8-10"


def test_sysfs_root_is_an_alias_of_sys_root(sysfs_flat):
    new = run_module(pcpu_allocation, args(sysfs_flat, name="g", vcpus=2))
    old = dict(args(sysfs_flat, name="g", vcpus=2))
    old["sysfs_root"] = old.pop("sys_root")
    result = run_module(pcpu_allocation, old)
    assert not result.get("failed"), result
    assert result["pins"] == new["pins"] and not result.get("warnings")


def test_check_mode_gives_the_same_plan(sysfs_flat):
    normal = run_module(pcpu_allocation, args(sysfs_flat, name="g", vcpus=3))
    checked = run_module(pcpu_allocation, args(sysfs_flat, name="g", vcpus=3), check_mode=True)
    assert checked["pins"] == normal["pins"] and checked["changed"] is False


def test_explicit_pcpus_as_list_keep_their_order(sysfs_flat):
    result = run_module(pcpu_allocation, args(sysfs_flat, name="g", pcpus=["7", "3-4"]))
    assert result["pins"] == [{"vcpu": 0, "pcpu": 7}, {"vcpu": 1, "pcpu": 3}, {"vcpu": 2, "pcpu": 4}]


def test_absent_reports_what_is_freed(sysfs_flat):
    xmls = [domain("rt0", {0: "2", 1: "3"}), domain("rt1", {0: "4"})]
    result = run_module(pcpu_allocation, args(sysfs_flat, name="rt0", state="absent", domains_xml=xmls))
    assert result["pins"] == [] and result["freed"] == "2-3"
    assert result["free"] == "2-3,5-7" and result["holders"] == {"rt1": "4"}
    assert result["metadata"] == ""


def test_spanning_warns(sysfs_smt):
    result = run_module(pcpu_allocation, args(sysfs_smt, name="big", vcpus=10, pool="0-15"))
    assert result["spans_nodes"] is True
    assert result["warnings"] == ["guest 'big' spans NUMA nodes 0, 1: memory and caches are not all local"]


@pytest.mark.parametrize("extra, message", [
    (dict(vcpus=5), "guest 'rt2' needs 5 pCPUs but only 4 are free in the realtime pool 2-7 (node0: 4-7); "
                    "held: rt0 2-3"),
    (dict(pcpus=["8"]), "pcpus 8 for guest 'rt2' are outside the realtime pool 2-7"),
    (dict(pcpus=["3", "4"]), "pcpus 3 for guest 'rt2' are held by another guest: rt0 (3)"),
    (dict(vcpus=2, smt_policy="require"), "this host has no SMT"),
    (dict(vcpus=2, pool="2-x"), "pool '2-x'"),
    (dict(), "state is present but any of the following are missing: vcpus, pcpus"),
    (dict(vcpus=1, smt_policy="sometimes"), "value of smt_policy must be one of"),
    (dict(vcpus=1, numa_node=4), "numa_node 4 does not exist"),
])
def test_bad_input_fails_with_a_clear_message(sysfs_flat, extra, message):
    params = args(sysfs_flat, name="rt2", domains_xml=[domain("rt0", {0: "2", 1: "3"})])
    params.update(extra)
    result = run_module(pcpu_allocation, params)
    assert result.get("failed") is True
    assert message in result["msg"]


def test_own_emulator_pin_is_not_reused_for_vcpus(sysfs_flat):
    own = domain("g", {0: "2", 1: "3"}, emulator="3")
    result = run_module(pcpu_allocation, args(sysfs_flat, name="g", vcpus=2, domains_xml=[own]))
    assert result["pins"] == [{"vcpu": 0, "pcpu": 2}, {"vcpu": 1, "pcpu": 4}]
    assert result["reserved"] == "2-4" and result["unchanged"] is False


def test_bad_domain_xml_fails(sysfs_flat):
    result = run_module(pcpu_allocation, args(sysfs_flat, name="g", vcpus=1, domains_xml=["<domain>"]))
    assert result["failed"] and "not well-formed" in result["msg"]


def test_missing_sysfs_fails(tmp_path):
    result = run_module(pcpu_allocation, args(str(tmp_path / "none"), name="g", vcpus=1))
    assert result["failed"] and "cannot read the online CPUs" in result["msg"]


class _FakeLibvirtError(Exception):
    pass


def _fake_libvirt(xmls, fail_open=False):
    module = types.ModuleType("libvirt")
    module.libvirtError = _FakeLibvirtError
    module.VIR_DOMAIN_XML_INACTIVE = 2
    calls = []

    class Dom:
        def __init__(self, text):
            self.text = text

        def name(self):
            return self.text.split("<name>", 1)[1].split("</name>", 1)[0]

        def XMLDesc(self, flags):
            calls.append(flags)
            return self.text

    class Conn:
        def listAllDomains(self, flags=0):
            return [Dom(x) for x in xmls]

        def close(self):
            calls.append("close")

    def open_(uri):
        calls.append(uri)
        if fail_open:
            raise _FakeLibvirtError("Failed to connect socket")
        return Conn()

    module.open = open_
    return module, calls


def test_reads_domains_from_libvirt_when_not_given(sysfs_flat, monkeypatch):
    fake, calls = _fake_libvirt([domain("rt0", {0: "2"})])
    monkeypatch.setitem(sys.modules, "libvirt", fake)
    params = args(sysfs_flat, name="g", vcpus=1)
    del params["domains_xml"]
    result = run_module(pcpu_allocation, params)
    assert result["cpus"] == "3"
    assert calls == ["qemu:///system", 2, "close"]


def test_libvirt_unreachable_fails_clearly(sysfs_flat, monkeypatch):
    fake, calls = _fake_libvirt([], fail_open=True)
    monkeypatch.setitem(sys.modules, "libvirt", fake)
    params = args(sysfs_flat, name="g", vcpus=1)
    del params["domains_xml"]
    result = run_module(pcpu_allocation, params)
    assert result["failed"] and "cannot connect to qemu:///system" in result["msg"]
    assert "domains_xml" in result["msg"]


def test_libvirt_missing_fails_clearly(sysfs_flat, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import raises ImportError
    params = args(sysfs_flat, name="g", vcpus=1)
    del params["domains_xml"]
    result = run_module(pcpu_allocation, params)
    assert result["failed"] and "libvirt-python" in result["msg"]


# guests: a whole list planned at once


def test_guests_are_planned_in_order_each_seeing_the_earlier_ones(sysfs_flat):
    others = [domain("rt0", {0: "2"}), domain("old", {0: "3"})]
    result = run_module(pcpu_allocation, args(sysfs_flat, domains_xml=others, smt_policy="isolate", guests=[
        dict(name="a", vcpus=2),
        dict(name="old", state="absent"),
        dict(name="b", pcpus=["7"], smt_policy="prefer"),
        dict(name="c", vcpus=1, emulator_cpus="0"),
    ]))
    assert not result.get("failed"), result
    assert result["changed"] is False
    plans = {p["name"]: p for p in result["plans"]}
    assert [p["name"] for p in result["plans"]] == ["a", "old", "b", "c"]
    assert plans["old"]["state"] == "absent" and plans["old"]["freed"] == "3"
    assert plans["a"]["vcpupin"] == {"0": "3", "1": "4"}  # old is removed first: its pCPU 3 is free
    assert 'smt_policy="isolate"' in plans["a"]["metadata"]
    assert plans["b"]["vcpupin"] == {"0": "7"} and 'smt_policy="prefer"' in plans["b"]["metadata"]
    assert plans["c"]["vcpupin"] == {"0": "5"}
    assert plans["c"]["holders"] == {"rt0": "2", "a": "3-4", "b": "7", "c": "5"}
    # The top-level keys describe the last guest of the list.
    assert result["vcpupin"] == {"0": "5"} and result["free"] == "6"


@pytest.mark.parametrize("guests, message", [
    ([dict(name="a", vcpus=3), dict(name="b", vcpus=3)],
     "guest 'b' needs 3 pCPUs but only 2 are free in the realtime pool 2-7 (node0: 6-7); held: a 3-5, rt0 2 "
     "(planned after a of the same list"),
    ([dict(name="a", pcpus=["4"]), dict(name="b", pcpus=["4"])],
     "pcpus 4 for guest 'b' are held by another guest: a (4)"),
    ([dict(name="a", vcpus=1), dict(name="b")], "guest 'b': give vcpus or pcpus"),
    ([dict(name="a", vcpus=1), dict(name="a", vcpus=2)], "guest 'a' is listed more than once"),
])
def test_guests_bad_entry_anywhere_fails_the_whole_list(sysfs_flat, guests, message):
    result = run_module(pcpu_allocation, args(sysfs_flat, domains_xml=[domain("rt0", {0: "2"})], guests=guests))
    assert result.get("failed") is True, result
    assert message in result["msg"]
    assert "plans" not in result


def test_guests_and_name_are_exclusive(sysfs_flat):
    result = run_module(pcpu_allocation, args(sysfs_flat, name="a", vcpus=1, guests=[dict(name="b", vcpus=1)]))
    assert result.get("failed") is True and "mutually exclusive" in result["msg"]


def test_neither_guests_nor_name_fails(sysfs_flat):
    result = run_module(pcpu_allocation, args(sysfs_flat, vcpus=1))
    assert result.get("failed") is True and "one of the following is required: name, guests" in result["msg"]


def test_empty_guest_list_plans_nothing(sysfs_flat):
    result = run_module(pcpu_allocation, args(sysfs_flat, domains_xml=[domain("rt0", {0: "2"})], guests=[]))
    assert not result.get("failed"), result
    assert result["plans"] == [] and result["free"] == "3-7" and result["holders"] == {"rt0": "2"}
