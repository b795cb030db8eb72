# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""realtime_domain through main(), against a fake libvirt-python (the real one: tests/integration/libvirt)."""

from __future__ import annotations

import sys
import types
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.rtvirt.kvm.plugins.modules import realtime_domain

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _module_runner import run_module  # noqa: E402  pylint: disable=wrong-import-position


class FakeError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class FakeDom:
    def __init__(self, host, xml):
        self.host, self.xml, self.active, self.starts = host, xml, False, 0
        self.live = None  # the running definition, when a test makes it differ from the persistent one

    def name(self):
        return ET.fromstring(self.xml).findtext("name")

    def XMLDesc(self, flags):  # noqa: N802 (libvirt's name)
        return self.live if flags == 0 and self.live is not None else self.xml

    def isActive(self):  # noqa: N802
        return self.active

    def autostart(self):
        return self.starts

    def setAutostart(self, flag):  # noqa: N802
        self.host.calls.append(("autostart %d" % flag, self.name()))
        self.starts = flag

    def create(self):
        if self.host.fail_start:
            raise FakeError("Cannot set scheduler parameters for pid 1: Operation not permitted")
        self.host.calls.append(("create", self.name()))
        self.active, self.live = True, None

    def destroy(self):
        self.host.calls.append(("destroy", self.name()))
        self.active = False

    def undefineFlags(self, flags):  # noqa: N802
        if "<nvram" in self.xml and not flags & 4:  # libvirt refuses a UEFI guest's plain undefine
            raise FakeError("cannot undefine domain with nvram")
        self.host.calls.append(("undefine", self.name(), flags))
        del self.host.domains[self.name()]


class FakeHost:
    def __init__(self):
        self.domains, self.calls, self.fail_start = {}, [], False

    def lookupByName(self, name):  # noqa: N802
        if name not in self.domains:
            raise FakeError("Domain not found", code=42)
        return self.domains[name]

    def defineXML(self, xml):  # noqa: N802
        root = ET.fromstring(xml)
        if root.find("uuid") is None:  # libvirt adds a uuid and devices; the module must not care
            ET.SubElement(root, "uuid").text = "2b7d4cb4-95c6-4a95-80ba-80db8bbe41ec"
        name = root.findtext("name")
        self.calls.append(("define", name))
        dom = self.domains.get(name) or FakeDom(self, "")
        dom.xml = ET.tostring(root, encoding="unicode")
        self.domains[name] = dom
        return dom

    def listAllDomains(self, flags):  # noqa: N802
        return list(self.domains.values())

    def close(self):
        pass


@pytest.fixture
def host(monkeypatch, tmp_path):
    fake = FakeHost()
    monkeypatch.setattr(realtime_domain, "PCPU_LOCK_PATH", str(tmp_path / "pcpu.lock"))
    module = types.SimpleNamespace(libvirtError=FakeError, VIR_ERR_NO_DOMAIN=42, VIR_DOMAIN_XML_INACTIVE=2,
                                   VIR_DOMAIN_UNDEFINE_KEEP_NVRAM=4, VIR_DOMAIN_UNDEFINE_KEEP_TPM=128,
                                   open=lambda uri: fake)
    monkeypatch.setitem(sys.modules, "libvirt", module)
    return fake


ARGS = dict(name="rt1", vcpus=2, memory_mib=128, vcpupin={"0": "1", "1": "2"}, emulator_cpus="0",
            fifo_priority=10, numa_nodes=[0], domain_type="qemu")


def test_define_start_then_nothing(host):
    first = run_module(realtime_domain, ARGS)
    assert not first.get("failed"), first
    assert first["changed"] and first["defined"] and first["started"] and first["autostart_set"]
    assert host.calls == [("define", "rt1"), ("create", "rt1"), ("autostart 1", "rt1")]
    second = run_module(realtime_domain, ARGS)
    assert not second["changed"] and second["differences"] == [] and not second["autostart_set"]
    assert host.calls == [("define", "rt1"), ("create", "rt1"), ("autostart 1", "rt1")]


def test_autostart_is_switched_off_and_on_without_a_redefinition(host):
    run_module(realtime_domain, ARGS)
    del host.calls[:]
    off = run_module(realtime_domain, dict(ARGS, autostart=False))
    assert off["changed"] and off["autostart_set"] and not off["defined"] and not off["started"]
    assert host.calls == [("autostart 0", "rt1")] and host.domains["rt1"].starts == 0
    assert not run_module(realtime_domain, dict(ARGS, autostart=False))["changed"]
    checked = run_module(realtime_domain, ARGS, check_mode=True)
    assert checked["changed"] and checked["autostart_set"] and host.domains["rt1"].starts == 0
    assert host.calls == [("autostart 0", "rt1")]
    assert run_module(realtime_domain, ARGS)["autostart_set"] and host.domains["rt1"].starts == 1


def test_a_guest_that_fails_to_start_keeps_no_autostart_flag(host):
    host.fail_start = True
    result = run_module(realtime_domain, ARGS)
    assert result["failed"] and not result["autostart_set"] and host.domains == {}


def test_check_mode_writes_nothing(host):
    result = run_module(realtime_domain, ARGS, check_mode=True, diff=True)
    assert result["changed"] and result["defined"] and host.calls == []
    assert "vcpupin: {0=1, 1=2}" in result["diff"]["after"]


def test_changed_running_guest_warns_or_restarts(host):
    run_module(realtime_domain, ARGS)
    changed = dict(ARGS, fifo_priority=20)
    result = run_module(realtime_domain, changed)
    assert result["changed"] and result["restart_needed"] and result["differences"] == ["vcpusched"]
    assert any("old definition" in w for w in result["warnings"])
    result = run_module(realtime_domain, dict(changed, fifo_priority=30, restart=True))
    assert result["destroyed"] and result["started"]
    assert host.calls[-3:] == [("define", "rt1"), ("destroy", "rt1"), ("create", "rt1")]


def test_guest_running_an_older_definition_is_restarted_by_the_rerun(host):
    """A run that defined and was cut off before its restart (libvirtd restarted) leaves the guest on its old
    definition; the rerun finds nothing to define but sees what runs, and restarts it."""
    run_module(realtime_domain, ARGS)
    old = host.domains["rt1"].xml
    changed = dict(ARGS, fifo_priority=20)
    run_module(realtime_domain, changed)
    host.domains["rt1"].live = old
    told = run_module(realtime_domain, changed)
    assert not told["defined"] and told["restart_needed"] and not told["changed"]
    assert any("vcpusched changed" in w for w in told["warnings"])
    result = run_module(realtime_domain, dict(changed, restart=True))
    assert not result["defined"] and result["destroyed"] and result["started"]
    assert host.calls[-2:] == [("destroy", "rt1"), ("create", "rt1")]
    assert not run_module(realtime_domain, dict(changed, restart=True))["changed"]


def test_absent(host):
    run_module(realtime_domain, ARGS)
    result = run_module(realtime_domain, dict(name="rt1", state="absent"))
    assert result["changed"] and result["destroyed"] and result["undefined"] and "rt1" not in host.domains
    assert not run_module(realtime_domain, dict(name="rt1", state="absent"))["changed"]


def test_failed_start_of_a_new_guest_leaves_nothing_defined(host):
    host.fail_start = True
    result = run_module(realtime_domain, ARGS)
    assert result["failed"] and "sched_rt_runtime_us=-1" in result["msg"] and "Operation not permitted" in result["msg"]
    assert host.domains == {}


@pytest.mark.parametrize("change, message", [
    (dict(name="bad/name"), "guest name 'bad/name' is not accepted"),
    (dict(fifo_priority=100), "fifo_priority 100 is out of range"),
    (dict(vcpupin={"0": "1"}), "must pin exactly vCPUs 0-1"),
    # Found by test_hostile_arguments: the set of 2**31 vCPU numbers was built to compare with vcpupin (MemoryError).
    (dict(vcpus=2 ** 31), "vcpus 2147483648 is more than any host has CPUs to pin them to (at most 8192)"),
    (dict(vcpus=10 ** 30), "is more than any host has CPUs"),
    # Found by test_hostile_arguments: ansible-core passes True as an int; the XML said priority='True', and
    # reading it back raised ValueError.
    (dict(fifo_priority=True), "guest rt1: fifo_priority is True, a boolean: give a number"),
    (dict(vcpus=True), "guest rt1: vcpus is True, a boolean: give a number"),
])
def test_bad_input_fails_before_libvirt_is_touched(host, change, message):
    result = run_module(realtime_domain, dict(ARGS, **change))
    assert result["failed"] and message in result["msg"]
    assert host.calls == []


def test_absent_keeps_the_nvram_and_tpm_state(host, tmp_path):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + bytes(range(256)))
    base = ("<domain type='qemu'><name>rt1</name><os firmware='efi'><type>hvm</type>"
            "<nvram>%s</nvram></os><devices><disk type='file'><source file='%s'/><target dev='vda'/></disk>"
            "</devices></domain>" % (tmp_path / "rt1_VARS.fd", disk))
    assert not run_module(realtime_domain, dict(ARGS, base_xml=base)).get("failed")
    result = run_module(realtime_domain, dict(name="rt1", state="absent"))
    assert result["undefined"] and host.calls[-1] == ("undefine", "rt1", 4 | 128)


def test_a_base_xml_change_redefines_without_a_restart(host, tmp_path):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI")
    base = ("<domain type='qemu'><name>rt1</name><devices><disk type='file'><driver name='qemu' iothread='1'/>"
            "<source file='%s'/><target dev='vda'/></disk></devices></domain>" % disk)
    args = dict(ARGS, base_xml=base, iothreads=1)
    first = run_module(realtime_domain, args)
    assert first["changed"] and not first.get("failed"), first
    assert "<iothreadpin iothread=\"1\" cpuset=\"0\" />" in first["xml"]
    assert not run_module(realtime_domain, args)["changed"]
    changed = run_module(realtime_domain, dict(args, base_xml=base.replace("<target dev='vda'/>",
                                                                           "<target dev='vda' bus='virtio'/>")))
    assert changed["differences"] == ["base_xml"] and changed["restart_needed"] and not changed["destroyed"]
    assert host.calls[-1] == ("define", "rt1")
    assert ET.fromstring(host.domains["rt1"].xml).find("devices/disk/target").get("bus") == "virtio"


@pytest.mark.parametrize("change, message", [
    (dict(base_xml="<domain><name>other</name></domain>"), "guest rt1: base_xml names the domain 'other'"),
    (dict(base_xml="<domain><devices><disk type='file'><source file='/nonexistent/rt1.qcow2'/>"
                   "<target dev='vda'/></disk></devices></domain>"),
     "guest rt1: base_xml disk vda: source /nonexistent/rt1.qcow2 does not exist"),
    (dict(iothreads=1, emulator_cpus=""), "guest rt1: iothreads 1 need emulator CPUs"),
])
def test_bad_base_xml_or_iothreads_define_nothing(host, change, message):
    result = run_module(realtime_domain, dict(ARGS, **change))
    assert result["failed"] and message in result["msg"], result
    assert host.domains == {} and host.calls == []
