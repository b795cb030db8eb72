# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two runs planned from the same books: realtime_domain re-checks them under the pCPU lock and defines one.

The plans come from pcpu_allocation and from guest_plan's planner, both fed the books as they were before either
guest was defined; realtime_domain runs against the fake libvirt of test_realtime_domain.
"""

from __future__ import annotations

import fcntl
import os
import sys
import types

import pytest

from _module_runner import run_module
from test_realtime_domain import FakeDom, FakeError, FakeHost

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock
from ansible_collections.rtvirt.kvm.plugins.module_utils._guest_plan import HostGuests, plan_guests
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    METADATA_NS,
    AllocationError,
    check_claim,
    claim_conflicts,
    guest_pins_from_domain_xml,
    holdings_from_domain_xml,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import read_topology
from ansible_collections.rtvirt.kvm.plugins.modules import pcpu_allocation, realtime_domain


class LockWatchingHost(FakeHost):
    """A FakeHost that notes, at every listing of the books and every define, whether the pCPU lock is held and
    what its file says."""

    def __init__(self, lock_path):
        super().__init__()
        self.lock_path = lock_path
        self.seen = []

    def listAllDomains(self, flags):  # noqa: N802 (libvirt's name)
        self.seen.append(("books",) + self._lock_state())
        return super().listAllDomains(flags)

    def defineXML(self, xml):  # noqa: N802
        self.seen.append(("define",) + self._lock_state())
        return super().defineXML(xml)

    def _lock_state(self):
        if not os.path.exists(self.lock_path):
            return (False, "")
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        else:
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        with open(self.lock_path) as handle:
            return (held, handle.read())


@pytest.fixture
def lock_path(tmp_path, monkeypatch):
    path = str(tmp_path / "run" / "rtvirt-kvm-pcpu.lock")
    monkeypatch.setattr(realtime_domain, "PCPU_LOCK_PATH", path)
    return path


@pytest.fixture
def host(monkeypatch, lock_path):
    fake = LockWatchingHost(lock_path)
    module = types.SimpleNamespace(libvirtError=FakeError, VIR_ERR_NO_DOMAIN=42, VIR_DOMAIN_XML_INACTIVE=2,
                                   open=lambda uri: fake)
    monkeypatch.setitem(sys.modules, "libvirt", module)
    return fake


@pytest.fixture
def sysfs(tmp_path):
    """One node, CPUs 0-3, no SMT: housekeeping 0, the realtime pool 1-3."""
    root = tmp_path / "sys"
    for relative, text in [("devices/system/cpu/online", "0-3"), ("devices/system/node/node0/cpulist", "0-3")] + [
            ("devices/system/cpu/cpu%d/topology/thread_siblings_list" % cpu, str(cpu)) for cpu in range(4)]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text + "\n")
    return str(root)


def books(host):
    return [dom.xml for dom in host.domains.values()]


def plan(sysfs, host, name, pool):
    result = run_module(pcpu_allocation, dict(name=name, vcpus=1, pool=pool, sys_root=sysfs, domains_xml=books(host)))
    assert not result.get("failed"), result["msg"]
    return result


def define(plan_result, name, **extra):
    args = dict(name=name, vcpus=1, memory_mib=128, vcpupin=plan_result["vcpupin"], emulator_cpus="0",
                numa_nodes=[0], metadata=plan_result["metadata"], domain_type="qemu", running=False, autostart=False)
    return run_module(realtime_domain, dict(args, **extra))


def test_second_of_two_plans_from_the_same_books_is_refused_naming_the_holder(sysfs, host, lock_path):
    first, second = plan(sysfs, host, "rt-a", "1"), plan(sysfs, host, "rt-b", "1")
    assert first["vcpupin"] == second["vcpupin"] == {"0": "1"}   # both saw pCPU 1 free

    assert define(first, "rt-a")["defined"]
    checked = define(second, "rt-b")
    assert checked["failed"]
    assert ("guest 'rt-b' cannot be defined with pCPU 1: already held by guest 'rt-a' (1)" in checked["msg"]
            and "Plan again" in checked["msg"]), checked["msg"]
    assert checked["guest"] == "rt-b" and not checked["defined"] and not checked["changed"]
    assert host.calls == [("define", "rt-a")] and sorted(host.domains) == ["rt-a"]

    # Check mode says the same, writes and locks nothing.
    predicted = run_module(realtime_domain, dict(
        name="rt-b", vcpus=1, memory_mib=128, vcpupin=second["vcpupin"], emulator_cpus="0", numa_nodes=[0],
        metadata=second["metadata"], domain_type="qemu", running=False, autostart=False), check_mode=True)
    assert predicted["failed"] and "already held by guest 'rt-a' (1)" in predicted["msg"]
    assert host.calls == [("define", "rt-a")]

    # A plan made from the books as they are now converges.
    again = plan(sysfs, host, "rt-b", "1-2")
    assert again["vcpupin"] == {"0": "2"}
    assert define(again, "rt-b")["defined"] and sorted(host.domains) == ["rt-a", "rt-b"]


def test_the_lock_is_held_over_the_define_and_names_its_holder_then_freed(sysfs, host, lock_path):
    assert define(plan(sysfs, host, "rt-a", "1"), "rt-a")["defined"]
    holder = "%d realtime_domain rt-a\n" % os.getpid()
    assert host.seen == [("books", True, holder), ("define", True, holder)]   # one hold over both
    with open(lock_path) as handle:
        assert handle.read() == ""                  # emptied before it was released
    with HostLock(lock_path, timeout=0):             # and released
        pass


def test_an_unchanged_guest_is_not_rechecked_nor_locked(sysfs, host, lock_path):
    first = plan(sysfs, host, "rt-a", "1")
    define(first, "rt-a")
    with HostLock(lock_path, timeout=0, owner="someone else"):
        again = define(first, "rt-a", lock_timeout=0)
    assert not again.get("failed") and not again["changed"], again


def test_a_busy_lock_times_out_naming_the_file_and_the_holder(sysfs, host, lock_path):
    first = plan(sysfs, host, "rt-a", "1")
    with HostLock(lock_path, timeout=0, owner="site.yml on the other terminal"):
        result = define(first, "rt-a", lock_timeout=0)
    assert result["failed"] and host.domains == {}
    assert ("another rtvirt.kvm run (pid %d (site.yml on the other terminal)) has held %s for 0 s"
            % (os.getpid(), lock_path)) in result["msg"], result["msg"]


def test_two_guest_plans_from_the_same_books_only_the_first_defines(sysfs, host):
    """The realtime_vm role's path: guest_plan's planner twice from one snapshot of libvirt, then realtime_domain
    with each resolved guest as the role's converge tasks pass it."""
    topology = read_topology(sysfs)
    snapshot = HostGuests(definitions={}, running=frozenset())
    runs = [plan_guests([{"name": name, "vcpus": 1}], topology, snapshot, "1", "0") for name in ("rt-a", "rt-b")]
    resolved = [run.present[0] for run in runs]
    assert resolved[0]["vcpupin"] == resolved[1]["vcpupin"] == {"0": "1"}
    results = []
    for guest in resolved:
        args = {key: guest[key] for key in ("name", "vcpus", "memory_mib", "vcpupin", "emulator_cpus", "fifo_priority",
                                            "partition", "numa_nodes", "metadata", "domain_type")}
        results.append(run_module(realtime_domain, dict(args, running=False)))
    assert results[0]["defined"] and not results[0].get("failed")
    assert results[1]["failed"] and "already held by guest 'rt-a' (1)" in results[1]["msg"]
    assert sorted(host.domains) == ["rt-a"]


# --------------------------------------------------------------------------- the pure re-check


def xml(name, pins, emulator="0", reserved=None):
    tune = "".join("<vcpupin vcpu='%d' cpuset='%s'/>" % (v, c) for v, c in enumerate(pins))
    meta = "<metadata><rtvirt:pcpu xmlns:rtvirt='%s' smt_policy='isolate' reserved='%s'/></metadata>" % (
        METADATA_NS, reserved) if reserved else ""
    return ("<domain type='kvm'><name>%s</name>%s<vcpu>%d</vcpu><cputune>%s<emulatorpin cpuset='%s'/></cputune>"
            "</domain>" % (name, meta, len(pins), tune, emulator))


@pytest.mark.parametrize("wanted, previous, conflicts", [
    (xml("b", ["2"]), None, {"a": {2}}),                                # a vCPU on another's vCPU
    (xml("b", ["4"], reserved="3"), None, {"a": {3}}),                   # a reserved sibling on another's sibling
    (xml("b", ["5"]), None, {}),                                         # free
    (xml("b", ["0"], emulator="0"), None, {"a": {0}}),                  # a vCPU on another's emulator CPU
    (xml("b", ["5"], emulator="0-1"), None, {}),                         # emulators share the housekeeping CPUs
    (xml("b", ["2", "5"]), xml("b", ["2"]), {}),                        # what it held before is not re-checked
    (xml("a", ["2", "3"]), xml("a", ["2"], reserved="3"), {}),          # its own books never conflict
])
def test_claim_conflicts(wanted, previous, conflicts):
    books = {"a": xml("a", ["2"], reserved="3")}
    if previous:
        books[guest_pins_from_domain_xml(previous).name] = previous
    holdings = holdings_from_domain_xml(list(books.values()))
    found = claim_conflicts(holdings, guest_pins_from_domain_xml(wanted),
                            guest_pins_from_domain_xml(previous) if previous else None)
    assert {name: set(cpus) for name, cpus in found.items()} == conflicts


def test_check_claim_names_every_holder():
    holdings = holdings_from_domain_xml([xml("a", ["2"]), xml("c", ["4"], reserved="5")])
    with pytest.raises(AllocationError) as caught:
        check_claim(holdings, guest_pins_from_domain_xml(xml("b", ["2", "5"])))
    assert "guest 'b' cannot be defined with pCPU 2,5: already held by guest 'a' (2), guest 'c' (5)" in str(caught.value)


def test_a_guest_undefined_while_the_books_are_read_holds_nothing(sysfs, host):
    first, second = plan(sysfs, host, "rt-a", "1"), plan(sysfs, host, "rt-b", "1")
    define(first, "rt-a")

    class Vanished:
        def name(self):
            return "rt-a"

        def XMLDesc(self, flags):  # noqa: N802 (libvirt's name)
            raise FakeError("Domain not found", code=42)

    host.domains["rt-a"] = Vanished()
    result = define(second, "rt-b")
    assert result["defined"] and not result.get("failed"), result


def test_the_lock_is_not_held_while_the_guest_starts(sysfs, host, monkeypatch):
    """The qemu hook waits for the cpuset engine's lock during a start; nothing of ours may be held then."""
    starts = []
    original = FakeDom.create

    def create(dom):
        starts.append(host._lock_state())
        original(dom)

    monkeypatch.setattr(FakeDom, "create", create)
    result = define(plan(sysfs, host, "rt-a", "1"), "rt-a", running=True)
    assert result["defined"] and result["started"], result
    assert [step for step, _held, _record in host.seen] == ["books", "define"]
    assert starts == [(False, "")]
