"""libvirt_partition through main() against a fake hybrid cgroup tree (and a fake systemd host)."""
import json
import os
import pathlib
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _module_runner import run_module  # noqa: E402

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import PlainFiles  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.modules import libvirt_partition  # noqa: E402

V1 = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio")
PROC_CGROUPS = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
    "%s\t%d\t1\t1\n" % (c, i + 1) for i, c in enumerate(V1))


def _files(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (directory / name).write_text(value + "\n")


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A hybrid host without systemd: one v1 mount per controller plus an empty cgroup2 tree, and
    libvirt's /machine in the hierarchies libvirt uses."""
    root = tmp_path / "cg"
    lines = []
    for index, controller in enumerate(V1):
        mount = root / controller
        mount.mkdir(parents=True)
        lines.append("%d 1 0:%d / %s rw - cgroup cgroup rw,%s" % (30 + index, 40 + index, mount, controller))
    unified = root / "unified"
    _files(unified, {"cgroup.controllers": "", "cgroup.subtree_control": ""})
    lines.append("60 1 0:60 / %s rw - cgroup2 cgroup2 rw" % unified)
    _files(root / "cpuset", {"cpuset.cpus": "0-3", "cpuset.mems": "0", "cpuset.effective_cpus": "0-3",
                             "cpuset.effective_mems": "0", "cpuset.cpu_exclusive": "1", "tasks": ""})
    _files(root / "cpuset" / "machine", {"cpuset.cpus": "0-3", "cpuset.mems": "0", "cpuset.cpu_exclusive": "0",
                                         "tasks": ""})
    _files(root / "cpu" / "machine", {"cpu.shares": "1024", "tasks": ""})
    _files(root / "memory" / "machine", {"memory.limit_in_bytes": "9223372036854771712",
                                         "memory.soft_limit_in_bytes": "9223372036854771712", "tasks": ""})
    _files(root / "blkio" / "machine", {"blkio.bfq.weight": "100", "tasks": ""})
    for name in ("freezer",):
        _files(root / name / "machine", {"tasks": ""})
    _files(unified / "machine", {"cgroup.threads": ""})
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    (tmp_path / "cgroups").write_text(PROC_CGROUPS)
    run = tmp_path / "run-qemu"
    run.mkdir()
    monkeypatch.setattr(libvirt_partition.Host, "mountinfo", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(libvirt_partition.Host, "proc_cgroups", str(tmp_path / "cgroups"))
    monkeypatch.setattr(libvirt_partition.Host, "proc_root", str(tmp_path / "proc"))
    monkeypatch.setattr(libvirt_partition.Host, "qemu_run_dir", str(run))
    monkeypatch.setattr(libvirt_partition.Host, "systemd_run_dir", str(tmp_path / "no-systemd"))
    monkeypatch.setattr(libvirt_partition.Host, "qemu_conf", str(tmp_path / "qemu.conf"))
    monkeypatch.setattr(libvirt_partition.Host, "lock_path", str(tmp_path / "lock"))
    # The tree is plain files: knob files are created by a write and removed with their directory.
    monkeypatch.setattr(libvirt_partition.Host, "files", PlainFiles())
    return tmp_path


def snapshot(tmp_path):
    """Every file and directory of the fake tree with its content."""
    result = {}
    for path in sorted((tmp_path / "cg").rglob("*")):
        result[str(path)] = path.read_text() if path.is_file() else "<dir>"
    return result


def run(args, check=False, diff=False):
    return run_module(libvirt_partition, args, check_mode=check, diff=diff)


USED = ("unified", "cpu", "cpuset", "memory", "freezer", "blkio")


def test_creates_in_every_hierarchy_libvirt_uses(host):
    before = snapshot(host)
    checked = run({"name": "/machine/production"}, check=True, diff=True)
    assert checked["changed"] and checked["writes"] == []
    assert snapshot(host) == before, "check mode wrote"
    result = run({"name": "/machine/production"}, diff=True)
    assert not result.get("failed"), result.get("msg")
    assert result["planned"] == checked["planned"]
    assert set(result["paths"]) == set(USED)
    for key in USED:
        assert result["paths"][key] == str(host / "cg" / key / "machine" / "production.partition")
        assert os.path.isdir(result["paths"][key])
    for skipped in ("cpuacct", "devices"):  # libvirt 9.0's v2 backend claims them on a hybrid host
        assert not (host / "cg" / skipped / "machine").exists()
    cpuset = host / "cg" / "cpuset" / "machine" / "production.partition"
    assert (cpuset / "cpuset.cpus").read_text().strip() == "0-3"
    assert (cpuset / "cpuset.mems").read_text().strip() == "0"
    assert "production.partition = absent" in result["diff"]["before"]
    again = run({"name": "/machine/production"})
    assert not again["changed"] and again["writes"] == [] and again["planned"] == []


def test_nested_partition_parent_first(host):
    result = run({"name": "/machine/tenant/rt", "cpus": "2"})
    assert not result.get("failed"), result.get("msg")
    files = [w["file"] for w in result["writes"]]
    for key in USED:
        parent = str(host / "cg" / key / "machine" / "tenant.partition")
        assert files.index(parent) < files.index(parent + "/rt.partition")
    leaf = host / "cg" / "cpuset" / "machine" / "tenant.partition" / "rt.partition"
    assert (leaf / "cpuset.cpus").read_text().strip() == "2"
    assert (leaf.parent / "cpuset.cpus").read_text().strip() == "0-3"


def test_repairs_only_the_missing_hierarchy(host):
    run({"name": "/machine/production", "cpus": "1"})
    os.rmdir(host / "cg" / "freezer" / "machine" / "production.partition")
    result = run({"name": "/machine/production", "cpus": "1"})
    assert result["writes"] == [{"file": str(host / "cg" / "freezer" / "machine" / "production.partition"),
                                 "value": "<mkdir>"}]


def test_tunables_written_and_idempotent(host):
    args = {"name": "/machine/production", "cpu_shares": 2048, "memory_hard_limit": "1G", "blkio_weight": 300}
    result = run(args)
    assert not result.get("failed"), result.get("msg")
    cpu = host / "cg" / "cpu" / "machine" / "production.partition"
    assert (cpu / "cpu.shares").read_text().strip() == "2048"
    mem = host / "cg" / "memory" / "machine" / "production.partition"
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(1 << 30)
    assert (host / "cg" / "blkio" / "machine" / "production.partition" / "blkio.bfq.weight").read_text().strip() == "300"
    assert run(args)["writes"] == []


@pytest.mark.parametrize("args, message", [
    ({"name": "machine/x"}, "not absolute"),
    ({"name": "/machine/a//b"}, "empty level"),
    ({"name": "/machine/../x"}, "'..'"),
    ({"name": "/system/x"}, "systemd's own system.slice"),
    ({"name": "/machine", "state": "absent"}, "default partition"),
    ({"name": "/machine/r t"}, "holds ' '"),
    ({"name": "/machine/x", "cpus": "5"}, "not within the parent"),
    ({"name": "/machine/x", "mems": "1"}, "not within the parent"),
    ({"name": "/machine/x", "cpus": "a-b"}, "cpus"),
    ({"name": "/machine/x", "cpu_shares": 1}, "cpu.shares's range"),
    ({"name": "/machine/x", "memory_hard_limit": "lots"}, "not a size"),
    ({"name": "/machine/x", "state": "absent", "cpus": "1"}, "takes no cpus"),
    ({"name": "/machine/x", "blkio_weight": 5000}, "blkio_weight=5000 is outside blkio.bfq.weight's range 1-1000"),
])
def test_bad_input_fails_and_writes_nothing(host, args, message):
    before = snapshot(host)
    result = run(args)
    assert result.get("failed") and message in result["msg"], result.get("msg")
    assert snapshot(host) == before


def test_exclusive_on_every_level(host):
    result = run({"name": "/machine/tenant/rt", "cpus": "2-3", "exclusive": True})
    assert not result.get("failed"), result.get("msg")
    cpuset = host / "cg" / "cpuset" / "machine"
    for level in (cpuset, cpuset / "tenant.partition", cpuset / "tenant.partition" / "rt.partition"):
        assert (level / "cpuset.cpu_exclusive").read_text().strip() == "1"


def test_cpus_within_a_narrowed_parent(host):
    run({"name": "/machine/tenant", "cpus": "1-2"})
    result = run({"name": "/machine/tenant/rt", "cpus": "3"})
    assert result.get("failed") and "not within the parent '/machine/tenant.partition'" in result["msg"]


def _guest(host, name, domid, pid, partition="machine/production.partition"):
    for key in ("cpu", "memory", "freezer"):
        _files(host / "cg" / key / partition / ("qemu-%d-%s.libvirt-qemu" % (domid, name)), {"tasks": str(pid)})
    (host / "run-qemu" / ("%s.pid" % name)).write_text("%d\n" % pid)
    _files(host / "proc" / str(pid), {"cgroup": "4:memory:/%s/qemu-%d-%s.libvirt-qemu\n0::/%s/qemu-%d-%s"
                                                ".libvirt-qemu/emulator" % (partition, domid, name, partition,
                                                                            domid, name)})


def test_absent_refuses_while_a_guest_runs_and_names_it(host):
    run({"name": "/machine/production"})
    _guest(host, "rt1", 7, 4242)
    before = snapshot(host)
    result = run({"name": "/machine/production", "state": "absent"})
    assert result.get("failed")
    assert "guest rt1 still runs inside" in result["msg"]
    assert "qemu-7-rt1.libvirt-qemu" in result["msg"]
    assert snapshot(host) == before


def test_absent_removes_deepest_first_everywhere(host):
    run({"name": "/machine/tenant/rt"})
    before = snapshot(host)
    checked = run({"name": "/machine/tenant", "state": "absent"}, check=True)
    assert checked["changed"] and snapshot(host) == before
    result = run({"name": "/machine/tenant", "state": "absent"})
    assert not result.get("failed"), result.get("msg")
    files = [w["file"] for w in result["writes"]]
    for key in USED:
        tenant = str(host / "cg" / key / "machine" / "tenant.partition")
        assert files.index(tenant + "/rt.partition") < files.index(tenant)
        assert not os.path.exists(tenant)
    assert run({"name": "/machine/tenant", "state": "absent"})["changed"] is False


def test_qemu_conf_controllers_are_honoured(host):
    (host / "qemu.conf").write_text('cgroup_controllers = [ "cpu", "cpuset" ]\n')
    result = run({"name": "/machine/production"})
    assert set(result["paths"]) == {"cpu", "cpuset"}
    assert not (host / "cg" / "freezer" / "machine" / "production.partition").exists()


# ---- systemd hosts ---------------------------------------------------------------------------

class FakeSystemctl:
    def __init__(self):
        self.calls = []
        self.active = set()
        self.refuse_start = None  # systemd's words when it refuses a start
        self.failed = set()
        self.on_reload = None     # what systemd's daemon-reload does to the cgroup files, where a test needs it

    def __call__(self, argv):
        self.calls.append(argv[1:])
        if argv[1] == "daemon-reload" and self.on_reload is not None:
            self.on_reload()
        if argv[1] == "is-active":
            if argv[2] in self.active:
                return 0, "active\n", ""
            return 3, ("failed\n" if argv[2] in self.failed else "inactive\n"), ""
        if argv[1] == "start" and self.refuse_start:
            return 1, "", self.refuse_start
        if argv[1] in ("start", "restart"):
            self.active.add(argv[2])
        if argv[1] == "stop":
            self.active.discard(argv[2])
        return 0, "", ""


@pytest.fixture
def systemd_host(host, monkeypatch):
    (host / "systemd").mkdir()
    monkeypatch.setattr(libvirt_partition.Host, "systemd_run_dir", str(host / "systemd"))
    monkeypatch.setattr(libvirt_partition.Host, "unit_dir", str(host / "etc-systemd"))
    fake = FakeSystemctl()
    monkeypatch.setattr(libvirt_partition.AnsibleModule, "run_command", lambda self, argv, **kw: fake(argv))
    monkeypatch.setattr(libvirt_partition.AnsibleModule, "get_bin_path", lambda self, name, **kw: "/bin/" + name)
    return host, fake


def test_systemd_slice_unit(systemd_host):
    host, fake = systemd_host
    args = {"name": "/machine/my-rt", "cpus": "2-3", "memory_hard_limit": "4G"}
    checked = run(args, check=True, diff=True)
    assert checked["changed"] and not (host / "etc-systemd").exists()
    assert [c for c in fake.calls if c[0] != "is-active"] == []
    result = run(args, diff=True)
    assert not result.get("failed"), result.get("msg")
    assert result["unit"] == "machine-my\\x2drt.slice"
    unit = pathlib.Path(result["unit_file"])
    assert unit == host / "etc-systemd" / "machine-my\\x2drt.slice"
    assert "AllowedCPUs=2-3" in unit.read_text() and "MemoryMax=%d" % (4 << 30) in unit.read_text()
    assert ["daemon-reload"] in fake.calls and ["start", "machine-my\\x2drt.slice"] in fake.calls
    assert "AllowedCPUs=2-3" in result["diff"]["after"]
    fake.calls.clear()
    again = run(args)
    assert not again["changed"] and [c for c in fake.calls if c[0] != "is-active"] == []
    gone = run({"name": "/machine/my-rt", "state": "absent"})
    assert gone["changed"] and not unit.exists()
    assert ["stop", "machine-my\\x2drt.slice"] in fake.calls


def test_systemd_refused_start_undoes_the_unit(systemd_host):
    host, fake = systemd_host
    fake.refuse_start = "Assertion failed on job for machine-rt.slice."
    failed = run({"name": "/machine/rt", "cpus": "2-3"})
    assert failed.get("failed")
    assert "machine-rt.slice: " in failed["msg"] and "Assertion failed on job for machine-rt.slice." in failed["msg"]
    assert "the unit change was undone" in failed["msg"], failed["msg"]
    assert not (host / "etc-systemd" / "machine-rt.slice").exists()
    assert fake.calls[-1] == ["daemon-reload"]
    # An existing unit gets its old text back.
    fake.refuse_start = None
    run({"name": "/machine/rt", "cpus": "2-3"})
    unit = host / "etc-systemd" / "machine-rt.slice"
    before = unit.read_text()
    fake.active.discard("machine-rt.slice")
    fake.refuse_start = "Unit machine.slice is masked."
    failed = run({"name": "/machine/rt", "cpus": "2"})
    assert failed.get("failed") and "Unit machine.slice is masked." in failed["msg"], failed
    assert unit.read_text() == before


def test_systemd_machine_is_a_drop_in_never_a_replacement_unit(systemd_host):
    host, fake = systemd_host
    result = run({"name": "/machine", "cpus": "0"})
    assert not result.get("failed"), result.get("msg")
    dropin = host / "etc-systemd" / "machine.slice.d" / "50-rtvirt-kvm.conf"
    assert result["unit_file"] == str(dropin) and result["unit"] == "machine.slice"
    assert dropin.read_text().splitlines()[1:] == ["[Slice]", "AllowedCPUs=0"]
    assert not (host / "etc-systemd" / "machine.slice").exists()
    assert run({"name": "/machine", "cpus": "0"})["changed"] is False


def test_systemd_exclusive_needs_cpuset_on_the_unified_hierarchy(systemd_host):
    host, _fake = systemd_host
    result = run({"name": "/rt", "cpus": "2-3", "exclusive": True}, check=True)
    assert result["failed"] and "no cpuset controller on the unified hierarchy" in result["msg"], result
    assert not (host / "etc-systemd").exists()


def test_systemd_exclusive_false_without_cpuset_on_the_unified_hierarchy_is_a_no_op(systemd_host):
    """host_prep passes exclusive: false for every shared partition; a systemd host with v1 controllers has no
    v2 partition to dissolve, so that must not fail."""
    host, _fake = systemd_host
    result = run({"name": "/rt", "cpus": "2-3", "exclusive": False})
    assert not result.get("failed"), result.get("msg")
    assert "AllowedCPUs=2-3" in (host / "etc-systemd" / "rt.slice").read_text()
    assert "partition" not in result


def test_systemd_machine_cannot_be_exclusive(systemd_host):
    result = run({"name": "/machine", "cpus": "0", "exclusive": True}, check=True)
    assert result["failed"] and "libvirt's default partition" in result["msg"], result


# --------------------------------------------------------------------------------------------
# Switching host_prep's modes (issue 4): dedicated emulator CPU <-> shared, on a 4-CPU fake v1 host.
# realtime 2-3, emulator 1, housekeeping 0. Dedicated: /machine 0, /rt 1-3 exclusive. Shared: /machine 0-1,
# /rt 0-3 not exclusive.

HOST_PREP_PARTITIONS = pathlib.Path(__file__).resolve().parents[4] / "roles" / "host_prep" / "tasks" / "partitions.yml"


def _host_prep_steps():
    """partitions.yml's libvirt_partition tasks in order: (which partitions, exclusive) or ("/machine", None)."""
    import yaml
    steps = []
    for task in yaml.safe_load(HOST_PREP_PARTITIONS.read_text()):
        args = task["rtvirt.kvm.libvirt_partition"]
        if args["name"] == "/machine":
            steps.append(("/machine", None))
        else:
            loop = task["loop"].replace(" ", "")
            assert ("rejectattr('exclusive')" in loop) != ("selectattr('exclusive')" in loop), loop
            steps.append(("selectattr" in loop, args["exclusive"]))
    return steps


def _converge_like_host_prep(dedicated):
    """Run the module calls host_prep's partitions.yml makes, in its order, for one mode."""
    rt = {"name": "/rt", "cpus": "1-3" if dedicated else "0-3"}
    results = []
    for selects_exclusive, exclusive in _host_prep_steps():
        if selects_exclusive == "/machine":
            results.append(run({"name": "/machine", "cpus": "0" if dedicated else "0-1"}))
        elif selects_exclusive == dedicated:
            assert exclusive is dedicated
            results.append(run(dict(rt, exclusive=exclusive)))
    assert [r.get("msg") for r in results if r.get("failed")] == []
    return results


def _rt_state(host):
    cpuset = host / "cg" / "cpuset"
    return {"rt": (cpuset / "rt.partition" / "cpuset.cpus").read_text().strip(),
            "rt_exclusive": (cpuset / "rt.partition" / "cpuset.cpu_exclusive").read_text().strip(),
            "machine": (cpuset / "machine" / "cpuset.cpus").read_text().strip()}


def test_host_prep_order_drops_exclusive_before_machine_widens():
    """The order partitions.yml has: not-exclusive partitions, /machine, exclusive partitions."""
    assert _host_prep_steps() == [(False, False), ("/machine", None), (True, True)]


def test_dedicated_to_shared_to_dedicated_in_host_prep_order(host, partition_record):
    _converge_like_host_prep(dedicated=True)
    assert _rt_state(host) == {"rt": "1-3", "rt_exclusive": "1", "machine": "0"}
    shared = _converge_like_host_prep(dedicated=False)
    assert _rt_state(host) == {"rt": "0-3", "rt_exclusive": "0", "machine": "0-1"}
    # /rt's own call: the flag goes first, then its CPUs widen onto /machine's CPU 0.
    rt_cpuset = str(host / "cg" / "cpuset" / "rt.partition")
    assert [w for w in shared[0]["writes"] if w["file"].startswith(rt_cpuset)] == [
        {"file": rt_cpuset + "/cpuset.cpu_exclusive", "value": "0"},
        {"file": rt_cpuset + "/cpuset.cpus", "value": "0-3"}]
    # /machine's: its CPUs, and the record the qemu hook re-creates it from.
    assert [w["file"] for w in shared[1]["writes"]] == [str(host / "cg" / "cpuset" / "machine" / "cpuset.cpus"),
                                                        str(partition_record)]
    _converge_like_host_prep(dedicated=True)
    assert _rt_state(host) == {"rt": "1-3", "rt_exclusive": "1", "machine": "0"}
    assert [r["changed"] for r in _converge_like_host_prep(dedicated=True)] == [False, False]
    # Going shared again and converging twice changes nothing the second time.
    _converge_like_host_prep(dedicated=False)
    assert [r["changed"] for r in _converge_like_host_prep(dedicated=False)] == [False, False]


def test_machine_widening_while_rt_is_exclusive_is_refused_before_writing(host):
    """The order this replaces (/machine first, exclusivity never dropped) fails, and writes nothing."""
    _converge_like_host_prep(dedicated=True)
    before = snapshot(host)
    result = run({"name": "/machine", "cpus": "0-1"})
    assert result.get("failed"), result
    assert "overlap on 1" in result["msg"] and "cpu_exclusive" in result["msg"], result["msg"]
    assert "'/machine'" in result["msg"] and "'/rt.partition'" in result["msg"], result["msg"]
    assert snapshot(host) == before


def test_exclusive_before_machine_narrows_is_refused_before_writing(host):
    """And the other way round: /rt cannot become exclusive while /machine still holds its CPUs."""
    _converge_like_host_prep(dedicated=False)
    before = snapshot(host)
    result = run({"name": "/rt", "cpus": "1-3", "exclusive": True})
    assert result.get("failed") and "overlap on 1" in result["msg"], result.get("msg")
    assert snapshot(host) == before


def test_exclusive_false_on_a_shared_partition_writes_nothing(host):
    run({"name": "/rt", "cpus": "0-3"})
    result = run({"name": "/rt", "cpus": "0-3", "exclusive": False})
    assert result["changed"] is False and result["writes"] == [], result


def test_systemd_exclusive_false_dissolves_the_partition_before_the_unit_changes(systemd_host):
    """Dedicated -> shared on a systemd host: rt.slice is an isolated partition on 1-3 and is to become a member
    on 0-3. The partition is dissolved while it still has 1-3, then systemd gets AllowedCPUs=0-3."""
    host, fake = systemd_host
    unified = host / "cg" / "unified"
    _files(unified, {"cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": "cpuset cpu memory",
                     "cpuset.cpus.effective": "0-3", "cpuset.mems.effective": "0"})
    _files(unified / "machine.slice", {"cpuset.cpus": "0", "cpuset.cpus.effective": "0", "cpuset.mems": "",
                                       "cpuset.mems.effective": "0", "cpuset.cpus.partition": "member",
                                       "cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": ""})
    _files(unified / "rt.slice", {"cpuset.cpus": "1-3", "cpuset.cpus.effective": "1-3", "cpuset.mems": "",
                                  "cpuset.mems.effective": "0", "cpuset.cpus.partition": "isolated",
                                  "cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": ""})
    unit = host / "etc-systemd" / "rt.slice"
    unit.parent.mkdir(parents=True)
    fake.active.add("rt.slice")
    # The unit a dedicated run wrote (on a fake tree the module only checks, it does not need systemd's cgroup).
    dedicated = run({"name": "/rt", "cpus": "1-3"})
    assert not dedicated.get("failed") and "AllowedCPUs=1-3" in unit.read_text(), dedicated
    args = {"name": "/rt", "cpus": "0-3", "exclusive": False}
    checked = run(args, check=True)
    assert not checked.get("failed"), checked.get("msg")
    assert checked["planned"][0].startswith("write 'member' to rt.slice/cpuset.cpus.partition"), checked["planned"]
    assert checked["planned"][1:] == ["write %s" % unit, "systemctl daemon-reload"], checked["planned"]
    assert (unified / "rt.slice" / "cpuset.cpus.partition").read_text().strip() == "isolated"
    result = run(args)
    assert not result.get("failed"), result.get("msg")
    assert [w["file"] for w in result["writes"]] == [
        str(unified / "rt.slice" / "cpuset.cpus.partition"), str(unit), "systemctl daemon-reload"], result["writes"]
    assert result["writes"][0]["value"] == "member" and result["partition"] == "member"
    assert "AllowedCPUs=0-3" in unit.read_text()


class FailingFiles(PlainFiles):
    """A plain tree whose kernel refuses one file: the seam a real failure comes through."""

    def __init__(self, refused):
        super().__init__()
        self.refused = refused

    def write(self, target, data):
        if target == self.refused:
            raise OSError(5, "Input/output error")
        super().write(target, data)


def test_a_failure_in_the_last_hierarchy_undoes_every_hierarchy(host, monkeypatch):
    """Directories in every hierarchy, the cpuset engine's levels, then a tunable the kernel refuses: the
    whole run is undone, newest first, the cpuset engine's part included."""
    memory = host / "cg" / "memory" / "machine" / "production.partition"
    monkeypatch.setattr(libvirt_partition.Host, "files", FailingFiles(str(memory / "memory.limit_in_bytes")))
    before = snapshot(host)
    result = run({"name": "/machine/production", "cpus": "1", "cpu_shares": 2048, "memory_hard_limit": "1G"})
    assert result.get("failed") and result["changed"] is False, result
    assert result["msg"].startswith("write '1073741824' to %s/memory.limit_in_bytes failed: Input/output error "
                                    "(EIO): partition /machine/production, memory_hard_limit=1073741824: the kernel "
                                    "refused it; rolled back " % memory), result["msg"]
    assert result["rollback_failures"] == []
    assert result["rolled_back"][0] == "write '2048' to %s" % (
        host / "cg" / "cpu" / "machine" / "production.partition" / "cpu.shares")
    assert "mkdir '/machine/production.partition'" in result["rolled_back"]
    assert snapshot(host) == before


# The record of what the collection manages: what host_prep's qemu hook may re-create at a guest's start.

def _recorded(path):
    return json.loads(path.read_text())["partitions"] if path.exists() else None


def test_record_is_written_on_present_and_dropped_on_absent(host, partition_record):
    checked = run({"name": "/machine/production", "cpus": "1-2", "exclusive": True}, check=True, diff=True)
    assert checked["changed"] and not partition_record.exists(), "check mode wrote the record"
    step = "record /machine/production in %s (%s)" % (partition_record, '{"cpus": "1-2", "exclusive": true}')
    assert checked["planned"][-1] == step
    assert '%s /machine/production = {"cpus": "1-2", "exclusive": true}' % partition_record in checked["diff"]["after"]
    created = run({"name": "/machine/production", "cpus": "1-2", "exclusive": True})
    assert created["planned"] == checked["planned"]
    assert created["writes"][-1] == {"file": str(partition_record), "value": "<record /machine/production>"}
    assert _recorded(partition_record) == {"/machine/production": {"cpus": "1-2", "exclusive": True}}
    assert oct(partition_record.stat().st_mode & 0o777) == "0o644"
    # A call without cpus keeps the partition's CPUs, and so the recorded ones; exclusive=false is the default.
    kept = run({"name": "/machine/production", "exclusive": False})
    assert _recorded(partition_record) == {"/machine/production": {"cpus": "1-2"}}
    assert kept["changed"]
    assert not run({"name": "/machine/production"})["changed"]
    other = run({"name": "/machine/other", "cpus": "3"})
    assert not other.get("failed"), other["msg"]
    before = partition_record.read_text()
    checked_absent = run({"name": "/machine/production", "state": "absent"}, check=True)
    assert checked_absent["planned"][-1] == "drop /machine/production from the partition record %s" % partition_record
    assert partition_record.read_text() == before, "check mode wrote the record"
    run({"name": "/machine/production", "state": "absent"})
    assert _recorded(partition_record) == {"/machine/other": {"cpus": "3"}}
    again = run({"name": "/machine/production", "state": "absent"})
    assert not again["changed"] and again["writes"] == []


def test_a_partition_already_there_is_recorded_by_its_next_run(host, partition_record):
    """A host prepared by an earlier version has the cgroups but no record: the next run only records."""
    run({"name": "/machine/production", "cpus": "1"})
    partition_record.unlink()
    result = run({"name": "/machine/production", "cpus": "1"})
    assert result["changed"] and result["writes"] == [{"file": str(partition_record),
                                                       "value": "<record /machine/production>"}]
    assert _recorded(partition_record) == {"/machine/production": {"cpus": "1"}}


def test_a_record_that_is_not_one_is_refused_and_kept(host, partition_record):
    partition_record.write_text("[1, 2]\n")
    before = snapshot(host)
    result = run({"name": "/machine/production"})
    assert result.get("failed")
    assert "partition record %s is not a JSON object" % partition_record in result["msg"]
    assert partition_record.read_text() == "[1, 2]\n"
    # The cgroups were converged first (the record step comes after them, under the same lock).
    assert snapshot(host) != before


def test_systemd_hosts_keep_no_record(systemd_host, partition_record):
    result = run({"name": "/machine/production", "cpus": "1"})
    assert not result.get("failed"), result.get("msg")
    assert not partition_record.exists()


# ---- tunables: what the kernel lacks, refuses or shows ------------------------------------------

def test_a_block_weight_this_kernel_lacks_is_refused_naming_the_knob(host, monkeypatch):
    """No CFQ (blkio.weight) and no BFQ (blkio.bfq.weight, no device offers bfq): refused before any write."""
    (host / "cg" / "blkio" / "machine" / "blkio.bfq.weight").unlink()
    monkeypatch.setattr(libvirt_partition.Host, "sys_root", str(host / "sys"))
    before = snapshot(host)
    result = run({"name": "/machine/x", "cpu_shares": 512, "blkio_weight": 300})
    assert result.get("failed"), result
    assert result["msg"].startswith("partition /machine/x: blkio_weight=300: blkio.bfq.weight nor blkio.weight not "
                                    "found (v1 blkio.weight was CFQ's, which Linux 5.0 removed"), result["msg"]
    assert result["msg"].endswith("; nothing was changed")
    assert snapshot(host) == before


def test_a_new_top_level_partition_finds_the_bfq_weight_beside_it(host, monkeypatch):
    """The root cgroup never shows blkio.bfq.weight; a cgroup beside the new partition does."""
    monkeypatch.setattr(libvirt_partition.Host, "sys_root", str(host / "sys"))
    result = run({"name": "/rt", "blkio_weight": 300}, diff=True)
    assert not result.get("failed"), result.get("msg")
    weight = host / "cg" / "blkio" / "rt.partition" / "blkio.bfq.weight"
    assert weight.read_text().strip() == "300"
    assert "%s = 300" % weight in result["diff"]["after"] and "%s = (new)" % weight in result["diff"]["before"]
    assert any("no block device uses the bfq scheduler" in note for note in result["notes"]), result["notes"]


def test_memory_limits_compare_in_whole_pages_and_unlimited_as_the_kernels_maximum(host):
    mem = host / "cg" / "memory" / "machine" / "production.partition"
    odd = (1 << 30) + 5
    assert not run({"name": "/machine/production", "memory_hard_limit": str(odd)}).get("failed")
    # What the kernel would hold: whole pages.
    (mem / "memory.limit_in_bytes").write_text("%d\n" % (odd // 4096 * 4096))
    assert run({"name": "/machine/production", "memory_hard_limit": str(odd)})["changed"] is False
    assert run({"name": "/machine/production", "memory_hard_limit": "unlimited"})["writes"] == [
        {"file": str(mem / "memory.limit_in_bytes"), "value": "-1"}]
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert run({"name": "/machine/production", "memory_hard_limit": "unlimited"})["changed"] is False


@pytest.fixture
def systemd_v2(systemd_host):
    """The systemd host with cpu, memory and io on the unified hierarchy, and the slice's cgroup directory."""
    host, fake = systemd_host
    (host / "cg" / "unified" / "cgroup.controllers").write_text("cpu memory io\n")
    slice_dir = host / "cg" / "unified" / "rt.slice"
    slice_dir.mkdir()
    return host, fake, slice_dir


def test_systemd_slice_files_are_read_back_after_systemd_applied_the_unit(systemd_v2):
    host, fake, slice_dir = systemd_v2
    result = run({"name": "/rt", "cpu_shares": 300})
    assert result.get("failed") and result["changed"], result
    assert ("partition /rt (rt.slice): systemd took the unit, but the kernel holds other values: %s/cpu.weight reads "
            "None, not 300 (CPUWeight=300)" % slice_dir) in result["msg"], result["msg"]
    (slice_dir / "cpu.weight").write_text("300\n")
    again = run({"name": "/rt", "cpu_shares": 300})
    assert not again.get("failed") and again["changed"] is False, again


def test_systemd_slice_file_changed_by_hand_plans_a_daemon_reload(systemd_v2):
    host, fake, slice_dir = systemd_v2
    (slice_dir / "cpu.weight").write_text("77\n")
    (slice_dir / "memory.max").write_text("%d\n" % ((1 << 30) // 4096 * 4096))
    (slice_dir / "memory.current").write_text("0\n")
    fake.active.add("rt.slice")
    unit = host / "etc-systemd" / "rt.slice"
    unit.parent.mkdir()
    unit.write_text(libvirt_partition_unit("/rt", "CPUWeight=300\nMemoryMax=%d\n" % (1 << 30)))
    checked = run({"name": "/rt", "cpu_shares": 300, "memory_hard_limit": "1G"}, check=True, diff=True)
    assert checked["changed"] and checked["writes"] == [], checked
    assert checked["planned"] == ["systemctl daemon-reload (%s/cpu.weight reads 77, not 300 as CPUWeight=300 says)"
                                  % slice_dir], checked["planned"]
    assert checked["diff"]["before"] == "%s/cpu.weight = 77\n" % slice_dir
    assert checked["diff"]["after"] == "%s/cpu.weight = 300\n" % slice_dir
    # The run itself reloads systemd (the unit file stays as it is), which writes the properties again; here the
    # value is put back the way systemd would, so that the read-back after the reload finds it.
    fake.on_reload = lambda: (slice_dir / "cpu.weight").write_text("300\n")
    repaired = run({"name": "/rt", "cpu_shares": 300, "memory_hard_limit": "1G"})
    assert not repaired.get("failed") and repaired["changed"], repaired
    assert ["daemon-reload"] in fake.calls and unit.read_text().count("CPUWeight=300") == 1


def test_systemd_hard_limit_below_usage_is_refused_before_the_unit_is_written(systemd_v2):
    host, fake, slice_dir = systemd_v2
    (slice_dir / "memory.current").write_text("%d\n" % (1 << 30))
    result = run({"name": "/rt", "memory_hard_limit": "512M"})
    assert result.get("failed") and not result.get("writes"), result
    assert result["msg"].startswith("partition /rt (rt.slice): memory_hard_limit=536870912 is below the 1073741824 "
                                    "bytes its tasks use now (memory.current)"), result["msg"]
    assert not (host / "etc-systemd").exists()


def test_systemd_weight_out_of_v2_range_is_refused(systemd_v2):
    result = run({"name": "/rt", "cpu_shares": 20000}, check=True)
    assert result.get("failed"), result
    assert result["msg"] == "partition /rt: cpu_shares=20000 is outside cpu.weight's range 1-10000 on cgroup v2"


def libvirt_partition_unit(name, body):
    from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import parse_name
    from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_systemd import render_slice_unit
    return render_slice_unit(parse_name(name)).rstrip("\n") + "\n" + body
