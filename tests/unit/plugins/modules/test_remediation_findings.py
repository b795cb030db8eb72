# -*- coding: utf-8 -*-
"""remediation_findings: the guests read through libvirt-python and through virsh give the same answer;
gather_isolation and violations together are refused before anything is read."""
from __future__ import annotations

from unittest import mock

import pytest

from _module_runner import run_module
from ansible_collections.rtvirt.kvm.plugins.modules import remediation_findings

NO_DOMAIN = 42
XML = {
    "rt1": "<domain><name>rt1</name><resource><partition>/machine/rt</partition></resource></domain>",
    "off": "<domain><name>off</name></domain>",
}


class FakeLibvirtError(Exception):
    def __init__(self, code):
        super().__init__("error %d" % code)
        self.code = code

    def get_error_code(self):
        return self.code


class FakeDomain:
    def __init__(self, name, active, gone=False):
        self._name, self._active, self._gone = name, active, gone

    def name(self):
        return self._name

    def isActive(self):  # noqa: N802 - libvirt's name
        if self._gone:
            raise FakeLibvirtError(NO_DOMAIN)
        return self._active

    def XMLDesc(self, flags):  # noqa: N802 - libvirt's name
        assert flags == FakeLibvirt.VIR_DOMAIN_XML_INACTIVE
        return XML[self._name]


class FakeConnection:
    closed = False

    def listAllDomains(self, flags):  # noqa: N802 - libvirt's name
        return [FakeDomain("rt1", True), FakeDomain("off", False), FakeDomain("vanished", True, gone=True)]

    def close(self):
        FakeConnection.closed = True


class FakeLibvirt:
    VIR_DOMAIN_XML_INACTIVE = 2
    VIR_ERR_NO_DOMAIN = NO_DOMAIN
    libvirtError = FakeLibvirtError

    @staticmethod
    def open(uri):
        assert uri == "qemu:///system"
        return FakeConnection()


class FakeModule:
    params = {"uri": "qemu:///system"}

    def run_command(self, argv, environ_update=None):
        args = argv[3:]
        if args == ["list", "--name"]:
            return 0, "rt1\n\n", ""
        if args == ["list", "--all", "--name"]:
            return 0, "rt1\noff\nvanished\n\n", ""
        if args[:2] == ["dumpxml", "--inactive"] and args[2] in XML:
            return 0, XML[args[2]], ""
        return 1, "", "error: failed to get domain '%s'" % args[-1]

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


def test_libvirt_and_virsh_agree():
    with mock.patch.object(remediation_findings, "import_libvirt", return_value=FakeLibvirt):
        through_libvirt = remediation_findings._domains_libvirt(FakeModule())
    assert FakeConnection.closed
    assert through_libvirt == ({"rt1"}, XML)
    assert remediation_findings._domains_virsh(FakeModule()) == through_libvirt


def test_without_libvirt_python_the_caller_falls_back_to_virsh():
    error = remediation_findings.LibvirtError("no libvirt-python")
    with mock.patch.object(remediation_findings, "import_libvirt", side_effect=error):
        assert remediation_findings._domains_libvirt(FakeModule()) is None


def test_violations_and_gather_isolation_refused():
    with mock.patch.object(remediation_findings, "discover_layout") as discover:
        result = run_module(remediation_findings, {"gather_isolation": True,
                                                   "violations": [{"kind": "irq_affinity", "offender": "irq 1"}]})
    assert result["failed"]
    assert "mutually exclusive" in result["msg"]
    discover.assert_not_called()


@pytest.mark.parametrize("gather", [False, True])
def test_isolation_facts_returned_only_when_gathered(gather):
    facts = {"violations": [], "warnings": [], "housekeeping_cpus": "0"}
    with mock.patch.object(remediation_findings, "gather", return_value=facts) as gathered, \
            mock.patch.object(remediation_findings, "discover_layout") as discover, \
            mock.patch.object(remediation_findings, "libvirt_hierarchies", return_value=[]), \
            mock.patch.object(remediation_findings, "_read", return_value=None), \
            mock.patch.object(remediation_findings, "_domains_libvirt", return_value=({"rt1"}, XML)):
        discover.return_value.mounts = []
        result = run_module(remediation_findings, {"gather_isolation": gather, "isolated_cpus": "1"})
    assert not result.get("failed"), result
    assert result["running"] == ["rt1"]
    if gather:
        gathered.assert_called_once_with(isolated_cpus="1", realtime_partitions=[])
        assert result["cpu_isolation"] == facts
    else:
        gathered.assert_not_called()
        assert "cpu_isolation" not in result and "ansible_facts" not in result


@pytest.mark.parametrize("args, message", [
    # Found by test_hostile_arguments: a violation or an earlier finding without its keys raised KeyError.
    ({"violations": [{"offender": "irq 1", "message": "m"}]},
     "violations[0] has no 'kind' string (it has 'message', 'offender'): each entry must be one of "
     "cpu_isolation_facts' violations, with kind, offender, message"),
    ({"violations": [{"kind": "pinning_drift", "role": "vcpu", "offender": "o", "message": "m", "guest": "rt1"}]},
     "violations[0] has no 'xml' string"),
    ({"previous": [{"kind": "irq_affinity", "target": 5, "message": "m"}]}, "previous[0] has no 'target' string"),
    ({"targets": "("}, "targets '(' is not a regular expression: missing ), unterminated subpattern"),
])
def test_malformed_entries_and_targets_fail_before_anything_is_read(args, message):
    with mock.patch.object(remediation_findings, "discover_layout") as discover, \
            mock.patch.object(remediation_findings, "_domains_libvirt") as domains:
        result = run_module(remediation_findings, args)
    assert result["failed"] and result["msg"].startswith(message), result["msg"]
    discover.assert_not_called()
    domains.assert_not_called()
