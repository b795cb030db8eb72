"""libvirt_partition ``exclusive: true`` on the real systemd + cgroup v2 host, both kernels (issue 6).

One playbook per kernel and path (module calls take 12-17 s each under TCG):

- systemd: a top-level partition ``/rtx<hex>`` (``rtx<hex>.slice``) with ``AllowedCPUs=2-3`` in its unit
  and ``cpuset.cpus.partition=isolated`` on its cgroup; check mode writes nothing; bad input refused
  before any write with the kernel's rule (the root's last CPUs; CPUs a sibling slice holds, after
  ``/machine`` is narrowed through a drop-in for systemd's own machine.slice); a ``daemon-reload`` keeps
  the partition, and so does a ``systemctl restart`` of the slice, through the keeper unit the module installs
  (test_partition_reboot_v2 proves it across a reboot); the slice restarted without its keeper
  (``--job-mode=ignore-dependencies``) comes back a member and the next run writes it again, saying so; the run
  after that changes nothing.
- without systemd: the same module with ``/run/systemd`` hidden (a private mount namespace in the
  guest, through a wrapper interpreter) takes the cgroupfs path: ``rtn<hex>.partition`` in the v2 tree.
- the engine model against the kernel: the root's ``cpuset.cpus.effective`` loses a partition's CPUs,
  and the partition the model refuses reads back invalid, with the reason the model names, when
  written by hand.
"""
import json
import uuid

import pytest

from tests.v2host.test_modules_v2 import (
    ABSENT,
    CG,
    UNIT_DIR,
    module_task,
    read_files,
    root_subtree,
    run_playbook,
    sh,
)

pytestmark = pytest.mark.v2host

WRAPPER = "/usr/local/bin/python3-nosystemd"


def lp(args, check=False, may_fail=False):
    return module_task("rtvirt.kvm.libvirt_partition", args, check, may_fail)


@pytest.fixture(scope="module")
def exclusive_systemd(v2host, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    rtx, rty = "/rtx" + tag, "/rty" + tag
    unit_x, unit_y = rtx[1:] + ".slice", rty[1:] + ".slice"
    dropin = "%s/machine.slice.d/50-rtvirt-kvm.conf" % UNIT_DIR
    subtree_before = root_subtree(v2host)
    tmp = tmp_path_factory.mktemp("exclusive")
    want = {"name": rtx, "cpus": "2-3", "exclusive": True}
    try:
        check, first, last_cpus, machine, overlap = run_playbook(v2host, tmp, [
            lp(want, check=True),
            lp(want),
            # The root keeps kernel threads: 0-1 are its last CPUs once rtx took 2-3.
            lp({"name": rty, "cpus": "0-1", "exclusive": True}, may_fail=True),
            # Ordinary guests on housekeeping: a drop-in for systemd's machine.slice.
            lp({"name": "/machine", "cpus": "0-1"}),
            # CPU 1 now belongs to machine.slice (AllowedCPUs=0-1), a sibling.
            lp({"name": rty, "cpus": "1", "exclusive": True}, may_fail=True),
        ], name="create")
        paths = ["%s/%s/cpuset.cpus.partition" % (CG, unit_x), "%s/%s/cpuset.cpus" % (CG, unit_x),
                 "%s/cpuset.cpus.effective" % CG, "%s/cpuset.cpus.isolated" % CG,
                 "%s/machine.slice/cpuset.cpus" % CG, "%s/machine.slice/cpuset.cpus.effective" % CG,
                 "%s/%s" % (UNIT_DIR, unit_y), "%s/%s" % (CG, unit_y)]
        created = read_files(v2host, paths)
        units = sh(v2host, "cat %s/%s; echo ---; cat %s; echo ---; systemctl show -p AllowedCPUs %s; "
                           "test -e /etc/systemd/system/machine.slice && echo REPLACED || echo not-replaced"
                   % (UNIT_DIR, unit_x, dropin, unit_x))
        sh(v2host, "systemctl daemon-reload")
        reloaded = read_files(v2host, paths[:1])
        sh(v2host, "systemctl restart %s" % unit_x)
        # The keeper's job may still run when systemctl returns: wait for it (reads only).
        sh(v2host, "for i in $(seq 100); do [ \"$(cat %s)\" = isolated ] && break; sleep 0.2; done" % paths[0])
        restarted = read_files(v2host, paths[:1])
        sh(v2host, "systemctl restart --job-mode=ignore-dependencies %s" % unit_x)
        lost = read_files(v2host, paths[:1])
        repaired, again = run_playbook(v2host, tmp, [lp(want), lp(want)], name="repair")
        final = read_files(v2host, paths[:4])
    finally:
        keeper = "rtvirt-partition-%s.service" % unit_x[:-len(".slice")]
        v2host.ssh("systemctl stop %s %s machine.slice; rm -rf %s/%s %s/%s %s/machine.slice.d %s/%s %s/%s.wants "
                   "%s/multi-user.target.wants/%s; systemctl daemon-reload"
                   % (unit_x, unit_y, UNIT_DIR, unit_x, UNIT_DIR, unit_y, UNIT_DIR, UNIT_DIR, keeper, UNIT_DIR, unit_x,
                      UNIT_DIR, keeper))
    print("exclusive (systemd), %s:\n%s\n%s\nreloaded %s restarted %s\nrepaired %s" % (
        v2host.kernel_release, json.dumps(created, indent=1), units, reloaded, restarted,
        json.dumps({k: repaired.get(k) for k in ("notes", "writes", "partition")})))
    assert sorted(root_subtree(v2host)) == sorted(subtree_before)
    return dict(rtx=rtx, rty=rty, unit_x=unit_x, unit_y=unit_y, check=check, first=first, last_cpus=last_cpus,
                machine=machine, overlap=overlap, created=created, units=units, reloaded=reloaded,
                restarted=restarted, lost=lost, repaired=repaired, again=again, final=final, dropin=dropin)


def test_exclusive_slice_is_an_isolated_partition(v2host, exclusive_systemd):
    r = exclusive_systemd
    first, created, unit_x = r["first"], r["created"], r["unit_x"]
    assert first["changed"] and not first.get("failed"), first
    assert first["partition"] == "isolated"
    keeper = "rtvirt-partition-%s.service" % unit_x[:-len(".slice")]
    assert [w["file"] for w in first["writes"]] == [
        "%s/%s" % (UNIT_DIR, unit_x), "systemctl daemon-reload", "systemctl start %s" % unit_x,
        "%s/%s/cpuset.cpus.partition" % (CG, unit_x), "%s/%s" % (UNIT_DIR, keeper),
        "%s/%s.wants/%s" % (UNIT_DIR, unit_x, keeper), "%s/multi-user.target.wants/%s" % (UNIT_DIR, keeper),
        "systemctl daemon-reload", "systemctl restart %s" % keeper]
    assert created["%s/%s/cpuset.cpus.partition" % (CG, unit_x)] == "isolated"
    assert created["%s/%s/cpuset.cpus" % (CG, unit_x)] == "2-3"          # written by systemd (AllowedCPUs=)
    assert "AllowedCPUs=2-3" in r["units"]
    assert created["%s/cpuset.cpus.effective" % CG] == "0-1"             # the partition took 2-3
    if v2host.kernel == "6.12":
        assert created["%s/cpuset.cpus.isolated" % CG] == "2-3"
    else:
        assert created["%s/cpuset.cpus.isolated" % CG] == ABSENT


def test_exclusive_check_mode_writes_nothing(exclusive_systemd):
    check, first = exclusive_systemd["check"], exclusive_systemd["first"]
    assert check["changed"] and check["writes"] == [], check
    assert check["planned"] == first["planned"]
    assert "write 'isolated' to %s/cpuset.cpus.partition (in %s; systemd has no property for it)" % (
        exclusive_systemd["unit_x"], CG) in check["planned"]
    assert check["planned"][-1] == "systemctl restart rtvirt-partition-%s.service" % exclusive_systemd["unit_x"][:-6]
    assert check.get("partition") is None           # the slice did not exist yet


def test_machine_is_a_drop_in_on_housekeeping(exclusive_systemd):
    machine, created = exclusive_systemd["machine"], exclusive_systemd["created"]
    assert machine["changed"] and machine["unit_file"] == exclusive_systemd["dropin"], machine
    assert created["%s/machine.slice/cpuset.cpus" % CG] == "0-1"
    assert created["%s/machine.slice/cpuset.cpus.effective" % CG] == "0-1"
    units = exclusive_systemd["units"]
    assert "not-replaced" in units and "Managed by rtvirt.kvm.libvirt_partition for libvirt's default" in units


def test_exclusive_taking_the_parents_last_cpus_is_refused_before_writing(exclusive_systemd):
    run, created = exclusive_systemd["last_cpus"], exclusive_systemd["created"]
    assert run.get("failed") and not run.get("writes"), run
    assert "Parent unable to distribute cpu downstream" in run["msg"], run["msg"]
    assert created["%s/%s" % (UNIT_DIR, exclusive_systemd["unit_y"])] == ABSENT
    assert created["%s/%s" % (CG, exclusive_systemd["unit_y"])] == ABSENT


def test_exclusive_overlapping_a_sibling_slice_is_refused_before_writing(exclusive_systemd):
    run, created = exclusive_systemd["overlap"], exclusive_systemd["created"]
    assert run.get("failed") and not run.get("writes"), run
    assert "Cpu list in cpuset.cpus not exclusive" in run["msg"], run["msg"]
    assert created["%s/%s" % (UNIT_DIR, exclusive_systemd["unit_y"])] == ABSENT


def test_daemon_reload_and_restart_keep_it_the_slice_alone_loses_it(exclusive_systemd):
    """What systemd 252 really does: a reload re-applies AllowedCPUs= (same value: the kernel keeps the
    partition); a restart removes and re-creates the slice's cgroup, which comes back a member, and the keeper
    (PartOf= the slice) writes it again; restarted without its dependencies the slice stays a member."""
    unit_x = exclusive_systemd["unit_x"]
    key = "%s/%s/cpuset.cpus.partition" % (CG, unit_x)
    assert exclusive_systemd["reloaded"][key] == "isolated"
    assert exclusive_systemd["restarted"][key] == "isolated"
    assert exclusive_systemd["lost"][key] == "member"


def test_next_run_repairs_the_partition_and_says_why(exclusive_systemd):
    repaired, unit_x = exclusive_systemd["repaired"], exclusive_systemd["unit_x"]
    assert repaired["changed"] and not repaired.get("failed"), repaired
    assert [(w["file"], w["value"]) for w in repaired["writes"]] == [
        ("%s/%s/cpuset.cpus.partition" % (CG, unit_x), "isolated")]
    assert any("reads 'member'" in n and "no property for cpuset.cpus.partition" in n for n in repaired["notes"])
    assert repaired["partition"] == "isolated"
    assert exclusive_systemd["final"]["%s/%s/cpuset.cpus.partition" % (CG, unit_x)] == "isolated"


def test_exclusive_second_run_changes_nothing(exclusive_systemd):
    again = exclusive_systemd["again"]
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == [], again
    assert again["partition"] == "isolated"


# --------------------------------------------------------------------------------------------
# Without systemd (the cgroupfs path), and the model against the kernel

@pytest.fixture(scope="module")
def exclusive_cgroupfs(v2host, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    rtn, rtm = "/rtn" + tag, "/rtm" + tag
    dir_n, dir_m = rtn[1:] + ".partition", rtm[1:] + ".partition"
    raw = "rtvirt-test-%s-raw" % tag
    subtree_before = root_subtree(v2host)
    # A wrapper interpreter: the module runs in a private mount namespace where /run/systemd is empty.
    proc = v2host.ssh("cat > %s && chmod +x %s" % (WRAPPER, WRAPPER), input=(
        "#!/bin/sh\n"
        "exec unshare -m sh -c 'mount -t tmpfs tmpfs /run/systemd && exec /usr/bin/python3 \"$@\"' sh \"$@\"\n"))
    assert proc.returncode == 0, proc.stderr
    tasks = [lp({"name": rtn, "cpus": "3", "exclusive": True, "controllers": ["cpuset"]}),
             lp({"name": rtm, "cpus": "0-2", "exclusive": True, "controllers": ["cpuset"]}, may_fail=True)]
    for task in tasks:
        task["vars"] = {"ansible_python_interpreter": WRAPPER}
    try:
        created, last_cpus = run_playbook(v2host, tmp_path_factory.mktemp("cgroupfs"), tasks, name="cgroupfs")
        files = read_files(v2host, ["%s/%s/cpuset.cpus.partition" % (CG, dir_n), "%s/%s" % (CG, dir_m),
                                    "%s/cpuset.cpus.effective" % CG, "%s/system.slice/cpuset.cpus.effective" % CG])
        # The request the model refused, written by hand: what does the kernel read back?
        by_hand = sh(v2host, "cd %s && mkdir %s && echo 0-2 > %s/cpuset.cpus && echo isolated > %s/cpuset.cpus.partition"
                             " && cat %s/cpuset.cpus.partition && echo member > %s/cpuset.cpus.partition && rmdir %s"
                     % (CG, raw, raw, raw, raw, raw, raw)).strip()
    finally:
        v2host.ssh("cd %s; for d in %s %s %s; do [ -d $d ] && echo member > $d/cpuset.cpus.partition; "
                   "[ -d $d ] && rmdir $d; done; rm -f %s" % (CG, raw, dir_m, dir_n, WRAPPER))
        if "cpuset" not in subtree_before and "cpuset" in root_subtree(v2host):
            v2host.ssh("echo -cpuset > %s/cgroup.subtree_control" % CG)
    print("exclusive (cgroupfs), %s: %s\nby hand: %s" % (v2host.kernel_release, json.dumps(files, indent=1), by_hand))
    return dict(dir_n=dir_n, dir_m=dir_m, created=created, last_cpus=last_cpus, files=files, by_hand=by_hand)


def test_cgroupfs_exclusive_is_an_isolated_partition(exclusive_cgroupfs):
    created, files, dir_n = exclusive_cgroupfs["created"], exclusive_cgroupfs["files"], exclusive_cgroupfs["dir_n"]
    assert created["changed"] and not created.get("failed"), created
    assert "unit" not in created and created["cgroup_path"] == dir_n      # the cgroupfs path, not a slice
    # Without systemd the qemu hook is what brings partitions back, so libvirt_partition records this one for it,
    # after the cgroup writes.
    assert [w["file"] for w in created["writes"]][-3:] == [
        "%s/%s/cpuset.cpus" % (CG, dir_n), "%s/%s/cpuset.cpus.partition" % (CG, dir_n),
        "/etc/libvirt/hooks/rtvirt-kvm-partitions.json"]
    assert created["partition"] == "isolated"
    assert files["%s/%s/cpuset.cpus.partition" % (CG, dir_n)] == "isolated"


def test_model_effective_cpus_match_the_kernel(exclusive_cgroupfs):
    """The model's rule (tests/unit: test_v2_model_partition_takes_its_cpus_out_of_the_parent), read on
    the kernel: a partition on 3 leaves the root and an inheriting member sibling with 0-2."""
    files = exclusive_cgroupfs["files"]
    assert files["%s/cpuset.cpus.effective" % CG] == "0-2"
    assert files["%s/system.slice/cpuset.cpus.effective" % CG] == "0-2"


def test_cgroupfs_last_cpus_refused_as_the_kernel_would_mark_it(exclusive_cgroupfs):
    run, files = exclusive_cgroupfs["last_cpus"], exclusive_cgroupfs["files"]
    assert run.get("failed") and not run.get("writes"), run
    assert "Parent unable to distribute cpu downstream" in run["msg"], run["msg"]
    assert files["%s/%s" % (CG, exclusive_cgroupfs["dir_m"])] == ABSENT
    # Written by hand, the kernel takes it and reads back the same reason.
    assert exclusive_cgroupfs["by_hand"] == "isolated invalid (Parent unable to distribute cpu downstream)"
