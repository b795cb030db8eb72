"""The modules on a real systemd + cgroup v2 host, on both kernels (issue 6, item 2).

- cgroup_cpuset: nested creation enables +cpuset top-down, omitted cpus are inherited, check mode
  writes nothing, a second run changes nothing; v2 partitions: a local ``isolated`` partition, a
  request the kernel would mark invalid is refused before any write, a remote partition fails
  naming cpuset.cpus.exclusive on 6.1 and is written top-down on 6.12.
- libvirt_partition: a slice unit under /etc/systemd/system with AllowedCPUs=, surviving a
  daemon-reload and a restart, idempotent, removed again with state=absent.
- cpu_isolation_facts: cgroup mode v2 and the isolated partition.

Module calls take 12-17 s each under TCG, so each fixture runs one playbook (a few tasks) per kernel
and the tests only assert on its results and on what the guest reads back over SSH. Throwaway
cgroups live directly under the root (``rtvirt-test-<hex>``), outside systemd's slices; they are
removed afterwards and the root's cgroup.subtree_control is put back as it was.
"""
import json
import re
import subprocess
import uuid

import pytest

from tests.support.ansible_runner import REPO, ansible_env

pytestmark = pytest.mark.v2host

CG = "/sys/fs/cgroup"
UNIT_DIR = "/etc/systemd/system"
ABSENT = "<absent>"
_RECORD = re.compile(r"^v2host \| (?P<status>[A-Z]+!?)(?: \| rc=-?\d+)? => ", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Helpers

def sh(host, cmd):
    proc = host.ssh(cmd)
    assert proc.returncode == 0, "%r failed (rc=%d): %s" % (cmd, proc.returncode, proc.stderr)
    return proc.stdout


def read_files(host, paths):
    """Several small files in one SSH call: {path: text with newlines as spaces, or ABSENT}."""
    script = "; ".join(
        "if [ -e '{0}' ]; then printf '%s\\t%s\\n' '{0}' \"$(tr '\\n' ' ' < '{0}')\"; "
        "else printf '%s\\t{1}\\n' '{0}'; fi".format(path, ABSENT) for path in paths)
    result = {}
    for line in sh(host, script).splitlines():
        path, _tab, value = line.partition("\t")
        result[path] = value.strip()
    assert sorted(result) == sorted(paths), result
    return result


def run_playbook(host, tmp_path, tasks, name="play"):
    """Run ``tasks`` on the guest in one playbook; return each task's result in order.

    The minimal stdout callback prints one ``v2host | STATUS => {json}`` record per task, in order.
    Tasks expected to fail carry ``ignore_errors: true`` (their status reads ``FAILED!``).
    """
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(json.dumps([{"hosts": "v2host", "gather_facts": False, "tasks": tasks}], indent=1))
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(host.inventory_path), str(playbook)]
    proc = subprocess.run(argv, env=ansible_env(), cwd=str(REPO), capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, check=False)
    results = []
    decoder = json.JSONDecoder()
    for match in _RECORD.finditer(proc.stdout):
        value, _end = decoder.raw_decode(proc.stdout, match.end())
        value["_status"] = match.group("status")
        if value["_status"] in ("FAILED!", "UNREACHABLE!"):
            value.setdefault("failed", True)
        results.append(value)
    assert proc.returncode == 0 and len(results) == len(tasks), (
        "ansible-playbook rc=%d, %d result(s) for %d task(s)\n--- stdout\n%s\n--- stderr\n%s" % (
            proc.returncode, len(results), len(tasks), proc.stdout[-6000:], proc.stderr[-3000:]))
    return results


def writes_of(result):
    """(file below /sys/fs/cgroup, value) pairs of a cgroup_cpuset result."""
    return [(w["file"][len(CG) + 1:] if w["file"].startswith(CG + "/") else w["file"], w["value"])
            for w in result["writes"]]


def root_subtree(host):
    return sh(host, "cat %s/cgroup.subtree_control" % CG).split()


def remove_cgroups(host, paths, subtree_before):
    """Remove throwaway cgroups (deepest first) and put the root's +cpuset back as it was."""
    for path in sorted(paths, key=lambda p: -p.count("/")):
        host.ssh("if [ -d %s/%s ]; then rmdir %s/%s; fi" % (CG, path, CG, path))
    if "cpuset" not in subtree_before and "cpuset" in root_subtree(host):
        host.ssh("echo -cpuset > %s/cgroup.subtree_control" % CG)
    leftovers = [p for p in paths if host.ssh("test -e %s/%s" % (CG, p)).returncode == 0]
    assert not leftovers, leftovers
    assert sorted(root_subtree(host)) == sorted(subtree_before)


def module_task(module, args, check=False, may_fail=False):
    """One playbook task calling ``module``; check mode and ignore_errors on request."""
    task = {module: args}
    if check:
        task["check_mode"] = True
    if may_fail:
        task["ignore_errors"] = True
    return task


def cpuset_task(args, check=False, may_fail=False):
    return module_task("rtvirt.kvm.cgroup_cpuset", args, check, may_fail)


# --------------------------------------------------------------------------------------------
# 1. cgroup_cpuset: nesting, inheritance, check mode, idempotence

@pytest.fixture(scope="module")
def nested(v2host, tmp_path_factory):
    top = "rtvirt-test-%s" % uuid.uuid4().hex[:12]
    leaf = top + "/a/b"
    subtree_before = root_subtree(v2host)
    request = {"cgroups": [{"path": top, "cpus": "0-2"}, {"path": leaf}]}
    try:
        check, first, second = run_playbook(
            v2host, tmp_path_factory.mktemp("nested"),
            [cpuset_task(request, check=True), cpuset_task(request), cpuset_task(request)])
        files = read_files(v2host, [
            "%s/cgroup.subtree_control" % CG,
            "%s/%s/cgroup.subtree_control" % (CG, top),
            "%s/%s/cpuset.cpus" % (CG, top),
            "%s/%s/cpuset.cpus.effective" % (CG, top),
            "%s/%s/a/cgroup.subtree_control" % (CG, top),
            "%s/%s/a/cpuset.cpus" % (CG, top),
            "%s/%s/a/cpuset.cpus.effective" % (CG, top),
            "%s/%s/cpuset.cpus" % (CG, leaf),
            "%s/%s/cpuset.cpus.effective" % (CG, leaf),
            "%s/%s/cpuset.cpus.partition" % (CG, leaf),
        ])
    finally:
        remove_cgroups(v2host, [top, top + "/a", leaf], subtree_before)
    print("nested, %s: writes %s\nread back %s"
          % (v2host.kernel_release, json.dumps(first["writes"]), json.dumps(files, indent=1)))
    return dict(top=top, leaf=leaf, subtree_before=subtree_before, check=check, first=first, second=second,
                files=files)


def test_nested_creation_enables_cpuset_top_down(nested):
    top, leaf, files = nested["top"], nested["leaf"], nested["files"]
    first = nested["first"]
    assert first["changed"] and not first.get("failed"), first
    assert first["hierarchy_version"] == 2 and first["mountpoint"] == CG
    expected = [] if "cpuset" in nested["subtree_before"] else [("cgroup.subtree_control", "+cpuset")]
    expected += [
        (top, "<mkdir>"),
        (top + "/cgroup.subtree_control", "+cpuset"),
        (top + "/cpuset.cpus", "0-2"),
        (top + "/a", "<mkdir>"),
        (top + "/a/cgroup.subtree_control", "+cpuset"),
        (leaf, "<mkdir>"),
    ]
    assert writes_of(first) == expected
    # What the kernel shows: cpuset enabled on every level above the leaf.
    for level in ("", "/" + top, "/" + top + "/a"):
        assert "cpuset" in files["%s%s/cgroup.subtree_control" % (CG, level)].split(), (level, files)
    assert files["%s/%s/cpuset.cpus" % (CG, top)] == "0-2"
    assert files["%s/%s/cpuset.cpus.partition" % (CG, leaf)] == "member"


def test_omitted_cpus_are_inherited(nested):
    top, leaf, files = nested["top"], nested["leaf"], nested["files"]
    for path in (top + "/a", leaf):
        assert files["%s/%s/cpuset.cpus" % (CG, path)] == "", (path, files)       # empty: inherit
        assert files["%s/%s/cpuset.cpus.effective" % (CG, path)] == "0-2", (path, files)
    assert files["%s/%s/cpuset.cpus.effective" % (CG, top)] == "0-2"


def test_check_mode_writes_nothing(nested):
    check, first = nested["check"], nested["first"]
    assert check["changed"] and check["writes"] == [], check
    # The same plan; and the real run after it still found nothing: the check run created,
    # enabled and wrote nothing (the real run made every directory and every write itself).
    assert check["planned"] == first["planned"]
    assert all(entry["before"] == {"exists": False} for entry in first["cgroups"]), first["cgroups"]


def test_second_run_changes_nothing(nested):
    second = nested["second"]
    assert second["changed"] is False and second["writes"] == [] and second["planned"] == [], second


# --------------------------------------------------------------------------------------------
# 2. Partitions (and 4. cpu_isolation_facts, which reads them while they exist)

@pytest.fixture(scope="module")
def partitions(v2host, tmp_path_factory):
    base = "rtvirt-test-%s" % uuid.uuid4().hex[:12]
    local, overlap, remote_parent = base + "-iso", base + "-overlap", base + "-member"
    remote = remote_parent + "/remote"
    subtree_before = root_subtree(v2host)
    files_wanted = [
        "%s/cgroup.subtree_control" % CG,
        "%s/%s/cpuset.cpus" % (CG, local),
        "%s/%s/cpuset.cpus.partition" % (CG, local),
        "%s/%s/cpuset.cpus.effective" % (CG, local),
        "%s/%s" % (CG, overlap),
        "%s/%s" % (CG, remote_parent),
        "%s/%s/cpuset.cpus.exclusive" % (CG, remote_parent),
        "%s/%s/cpuset.cpus.effective" % (CG, remote_parent),
        "%s/%s/cpuset.cpus" % (CG, remote),
        "%s/%s/cpuset.cpus.exclusive" % (CG, remote),
        "%s/%s/cpuset.cpus.partition" % (CG, remote),
        "%s/%s/cpuset.cpus.effective" % (CG, remote),
        "%s/cpuset.cpus.isolated" % CG,
    ]
    try:
        results = run_playbook(v2host, tmp_path_factory.mktemp("partitions"), [
            # Planned while the root does not enable cpuset yet (as systemd leaves it): no cgroup
            # shows cpuset files, the kernel version must tell whether cpuset.cpus.exclusive exists.
            cpuset_task({"path": remote, "cpus": "1", "partition": "isolated"}, check=True, may_fail=True),
            cpuset_task({"path": local, "cpus": "2-3", "partition": "isolated"}),
            # Again: the root's cpuset.cpus.effective now lacks 2-3, which are still online.
            cpuset_task({"path": local, "cpus": "2-3", "partition": "isolated"}),
            # Overlaps the sibling partition's CPU 3: the kernel would refuse (or mark invalid).
            cpuset_task({"path": overlap, "cpus": "3", "partition": "isolated"}, may_fail=True),
            # Under a member cgroup: a remote partition (cpuset.cpus.exclusive, Linux 6.7+).
            cpuset_task({"path": remote, "cpus": "1", "partition": "isolated"}, may_fail=True),
            {"rtvirt.kvm.cpu_isolation_facts": {"gather_threads": False}},
        ])
        files = read_files(v2host, files_wanted)
    finally:
        remove_cgroups(v2host, [local, overlap, remote, remote_parent], subtree_before)
    remote_check, local_run, local_again, overlap_run, remote_run, facts = results
    print("partitions, %s: overlap %r\nremote %r\nread back %s\nfacts kernel %s" % (
        v2host.kernel_release, overlap_run.get("msg"), remote_run.get("msg") or remote_run.get("writes"),
        json.dumps(files, indent=1), json.dumps(facts["ansible_facts"]["cpu_isolation"]["kernel"])))
    return dict(local=local, overlap=overlap, remote_parent=remote_parent, remote=remote, local_run=local_run,
                local_again=local_again, overlap_run=overlap_run, remote_check=remote_check, remote_run=remote_run,
                facts=facts["ansible_facts"]["cpu_isolation"], files=files, subtree_before=subtree_before)


def test_local_isolated_partition_reads_back(v2host, partitions):
    run, files, local = partitions["local_run"], partitions["files"], partitions["local"]
    assert run["changed"] and not run.get("failed"), run
    assert writes_of(run)[-2:] == [(local + "/cpuset.cpus", "2-3"), (local + "/cpuset.cpus.partition", "isolated")]
    assert files["%s/%s/cpuset.cpus.partition" % (CG, local)] == "isolated"
    assert files["%s/%s/cpuset.cpus.effective" % (CG, local)] == "2-3"
    after = next(e["after"] for e in run["cgroups"] if e["path"] == local)
    assert after["partition"] == "isolated", run["cgroups"]
    if v2host.kernel == "6.12":
        isolated = files["%s/cpuset.cpus.isolated" % CG]
        assert isolated in ("2-3", "1-3"), files     # 1-3 with the remote partition of the later task
    else:
        assert files["%s/cpuset.cpus.isolated" % CG] == ABSENT


def test_partition_second_run_changes_nothing(partitions):
    again = partitions["local_again"]
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == [], again


def test_overlapping_partition_is_refused_before_writing(partitions):
    run, files = partitions["overlap_run"], partitions["files"]
    assert run.get("failed"), run
    assert "CPUs 3 belong to the sibling partition '/%s'" % partitions["local"] in run["msg"], run["msg"]
    assert not run.get("writes"), run
    assert files["%s/%s" % (CG, partitions["overlap"])] == ABSENT
    assert files["%s/%s/cpuset.cpus.partition" % (CG, partitions["local"])] == "isolated"   # untouched


def test_remote_partition(v2host, partitions):
    """6.1: refused before writing, naming cpuset.cpus.exclusive and the kernel; 6.12: written top-down."""
    run, files = partitions["remote_run"], partitions["files"]
    parent, remote = partitions["remote_parent"], partitions["remote"]
    if v2host.kernel == "6.1":
        assert run.get("failed"), run
        assert "cpuset.cpus.exclusive (Linux 6.7 or later)" in run["msg"], run["msg"]
        assert "this kernel (%s)" % v2host.kernel_release in run["msg"], run["msg"]
        assert not run.get("writes"), run
        assert files["%s/%s" % (CG, parent)] == ABSENT     # nothing was created
        return
    assert run["changed"] and not run.get("failed"), run
    assert writes_of(run)[-3:] == [
        (parent + "/cpuset.cpus.exclusive", "1"),
        (remote + "/cpuset.cpus.exclusive", "1"),
        (remote + "/cpuset.cpus.partition", "isolated"),
    ]
    assert files["%s/%s/cpuset.cpus.exclusive" % (CG, parent)] == "1"
    assert files["%s/%s/cpuset.cpus.exclusive" % (CG, remote)] == "1"
    assert files["%s/%s/cpuset.cpus.partition" % (CG, remote)] == "isolated"
    assert files["%s/%s/cpuset.cpus.effective" % (CG, remote)] == "1"
    assert files["%s/%s/cpuset.cpus.effective" % (CG, parent)] == "0"       # CPU 1 left it for the partition
    assert files["%s/cpuset.cpus.isolated" % CG] == "1-3"


def test_remote_partition_planned_before_cpuset_is_enabled(v2host, partitions):
    """Planned (check mode) while no cgroup shows cpuset files: the kernel version decides."""
    check, parent, remote = partitions["remote_check"], partitions["remote_parent"], partitions["remote"]
    assert "cpuset" not in partitions["subtree_before"]       # the case where no cgroup shows cpuset files
    assert not check.get("writes"), check
    if v2host.kernel == "6.1":
        assert check.get("failed") and "this kernel (%s)" % v2host.kernel_release in check["msg"], check
        return
    assert not check.get("failed"), check.get("msg")
    assert check["changed"], check
    assert check["planned"][0] == "write '+cpuset' to cgroup.subtree_control", check["planned"]
    assert check["planned"][-3:] == [
        "write '1' to %s/cpuset.cpus.exclusive" % parent,
        "write '1' to %s/cpuset.cpus.exclusive" % remote,
        "write 'isolated' to %s/cpuset.cpus.partition" % remote,
    ], check["planned"]


def test_isolation_facts_report_the_partition(v2host, partitions):
    facts = partitions["facts"]
    assert facts["cgroup"]["mode"] == "v2", facts["cgroup"]
    assert facts["cgroup"]["cpuset_version"] == 2 and facts["cgroup"]["cpuset_mountpoint"] == CG
    found = {p["path"].strip("/"): p for p in facts["kernel"]["partitions"]}
    local = found[partitions["local"]]
    assert (local["mode"], local["valid"], local["cpus"]) == ("isolated", True, "2-3"), local
    if v2host.kernel == "6.12":
        remote = found[partitions["remote"]]
        assert (remote["mode"], remote["valid"], remote["cpus"]) == ("isolated", True, "1"), remote
        assert facts["kernel"]["cpuset_cpus_isolated"] == "1-3"
        assert facts["isolated_cpus"] == "1-3" and facts["housekeeping_cpus"] == "0"
    else:
        assert partitions["remote"] not in found
        assert facts["kernel"]["cpuset_cpus_isolated"] is None
        assert facts["isolated_sources"]["isolated_partitions"] == "2-3"
        assert facts["isolated_cpus"] == "2-3" and facts["housekeeping_cpus"] == "0-1"


# --------------------------------------------------------------------------------------------
# 3. libvirt_partition on systemd: a slice unit

def slice_state(host, unit):
    """The unit file, systemd's AllowedCPUs= and active state, and the slice's cgroup cpus, in one call."""
    cgroup = "%s/machine.slice/%s" % (CG, unit)
    out = sh(host, "cat %s/%s 2>/dev/null | grep '^AllowedCPUs=' || echo 'file %s'; "
                   "systemctl show -p AllowedCPUs %s; systemctl is-active %s || true; "
                   "cat %s/cpuset.cpus 2>/dev/null || echo 'cgroup %s'" % (
                       UNIT_DIR, unit, ABSENT, unit, unit, cgroup, ABSENT))
    lines = out.splitlines()
    assert len(lines) == 4, out
    return dict(zip(("unit_file", "show", "active", "cgroup_cpus"), lines))


@pytest.fixture(scope="module")
def slice_runs(v2host, tmp_path_factory):
    name = "/machine/rtt%s" % uuid.uuid4().hex[:12]
    unit = "machine-%s.slice" % name.rsplit("/", 1)[1]
    present = {"rtvirt.kvm.libvirt_partition": {"name": name, "cpus": "1-2"}}
    absent = {"rtvirt.kvm.libvirt_partition": {"name": name, "state": "absent"}}
    tmp = tmp_path_factory.mktemp("slice")
    try:
        check, first = run_playbook(v2host, tmp, [dict(present, check_mode=True), present], name="create")
        created = slice_state(v2host, unit)
        sh(v2host, "systemctl daemon-reload && systemctl restart %s" % unit)
        restarted = slice_state(v2host, unit)
        second, removed, removed_again = run_playbook(v2host, tmp, [present, absent, absent], name="remove")
        gone = slice_state(v2host, unit)
        leftovers = sh(v2host, "ls -d %s/%s %s/machine.slice/%s 2>/dev/null || true" % (UNIT_DIR, unit, CG, unit))
    finally:
        v2host.ssh("systemctl stop %s; rm -f %s/%s; systemctl daemon-reload" % (unit, UNIT_DIR, unit))
    print("slice, %s: created %s restarted %s gone %s" % (v2host.kernel_release, created, restarted, gone))
    return dict(name=name, unit=unit, check=check, first=first, created=created, restarted=restarted,
                second=second, removed=removed, removed_again=removed_again, gone=gone, leftovers=leftovers)


def test_slice_unit_created_with_allowed_cpus(slice_runs):
    first, unit, created = slice_runs["first"], slice_runs["unit"], slice_runs["created"]
    assert first["changed"] and not first.get("failed"), first
    assert first["unit"] == unit and first["unit_file"] == "%s/%s" % (UNIT_DIR, unit)
    assert first["cgroup_path"] == "machine.slice/" + unit
    assert [w["file"] for w in first["writes"]] == [
        "%s/%s" % (UNIT_DIR, unit), "systemctl daemon-reload", "systemctl start %s" % unit]
    assert created == {"unit_file": "AllowedCPUs=1-2", "show": "AllowedCPUs=1-2", "active": "active",
                       "cgroup_cpus": "1-2"}, created


def test_slice_check_mode_writes_nothing(slice_runs):
    check, first = slice_runs["check"], slice_runs["first"]
    assert check["changed"] and check["writes"] == [], check
    # The real run after it still had to write the unit and start the slice.
    assert check["planned"] == first["planned"] == [
        "write %s/%s" % (UNIT_DIR, slice_runs["unit"]), "systemctl daemon-reload",
        "systemctl start %s" % slice_runs["unit"]]


def test_slice_cpus_survive_reload_and_restart(slice_runs):
    assert slice_runs["restarted"] == slice_runs["created"], slice_runs["restarted"]


def test_slice_second_run_changes_nothing(slice_runs):
    second = slice_runs["second"]
    assert second["changed"] is False and second["writes"] == [] and second["planned"] == [], second


def test_slice_absent_removes_unit_and_cgroup(slice_runs):
    removed, unit = slice_runs["removed"], slice_runs["unit"]
    assert removed["changed"] and not removed.get("failed"), removed
    assert [w["file"] for w in removed["writes"]] == [
        "systemctl stop %s" % unit, "%s/%s" % (UNIT_DIR, unit), "systemctl daemon-reload"]
    assert slice_runs["gone"]["unit_file"] == "file " + ABSENT
    assert slice_runs["gone"]["cgroup_cpus"] == "cgroup " + ABSENT
    assert slice_runs["gone"]["active"] == "inactive"
    assert slice_runs["leftovers"].strip() == ""
    again = slice_runs["removed_again"]
    assert again["changed"] is False and again["writes"] == [], again
