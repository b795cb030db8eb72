"""rtvirt.kvm.cgroup_cpuset through Ansible against this machine's real cgroup v1 cpuset hierarchy."""
import errno
import os

import pytest

from tests.integration.cpuset.conftest import cgroup_of, read, snapshot
from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.real

MODULE = "rtvirt.kvm.cgroup_cpuset"


def online_cpus(mountpoint):
    return read(mountpoint, "", "cpuset.effective_cpus")


def test_seed_failure_reproduces_raw_then_succeeds_through_the_module(cpuset_root, sandbox, spawn):
    mountpoint = cpuset_root[0]
    pid = spawn()
    os.mkdir(os.path.join(mountpoint, sandbox))
    with pytest.raises(OSError) as caught:
        with open(os.path.join(mountpoint, sandbox, "tasks"), "w") as handle:
            handle.write(str(pid))
    assert caught.value.errno == errno.ENOSPC            # "No space left on device", as in the seed

    result = run_module(MODULE, {"path": sandbox + "/app", "procs": [pid]})
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert cgroup_of(pid) == "/%s/app" % sandbox
    assert read(mountpoint, sandbox, "cpuset.mems") == read(mountpoint, "", "cpuset.mems")
    files = [w["file"] for w in result["writes"]]
    # cpus and mems of the empty parent are filled before the child, and both before the task.
    assert files.index(os.path.join(mountpoint, sandbox, "cpuset.mems")) < files.index(
        os.path.join(mountpoint, sandbox, "app", "cpuset.cpus")) < files.index(
        os.path.join(mountpoint, sandbox, "app", "cgroup.procs"))


def test_nested_three_levels_with_only_cpus(cpuset_root, sandbox):
    mountpoint = cpuset_root[0]
    result = run_module(MODULE, {"path": sandbox + "/a/b", "cpus": "1"})
    assert result["changed"], result.get("msg")
    assert read(mountpoint, sandbox, "cpuset.cpus") == online_cpus(mountpoint)
    assert read(mountpoint, sandbox + "/a", "cpuset.cpus") == online_cpus(mountpoint)
    assert read(mountpoint, sandbox + "/a/b", "cpuset.cpus") == "1"
    assert read(mountpoint, sandbox + "/a/b", "cpuset.mems") == read(mountpoint, "", "cpuset.mems")
    assert [c["path"] for c in result["cgroups"]] == [sandbox, sandbox + "/a", sandbox + "/a/b"]
    assert result["cgroups"][0]["before"] == {"exists": False}

    again = run_module(MODULE, {"path": sandbox + "/a/b", "cpus": "1"})
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == []


def test_shrink_under_a_busy_child(cpuset_root, sandbox, spawn):
    mountpoint = cpuset_root[0]
    pid = spawn()
    assert not run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "0-1"},
                                               {"path": sandbox + "/busy", "cpus": "0-1", "procs": [pid]}]}).get("failed")
    result = run_module(MODULE, {"path": sandbox, "cpus": "1"})
    assert not result.get("failed"), result.get("msg")
    assert [w["value"] for w in result["writes"]] == ["1", "1"]
    assert result["writes"][0]["file"].endswith("/busy/cpuset.cpus")
    assert read(mountpoint, sandbox + "/busy", "cpuset.cpus") == "1"
    assert any("narrowed '/%s/busy'" % sandbox in note for note in result["notes"])
    assert cgroup_of(pid) == "/%s/busy" % sandbox


def test_move_a_busy_cgroup_to_other_cpus(cpuset_root, sandbox, spawn):
    mountpoint = cpuset_root[0]
    pid = spawn()
    run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "0-1"},
                                    {"path": sandbox + "/g", "cpus": "0", "procs": [pid]}]})
    result = run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "1"}, {"path": sandbox + "/g", "cpus": "1"}]})
    assert not result.get("failed"), result.get("msg")
    assert read(mountpoint, sandbox, "cpuset.cpus") == "1"
    assert read(mountpoint, sandbox + "/g", "cpuset.cpus") == "1"
    with open("/proc/%d/status" % pid) as handle:
        assert "Cpus_allowed_list:\t1\n" in handle.read()


def foreign_holders_of(mountpoint, sandbox, cpus):
    holders = []
    for entry in sorted(os.listdir(mountpoint)):
        path = os.path.join(mountpoint, entry)
        if os.path.isdir(path) and entry != sandbox:
            held = read(mountpoint, entry, "cpuset.cpus")
            if held:
                holders.append(entry)
    return holders


def test_exclusive_siblings(cpuset_root, sandbox):
    mountpoint = cpuset_root[0]
    cgroups = [{"path": sandbox, "cpus": "0-1", "cpu_exclusive": True},
               {"path": sandbox + "/rt", "cpus": "1", "cpu_exclusive": True},
               {"path": sandbox + "/house", "cpus": "0", "cpu_exclusive": True}]
    foreign = foreign_holders_of(mountpoint, sandbox, "0-1")
    result = run_module(MODULE, {"cgroups": cgroups})
    if foreign:
        # Another top-level cpuset (libvirt's machine, say) holds these CPUs: the kernel would refuse an
        # exclusive sibling, and so must the module, naming it, before writing anything.
        assert result.get("failed") and "'/%s'" % foreign[0] in result["msg"], result
        assert not os.path.exists(os.path.join(mountpoint, sandbox))
        return
    assert not result.get("failed"), result.get("msg")
    assert read(mountpoint, sandbox + "/rt", "cpuset.cpu_exclusive") == "1"
    before = snapshot(mountpoint, sandbox)
    overlap = run_module(MODULE, {"path": sandbox + "/house", "cpus": "0-1"})
    assert overlap.get("failed")
    assert "overlap on 1" in overlap["msg"] and "'/%s/rt'" % sandbox in overlap["msg"], overlap["msg"]
    assert snapshot(mountpoint, sandbox) == before
    # Clearing goes children first; the kernel would answer EBUSY the other way round.
    cleared = run_module(MODULE, {"cgroups": [dict(c, cpu_exclusive=False) for c in cgroups]})
    assert not cleared.get("failed"), cleared.get("msg")
    assert [w["file"].rsplit("/", 2)[-2] for w in cleared["writes"]][-1] == sandbox


def test_absent_with_a_live_task_fails_then_migrates(cpuset_root, sandbox, spawn):
    mountpoint = cpuset_root[0]
    pid = spawn()
    run_module(MODULE, {"path": sandbox + "/guest/vcpu0", "cpus": "1", "procs": [pid]})
    before = snapshot(mountpoint, sandbox)
    refused = run_module(MODULE, {"path": sandbox + "/guest", "state": "absent"})
    assert refused.get("failed") and str(pid) in refused["msg"] and "migrate: true" in refused["msg"], refused
    assert snapshot(mountpoint, sandbox) == before
    removed = run_module(MODULE, {"path": sandbox + "/guest", "state": "absent", "migrate": True})
    assert removed["changed"] and not removed.get("failed"), removed.get("msg")
    assert not os.path.exists(os.path.join(mountpoint, sandbox, "guest"))
    assert cgroup_of(pid) == "/" + sandbox


def test_check_mode_leaves_the_tree_byte_for_byte(cpuset_root, sandbox, spawn):
    mountpoint = cpuset_root[0]
    pid = spawn()
    run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "0-1"}, {"path": sandbox + "/a", "cpus": "0-1"}]})
    before = snapshot(mountpoint, sandbox)
    listing = sorted(os.listdir(os.path.join(mountpoint, sandbox)))
    result = run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "1"},
                                             {"path": sandbox + "/a/new", "procs": [pid]},
                                             {"path": sandbox + "/b", "cpus": "1"}]}, check=True)
    assert result["changed"] and result["writes"] == [] and result["planned"], result
    assert snapshot(mountpoint, sandbox) == before
    assert sorted(os.listdir(os.path.join(mountpoint, sandbox))) == listing
    assert cgroup_of(pid) != "/%s/a/new" % sandbox


@pytest.mark.parametrize("args, fragment", [
    ({"cpus": "3-1"}, "reversed"),
    ({"cpus": "0,,1"}, "empty element"),
    ({"cpus": "0-4095"}, "offline or absent"),
    ({"mems": "7"}, "NUMA nodes 7 that do not exist"),
    ({"partition": "isolated"}, "needs cgroup v2"),
    ({"path": "../escape"}, "'..' component"),
    ({"path": "/sys/fs/cgroup/cpuset/x"}, "is absolute"),
])
def test_bad_input_fails_clearly_and_touches_nothing(cpuset_root, sandbox, args, fragment):
    mountpoint = cpuset_root[0]
    run_module(MODULE, {"path": sandbox, "cpus": "0"})
    before = snapshot(mountpoint, sandbox)
    result = run_module(MODULE, dict({"path": sandbox + "/child"}, **args))
    assert result.get("failed") and fragment in result["msg"], result
    assert snapshot(mountpoint, sandbox) == before
    assert not os.path.exists(os.path.join(mountpoint, sandbox, "child"))
    assert not os.path.exists(os.path.join(mountpoint, "..", "escape"))


def test_child_outside_parent_unless_widened_together(cpuset_root, sandbox):
    mountpoint = cpuset_root[0]
    run_module(MODULE, {"path": sandbox, "cpus": "0"})
    refused = run_module(MODULE, {"path": sandbox + "/c", "cpus": "1"})
    assert refused.get("failed") and "widen the parent in the same call" in refused["msg"]
    assert not os.path.exists(os.path.join(mountpoint, sandbox, "c"))
    widened = run_module(MODULE, {"cgroups": [{"path": sandbox, "cpus": "0-1"}, {"path": sandbox + "/c", "cpus": "1"}]})
    assert not widened.get("failed"), widened.get("msg")
    assert read(mountpoint, sandbox + "/c", "cpuset.cpus") == "1"


def test_symlinked_path_is_refused(tmp_path):
    tree = tmp_path / "tree"
    (tree / "real").mkdir(parents=True)
    (tree / "cpuset.effective_cpus").write_text("0-1\n")
    (tree / "cpuset.effective_mems").write_text("0\n")
    os.symlink(tmp_path, tree / "link")
    result = run_module(MODULE, {"path": "link/x", "mountpoint": str(tree), "hierarchy_version": 1})
    assert result.get("failed") and "is a symlink" in result["msg"]
    assert not (tmp_path / "x").exists()
