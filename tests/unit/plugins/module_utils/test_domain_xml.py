# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure tests of the realtime guest's domain XML rendering and owned-part comparison."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    DomainSpecError,
    allocation_requests,
    check_name,
    differences,
    owned_view,
    render,
    view_text,
)

META = '<rtvirt:pcpu xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1" smt_policy="isolate" reserved="10"/>'
SPEC = DomainSpec(name="rt1", vcpus=2, memory_mib=256, vcpupin={"0": "2", "1": "3"}, emulator_cpus="0-1",
                  fifo_priority=10, partition="/machine/rt", numa_nodes=(0,), metadata=META)

# What libvirt 9.0 hands back for a define of SPEC's rendering: uuid, machine type, devices added,
# attribute quoting and order changed, and a redundant but equal nodeset spelling.
LIBVIRT_BACK = """<domain type='kvm'>
  <name>rt1</name>
  <uuid>2b7d4cb4-95c6-4a95-80ba-80db8bbe41ec</uuid>
  <metadata xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1">
    <rtvirt:pcpu reserved="10" smt_policy="isolate"/>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <cputune>
    <vcpupin vcpu='0' cpuset='2'/>
    <vcpupin vcpu='1' cpuset='3'/>
    <emulatorpin cpuset='0-1'/>
    <vcpusched vcpus='0-1' scheduler='fifo' priority='10'/>
  </cputune>
  <numatune><memory mode='strict' nodeset='0'/></numatune>
  <resource><partition>/machine/rt</partition></resource>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>
</domain>"""


def test_default_render_is_a_tiny_diskless_guest():
    root = ET.fromstring(render(SPEC))
    assert root.get("type") == "kvm"
    assert root.find("devices/disk") is None and root.find("devices/interface") is None
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find("vcpu").attrib == {"placement": "static"} and root.findtext("vcpu") == "2"
    pins = {p.get("vcpu"): p.get("cpuset") for p in root.findall("cputune/vcpupin")}
    assert pins == {"0": "2", "1": "3"}
    assert root.find("cputune/emulatorpin").get("cpuset") == "0-1"
    assert root.find("cputune/vcpusched").attrib == {"vcpus": "0-1", "scheduler": "fifo", "priority": "10"}
    assert root.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "0"}
    assert root.findtext("resource/partition") == "/machine/rt"
    assert root.find("metadata/{urn:rtvirt:kvm:pcpu:1}pcpu").get("reserved") == "10"


def test_what_libvirt_returns_compares_equal():
    assert differences(LIBVIRT_BACK, render(SPEC)) == []


def test_rendering_onto_the_current_definition_keeps_everything_else():
    rendered = render(SPEC, LIBVIRT_BACK)
    root = ET.fromstring(rendered)
    assert root.findtext("uuid") == "2b7d4cb4-95c6-4a95-80ba-80db8bbe41ec"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert differences(LIBVIRT_BACK, rendered) == []


def test_rendering_is_a_fixed_point():
    once = render(SPEC)
    assert render(SPEC, once) == once


@pytest.mark.parametrize("change, keys", [
    (dict(vcpupin={"0": "2", "1": "4"}), ["vcpupin"]),
    (dict(fifo_priority=20), ["vcpusched"]),
    (dict(emulator_cpus="0"), ["emulatorpin"]),
    (dict(memory_mib=512), ["memory_kib"]),
    (dict(partition="/machine/rt2"), ["partition"]),
    (dict(numa_nodes=()), ["numatune_memory"]),
    (dict(metadata=""), ["rtvirt_pcpu"]),
    (dict(vcpus=3, vcpupin={"0": "2", "1": "3", "2": "4"}), ["vcpupin", "vcpus", "vcpusched"]),
])
def test_a_change_in_an_owned_part_is_seen(change, keys):
    assert differences(LIBVIRT_BACK, render(dataclasses.replace(SPEC, **change))) == keys


def test_shrinking_removes_old_pins_and_sched():
    base = render(dataclasses.replace(SPEC, vcpus=3, vcpupin={"0": "2", "1": "3", "2": "4"}))
    root = ET.fromstring(render(SPEC, base))
    assert len(root.findall("cputune/vcpupin")) == 2
    assert [s.get("vcpus") for s in root.findall("cputune/vcpusched")] == ["0-1"]


def test_other_cputune_children_and_a_base_are_kept():
    base = ("<domain type='qemu'><name>old</name><vcpu cpuset='0-3' current='1'>4</vcpu>"
            "<cputune><iothreadpin iothread='1' cpuset='0'/><vcpusched vcpus='0' scheduler='rr' priority='1'/>"
            "</cputune><devices><disk type='file'/></devices></domain>")
    root = ET.fromstring(render(SPEC, base))
    assert root.findtext("name") == "rt1" and root.get("type") == "qemu"
    assert root.find("vcpu").attrib == {"placement": "static"}
    assert root.find("cputune/iothreadpin") is not None
    assert [s.get("scheduler") for s in root.findall("cputune/vcpusched")] == ["fifo"]
    assert root.find("devices/disk") is not None


def test_new_guest_differs_in_everything():
    assert "vcpupin" in differences(None, render(SPEC))


@pytest.mark.parametrize("name", ["rt-1", "a", "guest_1.test+x:y", "A" * 64])
def test_good_names(name):
    check_name(name)


@pytest.mark.parametrize("name", ["", "a/b", "a\nb", "-x", ".hidden", "has space", "A" * 65, "ü"])
def test_bad_names_are_refused_clearly(name):
    with pytest.raises(DomainSpecError, match="guest name"):
        check_name(name)


@pytest.mark.parametrize("change, message", [
    (dict(fifo_priority=0), "fifo_priority 0 is out of range"),
    (dict(fifo_priority=100), "out of range: SCHED_FIFO priorities are 1-99"),
    (dict(vcpus=0), "vcpus must be at least 1"),
    (dict(memory_mib=0), "memory_mib must be at least 1"),
    (dict(vcpupin={"0": "2"}), "must pin exactly vCPUs 0-1"),
    (dict(vcpupin={"0": "2", "x": "3"}), "not a vCPU number"),
    (dict(vcpupin={"0": "2", "1": "3-"}), "vcpupin 1"),
    (dict(emulator_cpus=""), "emulator_cpus is empty"),
    (dict(partition="machine/rt"), "absolute path"),
    (dict(metadata="<x/>"), "rtvirt:pcpu"),
    (dict(metadata="<x"), "not well-formed"),
])
def test_bad_specs_fail_with_the_value(change, message):
    with pytest.raises(DomainSpecError, match=message.replace("(", r"\(")):
        render(dataclasses.replace(SPEC, **change))


def test_bad_base_xml():
    with pytest.raises(DomainSpecError, match="base_xml"):
        render(SPEC, "<network/>")


def test_view_text_is_stable_and_readable():
    text = view_text(owned_view(LIBVIRT_BACK))
    assert "vcpupin: {0=2, 1=3}" in text
    assert text == view_text(owned_view(render(SPEC)))


def test_allocation_requests_keep_the_allocation_keys_and_fill_the_role_defaults():
    guests = [
        {"name": "a", "vcpus": 2, "memory_mib": 256, "fifo_priority": 9, "partition": "/rt", "base_xml": "<x/>"},
        {"name": "b", "pcpus": [3, "4-5"], "smt_policy": "isolate", "numa_node": 0, "emulator_cpus": "1"},
        {"name": "c", "state": "absent", "vcpus": 4, "smt_policy": "isolate"},
        {"name": "d", "vcpus": 1, "numa_node": None},
    ]
    assert allocation_requests(guests, "prefer", "0") == [
        {"name": "a", "state": "present", "vcpus": 2, "smt_policy": "prefer", "emulator_cpus": "0"},
        {"name": "b", "state": "present", "pcpus": ["3", "4-5"], "smt_policy": "isolate", "numa_node": 0,
         "emulator_cpus": "1"},
        {"name": "c", "state": "absent"},
        {"name": "d", "state": "present", "vcpus": 1, "smt_policy": "prefer", "emulator_cpus": "0"},
    ]
