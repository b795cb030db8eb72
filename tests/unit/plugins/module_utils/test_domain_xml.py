# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure tests of the realtime guest's domain XML rendering and owned-part comparison."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    DomainSpecError,
    allocation_requests,
    base_digest,
    check_name,
    differences,
    owned_view,
    plan_definition,
    recorded_digest,
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
    <vcpusched vcpus='0' scheduler='fifo' priority='10'/>
    <vcpusched vcpus='1' scheduler='fifo' priority='10'/>
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
    # libvirt 9.0 stores our one <vcpusched vcpus='0-1'> as one element per vCPU (virsh dumpxml on this machine).
    assert differences(LIBVIRT_BACK, render(SPEC)) == []
    assert differences(render(SPEC), LIBVIRT_BACK) == []


def test_vcpusched_is_compared_per_vcpu():
    grouped = LIBVIRT_BACK.replace("<vcpusched vcpus='0' scheduler='fifo' priority='10'/>", "").replace(
        "vcpus='1' scheduler", "vcpus='0-1' scheduler")
    assert owned_view(grouped)["vcpusched"] == owned_view(LIBVIRT_BACK)["vcpusched"] == {
        "0": {"scheduler": "fifo", "priority": 10}, "1": {"scheduler": "fifo", "priority": 10}}
    one_differs = LIBVIRT_BACK.replace("vcpus='1' scheduler='fifo' priority='10'", "vcpus='1' scheduler='fifo' priority='11'")
    assert differences(one_differs, render(SPEC)) == ["vcpusched"]


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
            "<cputune><shares>2048</shares><iothreadpin iothread='1' cpuset='2'/>"
            "<vcpusched vcpus='0' scheduler='rr' priority='1'/>"
            "</cputune><devices><disk type='file'/></devices></domain>")
    root = ET.fromstring(render(SPEC, base))
    assert root.findtext("name") == "rt1" and root.get("type") == "qemu"
    assert root.find("vcpu").attrib == {"placement": "static"}
    assert root.findtext("cputune/shares") == "2048"
    assert root.find("cputune/iothreadpin") is None  # owned: the guest has no I/O threads
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


# An operator's own domain XML: a disk, a NIC, QEMU pass-through arguments in their namespace, their own metadata,
# comments, entities and single quotes, an element libvirt does not know, and owned parts to be replaced.
OPERATOR_XML = """<?xml version='1.0' encoding='UTF-8'?>
<!-- vrouter-1, owned by the NFV team -->
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>rt1</name>
  <metadata>
    <app:owner xmlns:app="urn:example:app">team &amp; co</app:owner>
  </metadata>
  <memory unit='GiB'>1</memory>
  <vcpu placement='auto'>8</vcpu>
  <cputune>
    <!-- the team's own tuning -->
    <shares>4096</shares>
    <vcpupin vcpu='7' cpuset='9'/>
  </cputune>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/images/vrouter.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <unknown-thing   a="1"/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-no-hpet'/>
  </qemu:commandline>
</domain>
"""
SPEC_IO = dataclasses.replace(SPEC, iothreads=1)


def _outside_owned(text):
    """The document with every owned element (and the whitespace before it) cut out: what must not change."""
    text = re.sub(r"\s*<(name|memory|currentMemory|vcpu|iothreads)\b[^>]*>[^<]*</\1>", "", text)
    text = re.sub(r"\s*<(vcpupin|emulatorpin|iothreadpin|vcpusched|partition|memory)\b[^>]*/>", "", text)
    text = re.sub(r"\s*<partition>[^<]*</partition>", "", text)
    text = re.sub(r"\s*<rtvirt(base)?:(pcpu|base)\b[^>]*/>", "", text)
    text = re.sub(r"\s*<(numatune|resource)>\s*</\1>", "", text)
    return text


def test_the_operators_xml_is_kept_byte_for_byte_outside_the_owned_parts():
    merged = render(SPEC_IO, OPERATOR_XML, base_digest=base_digest(OPERATOR_XML))
    for kept in ("<?xml version='1.0' encoding='UTF-8'?>\n<!-- vrouter-1, owned by the NFV team -->",
                 "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
                 '<app:owner xmlns:app="urn:example:app">team &amp; co</app:owner>',
                 "<!-- the team's own tuning -->\n    <shares>4096</shares>",
                 "<source file='/var/lib/images/vrouter.qcow2'/>",
                 "<interface type='user'><model type='virtio'/></interface>",
                 '<unknown-thing   a="1"/>',
                 "<qemu:commandline>\n    <qemu:arg value='-no-hpet'/>\n  </qemu:commandline>"):
        assert kept in merged
    assert OPERATOR_XML.split("<devices>")[1] == merged.split("<devices>")[1]
    assert _outside_owned(merged) == _outside_owned(OPERATOR_XML)


def test_ours_are_replaced_in_the_operators_xml():
    root = ET.fromstring(render(SPEC_IO, OPERATOR_XML))
    assert root.find("memory").attrib == {"unit": "KiB"} and root.findtext("memory") == "262144"
    assert root.find("vcpu").attrib == {"placement": "static"} and root.findtext("vcpu") == "2"
    assert {p.get("vcpu"): p.get("cpuset") for p in root.findall("cputune/vcpupin")} == {"0": "2", "1": "3"}
    assert [(p.get("iothread"), p.get("cpuset")) for p in root.findall("cputune/iothreadpin")] == [("1", "0-1")]
    assert root.findtext("iothreads") == "1"
    assert root.findtext("resource/partition") == "/machine/rt"
    assert root.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "0"}
    assert root.find("metadata/{urn:example:app}owner").text == "team & co"
    assert root.find("metadata/{urn:rtvirt:kvm:pcpu:1}pcpu").get("reserved") == "10"
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is not None


@pytest.mark.parametrize("base", [OPERATOR_XML, LIBVIRT_BACK, None,
                                  "<domain type='kvm'><name>rt1</name><cputune/><metadata/><devices/></domain>",
                                  "<domain type='kvm'><cputune><shares>1</shares></cputune></domain>"])
@pytest.mark.parametrize("spec", [SPEC, SPEC_IO, dataclasses.replace(SPEC, numa_nodes=(), metadata="")])
def test_merging_is_idempotent(base, spec):
    once = render(spec, base, base_digest="ab" * 32)
    assert render(spec, once, base_digest="ab" * 32) == once
    assert differences(once, render(spec, once, base_digest="ab" * 32)) == []


def test_fewer_iothreads_remove_ours():
    three = render(dataclasses.replace(SPEC, iothreads=3), OPERATOR_XML)
    root = ET.fromstring(render(SPEC, three))
    assert root.find("iothreads") is None and root.find("cputune/iothreadpin") is None
    assert root.findtext("cputune/shares") == "4096"
    assert differences(three, render(SPEC, three)) == ["iothreadpin", "iothreads"]


def _exists(*paths):
    return lambda path: path in paths


def test_a_new_guest_is_made_from_its_base_xml():
    plan = plan_definition(SPEC_IO, None, OPERATOR_XML, exists=_exists("/var/lib/images/vrouter.qcow2"))
    assert plan.from_base and "vcpupin" in plan.differences and "base_xml" in plan.differences
    assert recorded_digest(plan.xml) == base_digest(OPERATOR_XML)
    assert "<qemu:commandline>" in plan.xml


def _defined(xml):
    """The definition as libvirt keeps it: a uuid and a MAC address added."""
    return xml.replace("<name>rt1</name>", "<name>rt1</name>\n  <uuid>2b7d4cb4-95c6-4a95-80ba-80db8bbe41ec</uuid>"
                       ).replace("<interface type='user'>", "<interface type='user'><mac address='52:54:00:0b:5e:c7'/>")


def test_an_unchanged_base_xml_changes_nothing_and_keeps_what_libvirt_added():
    exists = _exists("/var/lib/images/vrouter.qcow2")
    current = _defined(plan_definition(SPEC_IO, None, OPERATOR_XML, exists=exists).xml)
    plan = plan_definition(SPEC_IO, current, OPERATOR_XML, exists=exists)
    assert plan.differences == [] and not plan.from_base
    assert "52:54:00:0b:5e:c7" in plan.xml
    reindented = OPERATOR_XML.replace("\n    <", "\n        <").replace("<!-- the team's own tuning -->", "")
    assert plan_definition(SPEC_IO, current, reindented, exists=exists).differences == []


def test_a_changed_disk_in_the_base_xml_redefines_from_it_with_the_same_pins_and_uuid():
    exists = _exists("/var/lib/images/vrouter.qcow2")
    current = _defined(plan_definition(SPEC_IO, None, OPERATOR_XML, exists=exists).xml)
    changed = OPERATOR_XML.replace("cache='none'", "cache='writethrough'")
    plan = plan_definition(SPEC_IO, current, changed, exists=exists)
    assert plan.from_base and plan.differences == ["base_xml"]
    root = ET.fromstring(plan.xml)
    assert root.find("devices/disk/driver").get("cache") == "writethrough"
    assert root.findtext("uuid") == "2b7d4cb4-95c6-4a95-80ba-80db8bbe41ec"
    assert owned_view(plan.xml)["vcpupin"] == owned_view(current)["vcpupin"]
    assert owned_view(plan.xml)["iothreadpin"] == owned_view(current)["iothreadpin"] == {"1": "0-1"}


def test_without_base_xml_the_definition_is_the_base():
    current = _defined(plan_definition(SPEC, None, None).xml)
    assert plan_definition(SPEC, current, None).differences == []
    assert plan_definition(SPEC_IO, current, None).differences == ["iothreadpin", "iothreads"]


@pytest.mark.parametrize("base, exists, message", [
    (OPERATOR_XML.replace("<name>rt1</name>", "<name>rt2</name>"), ("/var/lib/images/vrouter.qcow2",),
     "guest rt1: base_xml names the domain 'rt2': its <name> must be the guest's name"),
    (OPERATOR_XML, (), "guest rt1: base_xml disk vda: source /var/lib/images/vrouter.qcow2 does not exist"),
    ("<domain type='kvm'><devices><disk type='block'><source dev='/dev/nope'/><target dev='sdb'/></disk>"
     "</devices></domain>", (), "guest rt1: base_xml disk sdb: source /dev/nope does not exist"),
    (OPERATOR_XML.replace("cache='none'", "cache='none' iothread='2'"), ("/var/lib/images/vrouter.qcow2",),
     "guest rt1: a device's <driver iothread='2'> names an I/O thread the guest does not have: set iothreads to "
     "at least 2 \\(now 1\\)"),
    ("<domain", (), "guest rt1: base_xml is not well-formed XML"),
])
def test_bad_base_xml_fails_naming_the_guest_the_key_and_the_reason(base, exists, message):
    with pytest.raises(DomainSpecError, match=message):
        plan_definition(SPEC_IO, None, base, exists=_exists(*exists))


def test_a_base_with_another_uuid_than_the_defined_guest_is_refused():
    current = _defined(render(SPEC))
    base = OPERATOR_XML.replace("<name>rt1</name>", "<name>rt1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>")
    with pytest.raises(DomainSpecError, match="guest rt1: base_xml has uuid 11111111"):
        plan_definition(SPEC, current, base, exists=_exists("/var/lib/images/vrouter.qcow2"))


@pytest.mark.parametrize("change, message", [
    (dict(iothreads=1, emulator_cpus=""), "guest rt1: iothreads 1 need emulator CPUs to be pinned to, and there are "
                                          "none"),
    (dict(iothreads=-1), "iothreads must be a number from 0 to 64, got -1"),
    (dict(iothreads=True), "iothreads is True, a boolean"),
])
def test_bad_iothreads(change, message):
    with pytest.raises(DomainSpecError, match=message):
        plan_definition(dataclasses.replace(SPEC, **change), None)
