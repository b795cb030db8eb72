"""cgroup_cpuset through main() against fake trees: cgroup v2 semantics, check mode, diff, idempotence."""
import os
from unittest import mock

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupMount
from ansible_collections.rtvirt.kvm.plugins.modules import cgroup_cpuset
from _module_runner import run_module


@pytest.fixture
def v2_tree(tmp_path):
    """A v2 root as the kernel shows it: effective sets, cpuset available, nothing enabled below."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu memory\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cpuset.cpus.effective").write_text("0-3\n")
    (root / "cpuset.mems.effective").write_text("0\n")
    (root / "cgroup.procs").write_text("1\n")
    return root


def run(tree, check=False, diff=False, **args):
    args.setdefault("mountpoint", str(tree))
    args.setdefault("hierarchy_version", 2)
    return run_module(cgroup_cpuset, args, check_mode=check, diff=diff)


def files_of(tree):
    result = {}
    for dirpath, dirs, files in os.walk(tree):
        for name in files:
            with open(os.path.join(dirpath, name)) as handle:
                result[os.path.relpath(os.path.join(dirpath, name), tree)] = handle.read()
        for name in dirs:
            result[os.path.relpath(os.path.join(dirpath, name), tree) + "/"] = None
    return result


def test_v2_enables_cpuset_top_down_then_writes(v2_tree):
    result = run(v2_tree, path="machine/rt", cpus="2-3")
    assert result["changed"], result
    base = str(v2_tree)
    assert [(w["file"].replace(base, ""), w["value"]) for w in result["writes"]] == [
        ("/cgroup.subtree_control", "+cpuset"),
        ("/machine", "<mkdir>"),
        ("/machine/cgroup.subtree_control", "+cpuset"),
        ("/machine/rt", "<mkdir>"),
        ("/machine/rt/cpuset.cpus", "2-3"),
    ]
    # v2: an omitted cpus/mems is inherited (left empty), never copied from the parent.
    assert not (v2_tree / "machine" / "cpuset.cpus").exists()
    assert result["hierarchy_version"] == 2


def test_v2_second_run_changes_nothing(v2_tree):
    first = run(v2_tree, path="rt", cpus="2-3", partition="isolated")
    assert first["changed"] and not first.get("failed"), first
    again = run(v2_tree, path="rt", cpus="2-3", partition="isolated")
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == []


def test_a_rehearsal_tree_cgroup_is_removed_with_its_knob_files(v2_tree):
    assert not run(v2_tree, path="rt", cpus="2-3").get("failed")
    result = run(v2_tree, path="rt", state="absent")
    assert not result.get("failed"), result.get("msg")
    assert not (v2_tree / "rt").exists()


def test_v2_local_partition_after_cpus(v2_tree):
    result = run(v2_tree, path="rt", cpus="2-3", partition="isolated")
    values = [(os.path.basename(w["file"]), w["value"]) for w in result["writes"]]
    assert values[-2:] == [("cpuset.cpus", "2-3"), ("cpuset.cpus.partition", "isolated")]


def test_check_mode_writes_nothing(v2_tree):
    before = files_of(v2_tree)
    result = run(v2_tree, check=True, path="machine/rt", cpus="2-3")
    assert result["changed"] and result["writes"] == [] and len(result["planned"]) == 5
    assert files_of(v2_tree) == before


def test_diff_names_real_paths(v2_tree):
    result = run(v2_tree, diff=True, check=True, path="rt", cpus="1")
    assert "[%s/rt]" % v2_tree in result["diff"]["after"]
    assert "exists = False" in result["diff"]["before"] and "cpus = 1" in result["diff"]["after"]


@pytest.mark.parametrize("args, fragment", [
    ({"path": "rt", "cpus": "5"}, "offline or absent (online: 0-3)"),
    ({"path": "rt", "cpus": "3-2"}, "reversed"),
    ({"path": "rt", "sched_load_balance": False}, "cgroup v1 knob"),
    ({"path": "rt", "partition": "exclusive"}, "value of partition must be one of"),
    ({"path": "a/../b"}, "'..' component"),
    ({"path": "/rt"}, "is absolute"),
    ({"path": "rt", "cgroups": [{"path": "x"}]}, "mutually exclusive"),
    ({"cgroups": [{"path": "a", "cpus": "1"}, {"path": "a", "cpus": "2"}]}, "listed twice"),
    # Found by test_hostile_arguments: these were looked up in the real /proc (/proc/-1/task).
    ({"path": "rt", "procs": [-1]}, "cgroup '/rt' procs: -1 is not a process or thread ID (Linux numbers them 1-4194303)"),
    ({"path": "rt", "threads": [0]}, "cgroup '/rt' threads: 0 is not a process or thread ID"),
    ({"path": "rt", "threads": [4194304]}, "cgroup '/rt' threads: 4194304 is not a process or thread ID"),
])
def test_bad_input_fails_and_touches_nothing(v2_tree, args, fragment):
    before = files_of(v2_tree)
    result = run(v2_tree, **args)
    assert result.get("failed") and fragment in result["msg"], result
    assert files_of(v2_tree) == before


def test_remote_partition_on_a_kernel_without_exclusive_names_it(v2_tree):
    run(v2_tree, path="machine/other", cpus="0")
    result = run(v2_tree, path="machine/rt", cpus="2-3", partition="root")
    assert result.get("failed") and "cpuset.cpus.exclusive (Linux 6.7 or later)" in result["msg"], result


def test_not_a_cgroup_mount_needs_a_version(tmp_path):
    result = run_module(cgroup_cpuset, {"path": "x", "mountpoint": str(tmp_path)})
    assert result.get("failed") and "is not a cgroup mount; set hierarchy_version" in result["msg"]


def test_remote_partition_writes_exclusive_top_down_where_the_kernel_has_it(v2_tree):
    machine = v2_tree / "machine"
    machine.mkdir()
    (v2_tree / "cgroup.subtree_control").write_text("cpuset\n")
    (machine / "cgroup.subtree_control").write_text("cpuset\n")
    (machine / "cpuset.cpus.exclusive").write_text("\n")
    (machine / "cpuset.cpus.partition").write_text("member\n")
    result = run(v2_tree, path="machine/rt", cpus="2-3", partition="root")
    assert not result.get("failed"), result["msg"]
    assert [(w["file"].replace(str(v2_tree), ""), w["value"]) for w in result["writes"]][-3:] == [
        ("/machine/cpuset.cpus.exclusive", "2-3"),
        ("/machine/rt/cpuset.cpus.exclusive", "2-3"),
        ("/machine/rt/cpuset.cpus.partition", "root"),
    ]


def _other_hierarchies(tmp_path, v2_tree, tasks):
    """A v1 cpu hierarchy holding a dead guest's cgroup, a v1 cpuset one (never touched) and the cpuset tree."""
    guest = "machine/qemu-3-rt1.libvirt-qemu"
    for top in ("cpu", "cpuset1"):
        os.makedirs(str(tmp_path / top / guest / "vcpu0"))
        if tasks:
            (tmp_path / top / guest / "vcpu0" / "tasks").write_text("4242\n")
            (tmp_path / top / "machine" / "tasks").write_text("")
    layout = mock.Mock(mounts=(CgroupMount(str(tmp_path / "cpu"), 1, ("cpu", "cpuacct")),
                               CgroupMount(str(tmp_path / "cpuset1"), 1, ("cpuset",)),
                               CgroupMount(str(v2_tree), 2, ("cpuset", "cpu", "memory"))))
    return guest, layout


def test_all_hierarchies_check_mode_lists_and_keeps(tmp_path, v2_tree):
    guest, layout = _other_hierarchies(tmp_path, v2_tree, tasks=True)
    with mock.patch.object(cgroup_cpuset, "discover_layout", return_value=layout):
        result = run(v2_tree, check=True, path=guest, state="absent", migrate=True, all_hierarchies=True)
    top = str(tmp_path / "cpu" / guest)
    assert result["changed"] and not result.get("failed"), result
    assert result["other_hierarchies"] == {"removed": [top + "/vcpu0", top],
                                           "moved": [{"tid": 4242, "to": str(tmp_path / "cpu" / "machine")}]}
    assert os.path.isdir(top + "/vcpu0") and (tmp_path / "cpu" / "machine" / "tasks").read_text() == ""


def test_all_hierarchies_removes_deepest_first_then_changes_nothing(tmp_path, v2_tree):
    guest, layout = _other_hierarchies(tmp_path, v2_tree, tasks=False)
    args = dict(path=guest, state="absent", migrate=True, all_hierarchies=True)
    with mock.patch.object(cgroup_cpuset, "discover_layout", return_value=layout):
        result = run(v2_tree, **args)
        again = run(v2_tree, **args)
    top = str(tmp_path / "cpu" / guest)
    assert result["changed"] and result["other_hierarchies"]["removed"] == [top + "/vcpu0", top], result
    assert not os.path.exists(top) and os.path.isdir(str(tmp_path / "cpuset1" / guest / "vcpu0"))
    assert not again["changed"] and again["other_hierarchies"] == {"removed": [], "moved": []}


@pytest.mark.parametrize("path", ["system.slice/foo", "machine", "user.slice/x"])
def test_all_hierarchies_only_below_libvirts_trees(tmp_path, v2_tree, path):
    _guest, layout = _other_hierarchies(tmp_path, v2_tree, tasks=False)
    with mock.patch.object(cgroup_cpuset, "discover_layout", return_value=layout):
        result = run(v2_tree, path=path, state="absent", all_hierarchies=True)
    assert result["failed"] and "must lie below machine/" in result["msg"], result
    assert os.path.isdir(str(tmp_path / "cpu" / _guest))
