"""Isolation facts: the pure parsers, then gather() against recorded host trees (tests/unit/fixtures/hosts).

The v1-isolcpus and v2-systemd trees are built at test time by make_hosts (their IRQ handler and systemd
scope directory names hold characters ansible-test does not allow in committed file names).
"""
import json
import pathlib
import shutil

import pytest
from hypothesis import given, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_cgroups import partition_cgroup_paths
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_guests import classify_qemu_thread, expected_pinning
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import (
    POLICIES,
    isolcpus_isolates,
    parse_cmdline,
    parse_domain_status,
    parse_interrupts,
    parse_stat,
    parse_status_affinity,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_tasks import scan_tasks
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import parse_mountinfo
from tests.unit.fixtures.hosts import make_hosts

HOSTS = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "hosts"


# ------------------------------------------------------------------------------------ cmdline

@pytest.mark.parametrize("text, expected", [
    ("ro quiet", {"isolcpus": None, "isolcpus_flags": [], "nohz_full": None, "rcu_nocbs": None, "irqaffinity": None}),
    ("isolcpus=nohz,domain,managed_irq,2-5 nohz_full=2-5 rcu_nocbs=2-5 irqaffinity=0-1,6-7",
     {"isolcpus": "2-5", "isolcpus_flags": ["nohz", "domain", "managed_irq"], "nohz_full": "2-5",
      "rcu_nocbs": "2-5", "irqaffinity": "0-1,6-7"}),
    ("isolcpus=2-5", {"isolcpus": "2-5", "isolcpus_flags": []}),
    ("isolcpus=managed_irq,3", {"isolcpus": "3", "isolcpus_flags": ["managed_irq"]}),
    # the last occurrence wins, as for the kernel's setup of these lists
    ("isolcpus=1 isolcpus=domain,2-3", {"isolcpus": "2-3", "isolcpus_flags": ["domain"]}),
    ("rcu_nocbs", {"rcu_nocbs": ""}),
    # quotes group, "--" ends the kernel's part
    ('foo="a isolcpus=9" nohz_full=1 -- isolcpus=7', {"isolcpus": None, "nohz_full": "1"}),
])
def test_parse_cmdline(text, expected):
    result = parse_cmdline(text)
    for key, value in expected.items():
        assert result[key] == value


def test_parse_cmdline_unknown_isolcpus_flag():
    result = parse_cmdline("isolcpus=bogus,domain,4")
    assert result["isolcpus_flags"] == ["domain"]
    assert result["isolcpus_unknown_flags"] == ["bogus"]
    assert result["isolcpus"] == "4"


@pytest.mark.parametrize("flags, isolates", [([], True), (["domain"], True), (["nohz", "domain"], True),
                                             (["nohz"], False), (["managed_irq"], False)])
def test_isolcpus_isolates(flags, isolates):
    assert isolcpus_isolates(flags) is isolates


# ------------------------------------------------------------------------------------ stat / status

def _stat(tid, comm, state="S", flags=0x400100, last_cpu=3, rt_priority=0, policy=0):
    fields = ["0"] * 49
    fields[9 - 4] = str(flags)
    fields[39 - 4] = str(last_cpu)
    fields[40 - 4] = str(rt_priority)
    fields[41 - 4] = str(policy)
    return ("%d (%s) %s %s\n" % (tid, comm, state, " ".join(fields))).encode()


@pytest.mark.parametrize("comm", ["bash", "CPU 0/KVM", "my (weird) proc)", ") (", "a) S 1 2 3", "(sd-pam)"])
def test_parse_stat_comm_with_spaces_and_parentheses(comm):
    assert parse_stat(_stat(77, comm, "R", 0x208040, 5, 50, 1)) == (comm, "R", 0x208040, 5, 50, 1)


def test_parse_stat_real_line():
    line = (b"1 (process_api) S 0 0 0 0 -1 4194560 33921 1064749 0 662 28 193 3512 1491 10 -10 14 0 24 "
            b"46469120 3315 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
    assert parse_stat(line) == ("process_api", "S", 4194560, 1, 0, 0)


@given(st.text(alphabet=st.characters(blacklist_characters="\n\x00", blacklist_categories=("Cs",)),
               min_size=0, max_size=15),
       st.integers(0, 1023), st.integers(0, 99), st.sampled_from(sorted(POLICIES)))
def test_parse_stat_property(comm, cpu, priority, policy):
    assert parse_stat(_stat(1, comm, "S", 0, cpu, priority, policy)) == (comm, "S", 0, cpu, priority, policy)


def test_parse_status_affinity():
    text = "Name:\tbash\nCpus_allowed:\tff\nCpus_allowed_list:\t0-7\nMems_allowed_list:\t0\n"
    assert parse_status_affinity(text) == "0-7"
    assert parse_status_affinity(b"Cpus_allowed_list:\t3\n") == "3"
    assert parse_status_affinity("Name:\tx\n") is None


# ------------------------------------------------------------------------------------ IRQs

def test_parse_interrupts():
    text = ("           CPU0       CPU1\n"
            "  24:          1          0  IO-APIC   5-edge      ACPI:Ged\n"
            "  28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config\n"
            "  33:          0          0  IR-IO-APIC   19-fasteoi\n"
            " NMI:          0          0   Non-maskable interrupts\n")
    table = parse_interrupts(text)
    assert sorted(table) == [24, 28, 33]
    assert table[24] == {"counts": [1, 0], "chip": "IO-APIC", "name": "ACPI:Ged"}
    assert table[28]["chip"] == "PCI-MSIX-0000:00:01.0" and table[28]["name"] == "virtio0-config"
    assert table[33]["name"] == ""


# ------------------------------------------------------------------------------------ domain XML

def test_parse_domain_status_v1_fixture(v1_isolcpus_root):
    domain = parse_domain_status((v1_isolcpus_root / "run/libvirt/qemu/rt1.xml").read_text())
    assert domain["name"] == "rt1" and domain["id"] == 3 and domain["pid"] == 1000
    assert domain["vcpus"] == 2 and domain["vcpu_tids"] == {0: 1010, 1: 1011}
    assert domain["vcpupin"] == {0: {2}, 1: {3}}
    assert domain["emulatorpin"] == {0, 1}
    assert domain["iothreads"] == [1] and domain["iothreadpin"] == {1: {0, 1}}   # 0-3,^2,^3
    assert domain["partition"] == "/machine"
    assert expected_pinning(domain, "vcpu", 1) == {3}


def test_parse_domain_plain_xml_default_cpuset():
    domain = parse_domain_status(
        "<domain type='kvm'><name>d</name><vcpu placement='static' cpuset='0-3,^1'>3</vcpu>"
        "<cputune><vcpupin vcpu='2' cpuset='5'/></cputune></domain>")
    assert domain["pid"] is None and domain["id"] is None
    assert expected_pinning(domain, "vcpu", 0) == {0, 2, 3}
    assert expected_pinning(domain, "vcpu", 2) == {5}
    assert expected_pinning(domain, "emulator") == {0, 2, 3}


def test_parse_domain_unpinned():
    domain = parse_domain_status("<domain><name>d</name><vcpu>1</vcpu></domain>")
    assert expected_pinning(domain, "vcpu", 0) is None
    assert expected_pinning(domain, "emulator") is None


def test_parse_domain_rejects_other_xml():
    with pytest.raises(ValueError):
        parse_domain_status("<network/>")


@pytest.mark.parametrize("comm, tid, tids, expected", [
    ("CPU 3/KVM", 9, {}, ("vcpu", 3)),
    ("CPU 0/TCG", 9, {}, ("vcpu", 0)),
    ("qemu-system-x86", 9, {0: 9}, ("vcpu", 0)),   # the status XML's tids win
    ("IO iothread2", 9, {}, ("iothread", 2)),
    ("call_rcu", 9, {}, ("emulator", None)),
    ("vhost-1234", 9, {0: 10}, ("emulator", None)),
])
def test_classify_qemu_thread(comm, tid, tids, expected):
    assert classify_qemu_thread(comm, tid, tids) == expected


@pytest.mark.parametrize("partition, plain, systemd", [
    ("/machine/rt", "machine/rt.partition", "machine.slice/machine-rt.slice"),
    ("/machine/rt/fast", "machine/rt.partition/fast.partition",
     "machine.slice/machine-rt.slice/machine-rt-fast.slice"),
    ("/rt", "rt.partition", "rt.slice"),
])
def test_partition_cgroup_paths(partition, plain, systemd):
    assert partition_cgroup_paths(partition) == (plain, systemd)


def test_partition_cgroup_paths_empty():
    with pytest.raises(IsolationError):
        partition_cgroup_paths("/")


# ------------------------------------------------------------------------------------ gather()

@pytest.fixture(scope="module")
def v1_isolcpus_root(tmp_path_factory):
    """The v1-isolcpus host tree, written by make_hosts into a temporary directory."""
    base = tmp_path_factory.mktemp("hosts")
    make_hosts.v1_isolcpus(base)
    return base / "v1-isolcpus"


@pytest.fixture(scope="module")
def v2_systemd_root(tmp_path_factory):
    """The v2-systemd host tree, written by make_hosts into a temporary directory."""
    base = tmp_path_factory.mktemp("hosts")
    make_hosts.v2_systemd(base)
    return base / "v2-systemd"


def _gather(shape, **kwargs):
    return _gather_root(HOSTS / shape, **kwargs)


def _gather_root(root, **kwargs):
    return gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"),
                  run_root=str(root / "run/libvirt/qemu"), **kwargs)


def _brief(violations):
    return [(v["kind"], v["offender"], v.get("cpus")) for v in violations]


def test_v1_isolcpus_host_plan(v1_isolcpus_root):
    facts = _gather_root(v1_isolcpus_root, realtime_partitions=["/machine/rt"])
    json.dumps(facts)  # facts must be JSON
    assert facts["cgroup"]["mode"] == "hybrid"
    assert facts["cgroup"]["cpuset_mountpoint"] == "/sys/fs/cgroup/cpuset"
    assert facts["cpus"] == {"online": "0-7", "offline": "", "present": "0-7", "possible": "0-7"}
    assert facts["numa_nodes"] == [{"node": 0, "cpus": "0-1,4-5"}, {"node": 1, "cpus": "2-3,6-7"}]
    assert facts["smt_siblings"] == ["0,4", "1,5", "2,6", "3,7"]
    assert facts["smt_active"] is True
    assert facts["cmdline"] == {"isolcpus": "2-3,6-7", "isolcpus_flags": ["nohz", "domain", "managed_irq"],
                                "nohz_full": "2-3,6-7", "rcu_nocbs": "2-3,6-7", "irqaffinity": "0-1,4-5"}
    assert facts["kernel"] == {"isolated": "2-3,6-7", "nohz_full": "2-3,6-7", "cpuset_cpus_isolated": None,
                               "partitions": [], "preempt_rt": False}
    assert facts["isolated_cpus"] == "2-3,6-7"
    assert facts["housekeeping_cpus"] == "0-1,4-5"
    assert facts["sched_rt_runtime_us"] == -1
    assert facts["workqueue_cpumask"] == "0-7"
    assert facts["irq_default_affinity"] == "0-1,4-5"
    assert [(i["irq"], i["name"], i["affinity"], i["effective"], i["in_use"], i["changeable"]) for i in facts["irqs"]] == [
        (24, "ahci[0000:00:17.0]", "0-1,4-5", "0", True, None),
        (30, "nvme0q1", "0-7", "2", True, False),
        (31, "eth0-rx-0", "0-7", "0", True, True),
        (32, "", "0-7", "0", False, None),
    ]
    assert facts["threads_scanned"] == 18
    assert facts["threads_on_isolated"] == [
        {"pid": 310, "comm": "cyclictest", "tids": [311, 312], "thread_count": 2, "cpus": "6-7"},
        {"pid": 1000, "comm": "qemu-system-x86", "tids": [1010, 1011], "thread_count": 2, "cpus": "2-3,7"},
    ]
    assert facts["warnings"] == ["guest old: pid 4242 from old.pid is not running (stale pid file?)"]


def test_v1_isolcpus_guest_threads(v1_isolcpus_root):
    facts = _gather_root(v1_isolcpus_root, realtime_partitions=["/machine/rt"])
    (guest,) = facts["guests"]
    assert (guest["name"], guest["pid"], guest["id"], guest["partition"]) == ("rt1", 1000, 3, "/machine")
    assert guest["pinning"] == {"vcpus": {"0": "2", "1": "3"}, "emulator": "0-1", "iothreads": {"1": "0-1"}}
    dom = "/machine/qemu-3-rt1.libvirt-qemu"
    rows = [(t["tid"], t["comm"], t["role"], t["id"], t["cgroup"], t["cpuset"], t["affinity"], t["pinning"],
             t["policy"], t["rt_priority"], t["last_cpu"]) for t in guest["threads"]]
    assert rows == [
        (1000, "qemu-system-x86", "emulator", None, dom + "/emulator", "0-1", "0-1", "0-1", "other", 0, 1),
        (1001, "call_rcu", "emulator", None, dom + "/emulator", "0-1", "0-1", "0-1", "other", 0, 0),
        (1010, "CPU 0/KVM", "vcpu", 0, dom + "/vcpu0", "2", "2", "2", "fifo", 1, 2),
        (1011, "CPU 1/KVM", "vcpu", 1, dom + "/vcpu1", "3,7", "3,7", "3", "fifo", 1, 7),
        (1020, "IO iothread1", "iothread", 1, dom + "/iothread1", "0-1", "0-1", "0-1", "other", 0, 0),
    ]
    assert guest["iothreads"] == [{"id": 1, "tid": 1020, "cgroup": dom + "/iothread1", "cpuset": "0-1",
                                   "affinity": "0-1", "pinning": "0-1"}]


def test_v1_isolcpus_violations_exact(v1_isolcpus_root):
    facts = _gather_root(v1_isolcpus_root, realtime_partitions=["/machine/rt"])
    dom = "/machine/qemu-3-rt1.libvirt-qemu"
    assert _brief(facts["violations"]) == [
        ("workqueue_cpumask", "/sys/devices/virtual/workqueue/cpumask", "2-3,6-7"),
        ("irq_affinity", "irq 30 (nvme0q1)", "2-3,6-7"),
        ("irq_affinity", "irq 31 (eth0-rx-0)", "2-3,6-7"),
        ("irq_affinity", "irq 32 (unnamed)", "2-3,6-7"),
        ("pinning_drift", "guest rt1 vcpu 1 (tid 1011, CPU 1/KVM)", None),
        ("thread_on_isolated", "pid 300 (my (weird) proc))", "2-3,6-7"),
        ("kthread_on_isolated", "kthread 15 (rcu_preempt)", "2-3,6-7"),
        ("cgroup_cpuset", "/machine", "7"),
        ("cgroup_cpuset", dom, "6-7"),
        ("cgroup_cpuset", dom + "/vcpu1", "7"),
    ]
    by_kind = {}
    for violation in facts["violations"]:
        by_kind.setdefault(violation["kind"], []).append(violation)
        assert violation["message"]
    drift = by_kind["pinning_drift"][0]
    assert {k: drift[k] for k in ("guest", "role", "id", "tid", "xml", "cgroup", "cpuset", "affinity")} == {
        "guest": "rt1", "role": "vcpu", "id": 1, "tid": 1011, "xml": "3", "cgroup": dom + "/vcpu1",
        "cpuset": "3,7", "affinity": "3,7"}
    leak = by_kind["thread_on_isolated"][0]
    assert (leak["pid"], leak["comm"], leak["tids"], leak["thread_count"], leak["affinity"]) == (
        300, "my (weird) proc)", [300, 301], 2, "0-7")
    irqs = {v["irq"]: v for v in by_kind["irq_affinity"]}
    assert irqs[30]["changeable"] is False and "EIO" in irqs[30]["note"]
    assert irqs[31]["changeable"] is True and "housekeeping" in irqs[31]["note"]
    assert "unused" in irqs[32]["note"]
    cgroup = by_kind["cgroup_cpuset"][0]
    assert cgroup["path"] == str(v1_isolcpus_root / "sys/fs/cgroup/cpuset/machine")
    assert cgroup["cpuset"] == "0-7"


def test_v1_without_declared_partition_reports_it(v1_isolcpus_root):
    facts = _gather_root(v1_isolcpus_root)
    cgroups = [(v["offender"], v["cpus"]) for v in facts["violations"] if v["kind"] == "cgroup_cpuset"]
    assert ("/machine/rt.partition", "6") in cgroups
    assert ("/machine", "6-7") in cgroups


def test_v1_gather_threads_false(v1_isolcpus_root):
    facts = _gather_root(v1_isolcpus_root, realtime_partitions=["/machine/rt"], gather_threads=False)
    assert facts["threads_scanned"] is None
    assert facts["guests"][0]["threads"] == []
    kinds = {v["kind"] for v in facts["violations"]}
    assert kinds == {"workqueue_cpumask", "irq_affinity", "cgroup_cpuset"}


def test_v2_systemd_partitions_and_isolated(v2_systemd_root):
    facts = _gather_root(v2_systemd_root, isolated_cpus="2")
    assert facts["cgroup"]["mode"] == "v2"
    assert facts["kernel"] == {
        "isolated": "", "nohz_full": "", "cpuset_cpus_isolated": "3",
        "partitions": [
            {"path": "/bad.slice", "mode": "isolated", "valid": False,
             "state": "isolated invalid (Cpu list in cpuset.cpus not exclusive)", "cpus": ""},
            {"path": "/rt.slice", "mode": "isolated", "valid": True, "state": "isolated", "cpus": "3"},
        ], "preempt_rt": False}
    assert facts["isolated_cpus"] == "2-3"
    assert facts["isolated_sources"] == {"cpuset_cpus_isolated": "3", "isolated_partitions": "3", "option": "2"}
    assert facts["housekeeping_cpus"] == "0-1"
    assert facts["smt_siblings"] == ["0", "1", "2", "3"] and facts["smt_active"] is False
    assert facts["warnings"] == []
    assert facts["threads_on_isolated"] == [
        {"pid": 500, "comm": "rt app (x)", "tids": [500], "thread_count": 1, "cpus": "3"},
        {"pid": 2000, "comm": "qemu-system-x86", "tids": [2010], "thread_count": 1, "cpus": "2"},
    ]


@pytest.mark.parametrize("text, preempt_rt", [("1", True), ("0", False), ("", False), (None, False)])
def test_preempt_rt_from_sys_kernel_realtime(v2_systemd_root, tmp_path, text, preempt_rt):
    root = tmp_path / "host"
    shutil.copytree(v2_systemd_root, root, symlinks=True)
    realtime = root / "sys" / "kernel" / "realtime"
    if realtime.exists():
        realtime.unlink()
    if text is not None:
        realtime.parent.mkdir(parents=True, exist_ok=True)
        realtime.write_text(text + "\n")
    assert _gather_root(root, isolated_cpus="2")["kernel"]["preempt_rt"] is preempt_rt


def test_v2_systemd_guests_found_by_thread_names(v2_systemd_root):
    facts = _gather_root(v2_systemd_root, isolated_cpus="2")
    rt1, web = facts["guests"]
    scope = "/machine.slice/machine-qemu\\x2d3\\x2drt1.scope/libvirt"
    assert rt1["pinning"] == {"vcpus": {"0": "2", "1": "0-1"}, "emulator": "0", "iothreads": {}}
    assert [(t["tid"], t["role"], t["id"], t["cgroup"], t["cpuset"], t["affinity"]) for t in rt1["threads"]] == [
        (2000, "emulator", None, scope + "/emulator", "0", "0"),
        (2010, "vcpu", 0, scope + "/vcpu0", "2", "2"),
        (2011, "vcpu", 1, scope + "/vcpu1", "0-1", "0-1"),
    ]
    # an empty v2 cpuset.cpus reads as the effective CPUs
    assert web["pinning"] == {"vcpus": {"0": None}, "emulator": None, "iothreads": {}}
    assert [(t["role"], t["cpuset"]) for t in web["threads"]] == [("emulator", "0-2"), ("vcpu", "0-2")]


def test_v2_systemd_violations_exact(v2_systemd_root):
    facts = _gather_root(v2_systemd_root, isolated_cpus="2")
    web = "/machine.slice/machine-qemu\\x2d4\\x2dweb.scope"
    assert _brief(facts["violations"]) == [
        ("irq_default_affinity", "/proc/irq/default_smp_affinity", "2-3"),
        ("thread_on_isolated", "pid 1 (systemd)", "2"),
        ("thread_on_isolated", "pid 2100 (qemu-system-x86)", "2"),
        ("cgroup_cpuset", web, "2"),
        ("cgroup_cpuset", web + "/libvirt", "2"),
        ("cgroup_cpuset", web + "/libvirt/emulator", "2"),
        ("cgroup_cpuset", web + "/libvirt/vcpu0", "2"),
    ]


def test_v2_without_option_nothing_leaks_onto_the_partition(v2_systemd_root):
    facts = _gather_root(v2_systemd_root)
    assert facts["isolated_cpus"] == "3"
    assert _brief(facts["violations"]) == [("irq_default_affinity", "/proc/irq/default_smp_affinity", "3")]


def test_minimal_host():
    facts = _gather("minimal")
    assert facts["cgroup"]["mode"] == "v1"
    assert facts["numa_nodes"] == [] and facts["smt_active"] is None
    assert facts["kernel"]["nohz_full"] is None
    assert facts["isolated_cpus"] == "1" and facts["housekeeping_cpus"] == "0"
    assert facts["sched_rt_runtime_us"] is None and facts["workqueue_cpumask"] is None
    assert facts["irqs"] == [] and facts["guests"] == []
    assert facts["threads_on_isolated"] == [{"pid": 40, "comm": "sleeper", "tids": [40], "thread_count": 1,
                                             "cpus": "1"}]
    assert facts["violations"] == [{
        "kind": "cmdline_mismatch", "offender": "nohz_full=",
        "message": "the command line asks nohz_full=1 but the kernel has no /sys/devices/system/cpu/nohz_full "
                   "(built without CONFIG_NO_HZ_FULL?)",
        "requested": "1", "reported": None}]


def test_isolcpus_mismatch(tmp_path):
    root = tmp_path / "host"
    shutil.copytree(HOSTS / "minimal", root)
    (root / "sys/devices/system/cpu/isolated").write_text("\n")
    facts = gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"), run_root=str(root / "none"))
    assert [(v["offender"], v["requested"], v["reported"]) for v in facts["violations"]
            if v["kind"] == "cmdline_mismatch"] == [("isolcpus=", "1", ""), ("nohz_full=", "1", None)]


def test_explicit_layout_is_used():
    root = HOSTS / "minimal"
    layout = parse_mountinfo((root / "proc/self/mountinfo").read_text())
    facts = gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"), run_root="/nonexistent",
                   layout=layout)
    assert facts["cgroup"] == layout.as_dict()


@pytest.mark.parametrize("value", ["x", "3-1", "1,,2"])
def test_bad_isolated_cpus_option(value):
    with pytest.raises(IsolationError, match="isolated_cpus"):
        _gather("minimal", isolated_cpus=value)


def test_isolated_cpus_as_list():
    assert _gather("minimal", isolated_cpus=[0])["isolated_cpus"] == "0-1"


def test_gather_does_not_write(tmp_path, v1_isolcpus_root):
    root = tmp_path / "host"
    shutil.copytree(v1_isolcpus_root, root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    gather(proc_root=str(root / "proc"), sys_root=str(root / "sys"), run_root=str(root / "run/libvirt/qemu"))
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_scan_tasks_counts_every_task_once(v1_isolcpus_root):
    scan = scan_tasks(str(v1_isolcpus_root / "proc"), frozenset({2, 3, 6, 7}), guest_pids=[1000])
    assert scan.count == 18
    assert [t[0] for t in sorted(scan.guest_tasks[1000])] == [1000, 1001, 1010, 1011, 1020]
    assert sorted(scan.leaks) == ["300"]


def _scan_state(scan):
    return (scan.count, scan.unreadable, scan.leaks, scan.placed, sorted(scan.kthreads),
            {pid: sorted(tasks) for pid, tasks in scan.guest_tasks.items()})


@pytest.mark.parametrize("affinity_is_status", [False, True])
def test_scan_tasks_with_affinity_of_finds_the_same(v1_isolcpus_root, affinity_is_status):
    """The sched_getaffinity shortcut (here a stand-in answering from the tree's status files) changes what is
    read, never the result: tasks off the isolated CPUs are only counted, the others are read as before."""
    proc = v1_isolcpus_root / "proc"
    isolated = frozenset({2, 3, 6, 7})
    asked = []

    def affinity_of(tid):
        asked.append(tid)
        for status in proc.glob("*/task/%d/status" % tid):
            return parse_cpulist(parse_status_affinity(status.read_bytes()))
        raise ProcessLookupError(tid)

    plain = scan_tasks(str(proc), isolated, guest_pids=[1000])
    shortcut = scan_tasks(str(proc), isolated, guest_pids=[1000], affinity_of=affinity_of,
                          affinity_is_status=affinity_is_status)
    assert _scan_state(shortcut) == _scan_state(plain)
    assert len(asked) == (plain.count if affinity_is_status else plain.count - 5)  # guests: 5 tasks, read in full


def test_scan_tasks_skips_a_task_gone_before_its_affinity(v1_isolcpus_root):
    def gone(tid):
        raise ProcessLookupError(tid)

    scan = scan_tasks(str(v1_isolcpus_root / "proc"), frozenset({2, 3, 6, 7}), guest_pids=[1000], affinity_of=gone)
    assert scan.count == 5  # only the guest's tasks, which are read in full


def test_a_guest_worker_placed_on_an_isolated_cpu_is_a_violation_with_its_fix(tmp_path):
    """KVM's kvm-nx-lpage-recovery worker sits in vcpu0's cgroup on the vCPU's CPU, at its SCHED_FIFO priority:
    allowed on isolated CPUs only, the scan sees it as placed on purpose; the guest facts name it."""
    make_hosts.v2_systemd(tmp_path)
    root = tmp_path / "v2-systemd"
    host = make_hosts.Host.__new__(make_hosts.Host)
    host.proc, host.sys = root / "proc", root / "sys"
    vcpu0 = "/machine.slice/machine-qemu\\x2d3\\x2drt1.scope/libvirt/vcpu0"
    host.task(2000, 2012, "kvm-nx-lpage-recovery-2000", "2", flags=0x400100 | 0x4000, policy=1, rt_priority=10,
              cgroup="0::%s\n" % vcpu0)
    facts = _gather_root(root, isolated_cpus="2")
    found = [v for v in facts["violations"] if v["kind"] == "guest_thread_on_isolated"]
    assert [(v["guest"], v["tid"], v["role"], v["cpus"], v["cgroup"]) for v in found] == [
        ("rt1", 2012, "kernel_worker", "2", vcpu0)]
    assert "policy fifo, priority 10" in found[0]["message"] and "kvm.nx_huge_pages=never" in found[0]["message"]
    # the vCPU itself, on the same CPU, is not one
    assert not [v for v in found if v["tid"] == 2010]


@pytest.mark.parametrize("param, value", [("nx_huge_pages", "N"), ("nx_huge_pages", "never"),
                                          ("nx_huge_pages_recovery_ratio", "0")])
def test_the_nx_recovery_worker_is_no_violation_while_kvm_keeps_it_asleep(tmp_path, param, value):
    """With nx_huge_pages off (host_prep's tuning) or no recovery, the worker's period is unbounded: it never wakes
    on the vCPU's CPU, and a converged host shows no violation for it (the Molecule scenario's verify)."""
    make_hosts.v2_systemd(tmp_path)
    root = tmp_path / "v2-systemd"
    host = make_hosts.Host.__new__(make_hosts.Host)
    host.proc, host.sys = root / "proc", root / "sys"
    vcpu0 = "/machine.slice/machine-qemu\\x2d3\\x2drt1.scope/libvirt/vcpu0"
    host.task(2000, 2012, "kvm-nx-lpage-recovery-2000", "2", flags=0x400100 | 0x4000, policy=1, rt_priority=10,
              cgroup="0::%s\n" % vcpu0)
    params = root / "sys" / "module" / "kvm" / "parameters"
    params.mkdir(parents=True, exist_ok=True)
    (params / "nx_huge_pages").write_text("Y\n")
    (params / "nx_huge_pages_recovery_ratio").write_text("60\n")
    assert [v["tid"] for v in _gather_root(root, isolated_cpus="2")["violations"]
            if v["kind"] == "guest_thread_on_isolated"] == [2012]
    (params / param).write_text(value + "\n")
    assert not [v for v in _gather_root(root, isolated_cpus="2")["violations"] if v["kind"] == "guest_thread_on_isolated"]
