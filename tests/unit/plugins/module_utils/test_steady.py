# -*- coding: utf-8 -*-
"""The realtime_vm steady-state check (_steady.changes_needed and the realtime_vm_changes filter).

The host is the recorded v1-isolcpus tree (hybrid cgroups, 2 NUMA nodes x 2 cores x 2 SMT threads,
isolcpus 2-3,6-7, guest rt1 with 2 FIFO vCPUs on 2 and 3) brought to what the role's full path leaves
behind: rt1's persistent definition is what realtime_domain renders from pcpu_allocation's plan (the
same functions), partition /machine/rt exists in every hierarchy libvirt uses with the pool and the
emulator CPUs, the vCPU threads run on their pins. The facts come from the real gather() over that
tree. Then each single difference the full path would act on (or fail on) must give a reason.
"""
from __future__ import annotations

import pathlib
import re

import pytest

from ansible_collections.rtvirt.kvm.plugins.filter.realtime import FilterModule
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    allocation_requests,
    differences,
    render,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import holdings_from_domain_xml
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import allocate_all, requests_from_entries
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import Topology, read_topology
from ansible_collections.rtvirt.kvm.plugins.module_utils._steady import changes_needed, role_isolated_cpus
from tests.unit.fixtures.hosts import make_hosts

GUEST = {"name": "rt1", "vcpus": 2}
ROLE = dict(emulator_cpus="0-1", partition="/machine/rt")
HIERARCHIES = ("unified", "cpu,cpuacct", "memory", "freezer")  # cpuset is written by the engine below


def _persistent_from_status(status_xml):
    """The <domain> of libvirt's status XML, as its persistent definition would read (no id)."""
    body = status_xml[status_xml.index("<domain "):status_xml.index("</domain>") + len("</domain>")]
    # libvirt itself only takes ^N (the recorded status XML exercises the facts' parser with ^2-3)
    return body.replace(" id='3'", "").replace("cpuset='0-3,^2-3'", "cpuset='0-1'")


def _converge(root, guests=(GUEST,), role=None):
    """Write what the role's full path leaves on the host, using the modules' own planning and rendering."""
    role = dict(ROLE, **(role or {}))
    sys_root = root / "sys"
    etc = root / "etc" / "libvirt" / "qemu"
    etc.mkdir(parents=True, exist_ok=True)
    current = {"rt1": _persistent_from_status((root / "run/libvirt/qemu/rt1.xml").read_text())}
    for path in etc.glob("*.xml"):
        current[path.stem] = path.read_text()
    topology = read_topology(str(sys_root))
    entries = allocation_requests(list(guests), "prefer", role["emulator_cpus"])
    requests, emulators = requests_from_entries(entries, {"state": "present", "smt_policy": "prefer"})
    plans = allocate_all(topology, frozenset([2, 3, 6, 7]), holdings_from_domain_xml(list(current.values())),
                         requests, emulators)
    for plan in plans:
        spec = DomainSpec(name=plan.name, vcpus=len(plan.pins), memory_mib=128,
                          vcpupin={str(v): c for v, c in plan.vcpupin.items()}, emulator_cpus=role["emulator_cpus"],
                          fifo_priority=1, partition=role["partition"], numa_nodes=tuple(plan.numa_nodes),
                          metadata=plan.metadata_xml())
        (etc / ("%s.xml" % plan.name)).write_text(render(spec, current.get(plan.name)))
    # The partition in every hierarchy libvirt uses, with the pool and the emulator CPUs.
    for hierarchy in HIERARCHIES:
        (sys_root / "fs/cgroup" / hierarchy / "machine/rt.partition").mkdir(parents=True, exist_ok=True)
    partition = sys_root / "fs/cgroup/cpuset/machine/rt.partition"
    (partition / "cpuset.cpus").write_text("0-3,6-7\n")
    (partition / "cpuset.effective_cpus").write_text("0-3,6-7\n")
    (partition / "cpuset.mems").write_text("0-1\n")
    # vCPU 1 runs on its pin (the recorded tree has it widened by hand to 3,7).
    _set_affinity(root, 1011, "3")


def _set_affinity(root, tid, cpus):
    status = root / "proc/1000/task" / str(tid) / "status"
    status.write_text(re.sub(r"Cpus_allowed_list:\t.*", "Cpus_allowed_list:\t%s" % cpus, status.read_text()))


def _set_stat_field(root, tid, index, value):
    """Field ``index`` (1-based, as proc(5) counts) of a task's stat."""
    stat = root / "proc/1000/task" / str(tid) / "stat"
    text = stat.read_text()
    head, tail = text[:text.rindex(")") + 2], text[text.rindex(")") + 2:].split()
    tail[index - 3] = str(value)
    stat.write_text(head + " ".join(tail) + "\n")


@pytest.fixture
def host(tmp_path):
    make_hosts.v1_isolcpus(tmp_path)
    root = tmp_path / "v1-isolcpus"
    _converge(root)
    return root


def _facts(root, partitions=("/machine/rt",), **kwargs):
    return gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"),
                  run_root=str(root / "run/libvirt/qemu"), realtime_partitions=list(partitions),
                  libvirt_config_dir=str(root / "etc/libvirt"), systemd_run_dir=str(root / "no-systemd"),
                  **kwargs)


def _reasons(root, guests=(GUEST,), facts=None, **role):
    return changes_needed(facts or _facts(root), list(guests), **dict(ROLE, **role))


def test_facts_carry_topology_definitions_and_partitions(host):
    facts = _facts(host)
    assert Topology.from_dict(facts["topology"]) == read_topology(str(host / "sys"))
    assert [d["name"] for d in facts["domains"]] == ["rt1"]
    assert facts["realtime_partitions"] == [{"name": "/machine/rt", "cgroup_path": "machine/rt.partition",
                                             "cpus": "0-3,6-7", "mems": "0-1", "missing": []}]


def test_facts_hold_only_the_parts_compared(host):
    _edit(host, "rt1", "<devices>", "<devices><graphics type=\"vnc\" passwd=\"s3cret\" />")
    facts = _facts(host)
    xml = facts["domains"][0]["xml"]
    assert "s3cret" not in xml and "<devices" not in xml and "<cputune>" in xml and "rtvirt:pcpu" in xml
    assert _reasons(host, facts=facts) == []


def test_unparsable_definition_is_unknown(host):
    (host / "etc/libvirt/qemu/broken.xml").write_text("<domain")
    facts = _facts(host)
    assert facts["domains"] is None and any("cannot read the domain definitions" in w for w in facts["warnings"])
    assert "the facts hold no domains" in _reasons(host, facts=facts)[0]


def test_converged_host_is_steady(host):
    assert _reasons(host) == []
    # the filter is the same function
    assert FilterModule().filters()["realtime_vm_changes"](_facts(host), [GUEST], **ROLE) == []


def test_status_line_names_only_the_roles_guests(host):
    line = FilterModule().filters()["realtime_vm_status_line"]
    facts = _facts(host)
    other = dict(facts["guests"][0], name="someone-else")
    facts = dict(facts, guests=facts["guests"] + [other])
    pins = {g["name"]: g["pinning"]["vcpus"] for g in facts["guests"] if g["name"] == GUEST["name"]}
    assert pins and line(facts, [GUEST], []) == \
        "steady state: %s as asked (vCPU pins %s); nothing else runs" % (GUEST["name"], pins)
    assert line(facts, [], []) == "steady state: no guests as asked (vCPU pins {}); nothing else runs"
    # With reasons the facts are not read: they may be what failed.
    assert line(None, [GUEST], ["a", "b"]) == "full path: a; b"


def test_steady_through_the_render_the_module_does(host):
    """What changes_needed compares is what realtime_domain would redefine: nothing, on this host."""
    current = (host / "etc/libvirt/qemu/rt1.xml").read_text()
    spec = DomainSpec(name="rt1", vcpus=2, memory_mib=128, vcpupin={"0": "2", "1": "3"}, emulator_cpus="0-1",
                      partition="/machine/rt", numa_nodes=(1,),
                      metadata='<rtvirt:pcpu xmlns:rtvirt="urn:rtvirt:kvm:pcpu:1" smt_policy="prefer"/>')
    assert differences(current, render(spec, current)) == []


def _edit(root, name, old, new):
    path = root / "etc/libvirt/qemu" / ("%s.xml" % name)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_pin_changed_outside_the_pool(host):
    # virsh vcpupin --config rt1 1 0: the planner gives vCPU 1 a pool CPU again, so the definition differs
    _edit(host, "rt1", "<vcpupin vcpu=\"1\" cpuset=\"3\" />", "<vcpupin vcpu=\"1\" cpuset=\"0\" />")
    reasons = _reasons(host)
    assert any("definition differs in" in r and "vcpupin" in r for r in reasons), reasons


def test_pin_changed_inside_the_pool(host):
    # the planner keeps a pin in the pool: the definition stays, but the running vCPU is not where it says
    _edit(host, "rt1", "<vcpupin vcpu=\"1\" cpuset=\"3\" />", "<vcpupin vcpu=\"1\" cpuset=\"7\" />")
    reasons = _reasons(host)
    assert reasons and any("vCPU 1" in r and "pinned to 7" in r for r in reasons), reasons


def test_definition_edited_by_hand(host):
    _edit(host, "rt1", "<memory unit=\"KiB\">131072</memory>", "<memory unit=\"KiB\">262144</memory>")
    reasons = _reasons(host)
    assert reasons == ["guest rt1: its definition differs in memory_kib"], reasons


def test_priority_asked_differs(host):
    reasons = _reasons(host, guests=[dict(GUEST, fifo_priority=5)])
    assert any("differs in vcpusched" in r for r in reasons) and any("expected fifo priority 5" in r for r in reasons)


def test_guest_stopped(host):
    (host / "run/libvirt/qemu/rt1.pid").unlink()
    reasons = _reasons(host)
    assert "guest rt1 is not running" in reasons, reasons


def test_guest_missing(host):
    (host / "etc/libvirt/qemu/rt1.xml").unlink()
    (host / "run/libvirt/qemu/rt1.pid").unlink()
    reasons = _reasons(host)
    assert "guest rt1 is not defined" in reasons, reasons


def test_guest_running_without_a_definition_the_facts_read(host):
    (host / "etc/libvirt/qemu/rt1.xml").unlink()
    reasons = _reasons(host)
    assert reasons == ["guest rt1 runs without a persistent definition the facts could read"]


def test_absent_guest_still_defined(host):
    old = (host / "etc/libvirt/qemu/rt1.xml").read_text().replace("<name>rt1</name>", "<name>gone</name>")
    old = re.sub(r"<cputune>.*</cputune>", "", old, flags=re.S)
    (host / "etc/libvirt/qemu/gone.xml").write_text(old)
    guests = [GUEST, {"name": "gone", "state": "absent"}]
    assert _reasons(host, guests=guests) == ["guest gone is to be removed"]
    (host / "etc/libvirt/qemu/gone.xml").unlink()
    assert _reasons(host, guests=guests) == []


def test_partition_cpus_differ(host):
    (host / "sys/fs/cgroup/cpuset/machine/rt.partition/cpuset.cpus").write_text("0-3,6\n")
    reasons = _reasons(host)
    assert reasons == ["partition /machine/rt holds CPUs 0-3,6, the role gives it 0-3,6-7"], reasons


def test_partition_missing_in_a_hierarchy(host):
    (host / "sys/fs/cgroup/memory/machine/rt.partition").rmdir()
    reasons = _reasons(host)
    assert reasons == ["partition /machine/rt lacks /sys/fs/cgroup/memory/machine/rt.partition"], reasons


def test_partition_without_memory_nodes(host):
    (host / "sys/fs/cgroup/cpuset/machine/rt.partition/cpuset.mems").write_text("\n")
    assert any("cpuset.mems" in r for r in _reasons(host))


def test_cgroup_below_the_partition_outside_its_cpus(host):
    # possible on cgroup v2, where libvirt_partition then refuses to keep the partition's CPUs
    guest = host / "sys/fs/cgroup/cpuset/machine/rt.partition/qemu-9-x.libvirt-qemu"
    guest.mkdir()
    (guest / "cpuset.cpus").write_text("4-5\n")
    (guest / "cpuset.mems").write_text("0\n")
    reasons = _reasons(host)
    assert reasons == ["partition /machine/rt lacks /sys/fs/cgroup/cpuset/machine/rt.partition/qemu-9-x.libvirt-qemu "
                       "holds CPUs outside the partition (4-5)"], reasons


def test_partitions_not_managed_are_not_checked(host):
    (host / "sys/fs/cgroup/cpuset/machine/rt.partition/cpuset.cpus").write_text("0-3,6\n")
    assert _reasons(host, manage_partitions=False) == []


def test_placement_wrong(host):
    _set_stat_field(host, 1010, 41, 0)  # vCPU 0 policy: SCHED_OTHER
    reasons = _reasons(host)
    assert reasons and all("vCPU 0" in r for r in reasons), reasons
    assert _reasons(host, verify=False) == []  # the full path does not check it either then


def test_emulator_thread_outside(host):
    _set_affinity(host, 1001, "0-1,4")
    assert any("emulator thread 1001" in r for r in _reasons(host))


def test_facts_lacking_the_partition(host):
    reasons = _reasons(host, facts=_facts(host, partitions=("/machine",)))
    assert reasons == ["partition /machine/rt: the facts were not gathered for it"]


def test_facts_without_threads(host):
    reasons = _reasons(host, facts=_facts(host, gather_threads=False))
    assert reasons == ["the facts hold no threads (gathered with gather_threads=false)"]


def test_facts_of_an_older_collection(host):
    facts = _facts(host)
    del facts["domains"]
    assert "the facts hold no domains" in _reasons(host, facts=facts)[0]


def test_systemd_host_is_never_steady(host):
    (host / "systemd").mkdir()
    facts = gather(proc_root=str(host / "proc"), sys_root=str(host / "sys"),
                   run_root=str(host / "run/libvirt/qemu"), realtime_partitions=["/machine/rt"],
                   libvirt_config_dir=str(host / "etc/libvirt"), systemd_run_dir=str(host / "systemd"))
    assert any("systemd host" in r for r in _reasons(host, facts=facts))


def test_other_uri_and_bad_input(host):
    assert _reasons(host, uri="qemu:///session") == [
        "the facts read the definitions of qemu:///system, not of qemu:///session"]
    assert "is not accepted" in _reasons(host, guests=[{"name": "bad/name", "vcpus": 1}])[0]
    assert _reasons(host, emulator_cpus="0-1,x")  # the full path's modules fail on it: never steady


def test_guest_does_not_fit(host):
    reasons = _reasons(host, guests=[GUEST, {"name": "rt2", "vcpus": 5}])
    assert len(reasons) == 1 and "the full path decides" in reasons[0] and "rt2" in reasons[0], reasons


def test_pool_recomputed_with_the_roles_isolated_cpus(host):
    facts = _facts(host, isolated_cpus="1")  # e.g. gathered by host_prep with its own realtime CPUs
    assert role_isolated_cpus(facts, "") == frozenset([2, 3, 6, 7])
    assert role_isolated_cpus(facts, "1") == frozenset([1, 2, 3, 6, 7])
    assert _reasons(host, facts=facts) == []
    # with CPU 5 in the pool the partition the role writes holds other CPUs
    assert any("partition /machine/rt holds" in r for r in _reasons(host, facts=facts, isolated_cpus="5"))


def test_facts_stay_json_and_the_module_documents_the_new_keys(host):
    import json
    json.dumps(_facts(host))
    doc = pathlib.Path(__file__).resolve().parents[4] / "plugins/modules/cpu_isolation_facts.py"
    text = doc.read_text()
    for key in ("topology:", "domains:", "realtime_partitions:", "libvirt_config_dir:"):
        assert key in text
