"""An exclusive slice stays a partition with no Ansible run after it (issue 16 item 3), on the real systemd +
cgroup v2 host, kernel 6.12: one boot and one real reboot.

libvirt_partition makes ``/rtk<hex>`` (``rtk<hex>.slice``, ``AllowedCPUs=2-3``) an isolated partition and installs
its keeper, ``rtvirt-partition-rtk<hex>.service``.  With a ``sleep`` in the slice (``systemd-run --slice=``):

0. control: the slice restarted alone (``--job-mode=ignore-dependencies``, so the keeper is not involved) comes back
   a ``member``: systemd re-creates the cgroup, and without the keeper every step below would read ``member``;
   and a keeper the kernel refuses (a sibling made a partition on one of its CPUs by hand) fails loudly;
1. ``systemctl restart`` of the slice: isolated again, ``cpuset.cpus.effective`` 2-3, the keeper logged it;
2. ``systemctl daemon-reload``: still isolated;
3. a real reboot: the boot target's wants start the keeper, which starts the slice: isolated, the root lost 2-3,
   a new ``sleep`` in the slice runs on 2-3; then the module changes nothing, and ``state: absent`` removes the
   keeper's unit and both symlinks with the slice.

Beside it, a remote partition ``/machine/rkk<hex>`` on CPU 1 (below machine.slice, which is no partition root):
its keeper writes ``cpuset.cpus.exclusive`` on machine.slice and on its slice before the partition, which after
the reboot (machine.slice re-created too) is the only thing that puts them back.
"""
import json
import uuid

import pytest

from tests.v2host.test_modules_v2 import ABSENT, CG, UNIT_DIR, module_task, read_files, run_playbook, sh

pytestmark = pytest.mark.v2host

KERNEL = "6.12"


def lp(args, check=False):
    return module_task("rtvirt.kvm.libvirt_partition", args, check)


def _wait_for(host, path, value, seconds=20):
    """Poll ``path`` until it reads ``value`` (the keeper's job may still run when systemctl returns); return
    what it read last.  Only reads: a step that needs the keeper must not be helped by the test."""
    return sh(host, "for i in $(seq %d); do v=$(cat %s 2>/dev/null); [ \"$v\" = '%s' ] && break; sleep 0.2; done; "
                    "cat %s 2>/dev/null || echo '%s'" % (seconds * 5, path, value, path, ABSENT)).strip()


def _sleeper(host, units, slice_unit):
    """A sleep started in the slice by systemd as a new transient unit (appended to ``units``); returns its PID."""
    unit = "%s-%d" % (units[0], len(units))
    units.append(unit)
    sh(host, "systemd-run --quiet --unit=%s --slice=%s sleep 3600" % (unit, slice_unit))
    return int(sh(host, "systemctl show -p MainPID --value %s" % unit).strip())


def _task_state(host, pid):
    """The PID's cgroup and allowed CPUs, or ABSENT."""
    return sh(host, "if [ -d /proc/%d ]; then cat /proc/%d/cgroup; grep Cpus_allowed_list /proc/%d/status; "
                    "else echo '%s'; fi" % (pid, pid, pid, ABSENT)).strip()


def _keeper_logged(host, keeper):
    """How many times the keeper wrote the partition and read it back, this boot."""
    return int(sh(host, "journalctl -b -u %s -o cat --no-pager | grep -c ' = isolated$' || true" % keeper).strip() or 0)


@pytest.fixture(scope="module")
def kept(v2host_612, tmp_path_factory):
    host = v2host_612
    assert host.kernel == KERNEL
    tag = uuid.uuid4().hex[:8]
    name = "/rtk" + tag
    slice_unit = name[1:] + ".slice"
    keeper = "rtvirt-partition-%s.service" % name[1:]
    sleepers = ["rtvirt-test-sleep-%s" % tag]
    blocker = "rtvirt-test-block-%s" % tag
    want = {"name": name, "cpus": "2-3", "exclusive": True}
    partition = "%s/%s/cpuset.cpus.partition" % (CG, slice_unit)
    effective = "%s/%s/cpuset.cpus.effective" % (CG, slice_unit)
    files = [partition, effective, "%s/cpuset.cpus.effective" % CG, "%s/%s" % (UNIT_DIR, slice_unit),
             "%s/%s" % (UNIT_DIR, keeper)]
    links = ["%s/%s.wants/%s" % (UNIT_DIR, slice_unit, keeper), "%s/multi-user.target.wants/%s" % (UNIT_DIR, keeper)]
    tmp = tmp_path_factory.mktemp("reboot")
    r = dict(name=name, slice=slice_unit, keeper=keeper, partition=partition, effective=effective, links=links)
    # A remote partition below machine.slice on CPU 1: its keeper writes cpuset.cpus.exclusive top-down first.
    remote = "/machine/rkk" + tag
    remote_slice = "machine-rkk%s.slice" % tag
    remote_keeper = "rtvirt-partition-machine-rkk%s.service" % tag
    remote_want = {"name": remote, "cpus": "1", "exclusive": True}
    remote_dir = "%s/machine.slice/%s" % (CG, remote_slice)
    remote_files = ["%s/cpuset.cpus.partition" % remote_dir, "%s/cpuset.cpus.effective" % remote_dir,
                    "%s/cpuset.cpus.exclusive" % remote_dir, "%s/machine.slice/cpuset.cpus.exclusive" % CG,
                    "%s/cpuset.cpus.effective" % CG]
    r.update(remote_slice=remote_slice, remote_keeper=remote_keeper, remote_files=remote_files)

    def links_state():
        return sh(host, "; ".join("readlink %s || echo '%s'" % (link, ABSENT) for link in links)).split()

    def unit_state(*units):
        """[unit, ActiveState, Result] for each unit, in the order given."""
        found = []
        for unit in units:
            props = dict(line.split("=", 1) for line in sh(
                host, "systemctl show -p ActiveState -p Result %s" % unit).splitlines() if "=" in line)
            found.extend([unit, props.get("ActiveState"), props.get("Result")])
        return found

    try:
        (r["check"],) = run_playbook(host, tmp, [lp(want, check=True)], name="check")
        r["after_check"] = read_files(host, files)
        r["after_check_links"] = links_state()
        (r["first"],) = run_playbook(host, tmp, [lp(want, check=False)], name="create")
        r["created"] = read_files(host, files)
        r["created_links"] = links_state()
        r["created_units"] = unit_state(slice_unit, keeper)
        r["verify"] = host.ssh("systemd-analyze verify %s/%s" % (UNIT_DIR, keeper))
        r["logged_created"] = _keeper_logged(host, keeper)

        # 0. control: the slice alone, without the dependencies that start its keeper.
        sh(host, "systemctl restart --job-mode=ignore-dependencies %s" % slice_unit)
        r["control"] = read_files(host, [partition])[partition]
        sh(host, "systemctl restart %s" % keeper)      # the keeper's own repair, and it is idempotent:
        r["control_repaired"] = read_files(host, [partition])[partition]

        # The kernel refuses: a sibling cgroup made an isolated partition on CPU 2 by hand while the slice is a
        # member again. The keeper must fail loudly (non-zero, failed, its reason in the journal).
        sh(host, "systemctl restart --job-mode=ignore-dependencies %s" % slice_unit)
        sh(host, "mkdir %s/%s && echo 2 > %s/%s/cpuset.cpus && echo isolated > %s/%s/cpuset.cpus.partition" % (
            CG, blocker, CG, blocker, CG, blocker))
        r["refused"] = host.ssh("systemctl restart %s" % keeper)
        r["refused_units"] = unit_state(keeper)
        r["refused_partition"] = read_files(host, [partition])[partition]
        r["refused_journal"] = sh(host, "journalctl -b -u %s -o cat --no-pager -n 4" % keeper)
        sh(host, "echo member > %s/%s/cpuset.cpus.partition && rmdir %s/%s" % (CG, blocker, CG, blocker))
        r["keeper_again"] = host.ssh("systemctl restart %s" % keeper)
        r["keeper_again_state"] = read_files(host, [partition])[partition]

        pid = _sleeper(host, sleepers, slice_unit)
        r["sleep_before"] = _task_state(host, pid)
        logged = _keeper_logged(host, keeper)

        # 1. systemctl restart of the slice.
        sh(host, "systemctl restart %s" % slice_unit)
        r["restarted"] = _wait_for(host, partition, "isolated")
        r["restarted_files"] = read_files(host, files[:3])
        r["restarted_units"] = unit_state(slice_unit, keeper)
        r["restart_logged"] = _keeper_logged(host, keeper) - logged
        r["sleep_after_restart"] = _task_state(host, pid)
        r["sleep_unit_after_restart"] = unit_state(sleepers[-1])
        if r["sleep_after_restart"] == ABSENT:
            pid = _sleeper(host, sleepers, slice_unit)
        r["sleep_restarted"] = _task_state(host, pid)

        # 2. daemon-reload.
        sh(host, "systemctl daemon-reload")
        r["reloaded"] = read_files(host, files[:3])
        r["sleep_reloaded"] = _task_state(host, pid)
        sh(host, "systemctl stop %s" % sleepers[-1])

        # The remote partition, and a restart of its slice.
        (r["remote_first"],) = run_playbook(host, tmp, [lp(remote_want)], name="remote")
        r["remote_created"] = read_files(host, remote_files)
        sh(host, "systemctl restart %s" % remote_slice)
        _wait_for(host, remote_files[0], "isolated")
        r["remote_restarted"] = read_files(host, remote_files)

        # 3. a real reboot: fresh kernel, fresh cgroupfs, nobody runs Ansible.
        host.reboot()
        r["booted"] = read_files(host, files)
        r["remote_booted"] = read_files(host, remote_files)
        r["remote_boot_journal"] = sh(host, "journalctl -b -u %s -o cat --no-pager" % remote_keeper)
        r["booted_links"] = links_state()
        r["booted_units"] = unit_state(slice_unit, keeper)
        r["boot_logged"] = _keeper_logged(host, keeper)
        r["boot_journal"] = sh(host, "journalctl -b -u %s -o cat --no-pager" % keeper)
        pid = _sleeper(host, sleepers, slice_unit)
        r["sleep_booted"] = _task_state(host, pid)
        sh(host, "systemctl stop %s" % sleepers[-1])
        r["again"], r["remote_again"], r["gone"], r["remote_gone"], r["gone_again"] = run_playbook(
            host, tmp, [lp(want), lp(remote_want), lp({"name": name, "state": "absent"}),
                        lp({"name": remote, "state": "absent"}), lp({"name": name, "state": "absent"})],
            name="after-boot")
        r["remote_removed"] = read_files(host, ["%s/%s" % (UNIT_DIR, remote_keeper), remote_dir])
        r["removed"] = read_files(host, files + ["%s/%s.wants" % (UNIT_DIR, slice_unit), "%s/%s" % (CG, slice_unit)])
        r["removed_links"] = sh(host, "; ".join("test -L %s && echo LINK || echo '%s'" % (link, ABSENT)
                                                for link in links)).split()
        r["removed_units"] = unit_state(keeper)
    finally:
        sleeping = " ".join(sleepers[1:])
        for unit, its_keeper in ((slice_unit, keeper), (remote_slice, remote_keeper)):
            host.ssh("systemctl stop %s %s %s 2>/dev/null; rm -rf %s/%s %s/%s %s/%s.wants %s/multi-user.target.wants/%s; "
                     "systemctl daemon-reload; systemctl reset-failed %s %s 2>/dev/null; true" % (
                         sleeping, its_keeper, unit, UNIT_DIR, unit, UNIT_DIR, its_keeper, UNIT_DIR, unit,
                         UNIT_DIR, its_keeper, sleeping, its_keeper))
        host.ssh("f=%s/machine.slice/cpuset.cpus.exclusive; [ -e $f ] && echo > $f; b=%s/%s; "
                 "if [ -d $b ]; then echo member > $b/cpuset.cpus.partition; rmdir $b; fi; true" % (CG, CG, blocker))
        print(json.dumps({k: (v if isinstance(v, (str, int, list, dict)) else repr(v)) for k, v in r.items()},
                         indent=1, default=str))
    print(json.dumps({k: (v if isinstance(v, (str, int, list, dict)) else repr(v)) for k, v in r.items()},
                     indent=1, default=str))
    return r


def test_check_mode_plans_the_keeper_and_writes_nothing(kept):
    check, keeper = kept["check"], kept["keeper"]
    assert check["changed"] and check["writes"] == [], check
    unit_file = "%s/%s" % (UNIT_DIR, keeper)
    assert check["planned"][-5:] == ["write %s" % unit_file] + ["link %s -> %s" % (link, unit_file)
                                                                for link in kept["links"]] + [
        "systemctl daemon-reload", "systemctl restart %s" % keeper], check["planned"]
    assert check["planned"] == kept["first"]["planned"]
    assert kept["after_check"]["%s/%s" % (UNIT_DIR, keeper)] == ABSENT
    assert kept["after_check_links"] == [ABSENT, ABSENT]


def test_first_run_makes_the_partition_and_installs_and_runs_the_keeper(kept):
    first, created, keeper = kept["first"], kept["created"], kept["keeper"]
    assert first["changed"] and not first.get("failed") and first["partition"] == "isolated", first
    unit_file = "%s/%s" % (UNIT_DIR, keeper)
    assert [w["file"] for w in first["writes"]][-5:] == [unit_file] + kept["links"] + [
        "systemctl daemon-reload", "systemctl restart %s" % keeper], first["writes"]
    assert created[kept["partition"]] == "isolated" and created[kept["effective"]] == "2-3"
    assert created["%s/cpuset.cpus.effective" % CG] == "0-1"
    text = created[unit_file]
    for line in ("PartOf=%s" % kept["slice"], "After=%s" % kept["slice"], "Requires=%s" % kept["slice"],
                 "Type=oneshot", "RemainAfterExit=yes", "Before=libvirtd.service virtqemud.service"):
        assert line in text, (line, text)
    assert kept["created_links"] == [unit_file, unit_file]
    assert kept["created_units"][1] == "active" and kept["created_units"][3:] == [keeper, "active", "success"]
    assert kept["logged_created"] == 1          # run once by the module, so a bad keeper fails the run
    assert kept["verify"].returncode == 0, kept["verify"].stderr


def test_control_the_slice_restarted_alone_comes_back_a_member(kept):
    """Without the keeper every later step would read this: systemd re-creates the cgroup as a member."""
    assert kept["control"] == "member"
    assert kept["control_repaired"] == "isolated"
    assert kept["keeper_again"].returncode == 0 and kept["keeper_again_state"] == "isolated"


def test_a_keeper_the_kernel_refuses_fails_loudly(kept):
    refused = kept["refused"]
    assert refused.returncode != 0, refused
    assert kept["refused_units"][1:] == ["failed", "exit-code"], kept["refused_units"]
    assert kept["refused_partition"].startswith("isolated invalid"), kept["refused_partition"]
    journal = kept["refused_journal"]
    assert "rtvirt-partition %s: %s reads isolated invalid" % (kept["slice"], kept["partition"]) in journal, journal
    assert "not isolated: the kernel marks a partition invalid when" in journal, journal


def test_a_process_runs_in_the_partition(kept):
    assert "0::/%s/rtvirt-test-sleep-" % kept["slice"] in kept["sleep_before"], kept["sleep_before"]
    assert "Cpus_allowed_list:\t2-3" in kept["sleep_before"]


def test_restart_of_the_slice_keeps_the_partition(kept):
    assert kept["restarted"] == "isolated"
    assert kept["restarted_files"][kept["effective"]] == "2-3"
    assert kept["restarted_files"]["%s/cpuset.cpus.effective" % CG] == "0-1"
    units = kept["restarted_units"]
    assert units[1] == "active" and units[3:] == [kept["keeper"], "active", "success"], units
    assert kept["restart_logged"] == 1, "the keeper did not write the partition after the restart"
    assert "Cpus_allowed_list:\t2-3" in kept["sleep_restarted"], kept["sleep_restarted"]


def test_daemon_reload_keeps_the_partition(kept):
    assert kept["reloaded"][kept["partition"]] == "isolated"
    assert kept["reloaded"][kept["effective"]] == "2-3"
    assert "Cpus_allowed_list:\t2-3" in kept["sleep_reloaded"], kept["sleep_reloaded"]


def test_after_a_reboot_the_slice_is_an_isolated_partition(kept):
    booted = kept["booted"]
    assert booted[kept["partition"]] == "isolated", kept["boot_journal"]
    # The root keeps CPU 0 only: 2-3 are this partition's, 1 the remote one's.
    assert booted[kept["effective"]] == "2-3" and booted["%s/cpuset.cpus.effective" % CG] == "0"
    units = kept["booted_units"]
    assert units[1] == "active" and units[3:] == [kept["keeper"], "active", "success"], units
    assert kept["boot_logged"] == 1, kept["boot_journal"]
    assert "0::/%s/rtvirt-test-sleep-" % kept["slice"] in kept["sleep_booted"]
    assert "Cpus_allowed_list:\t2-3" in kept["sleep_booted"], kept["sleep_booted"]


def test_after_the_reboot_the_module_changes_nothing(kept):
    again = kept["again"]
    assert again["changed"] is False and again["planned"] == [] and again["writes"] == [], again
    assert again["partition"] == "isolated"


def test_absent_removes_the_keeper_and_its_links(kept):
    gone, removed, keeper = kept["gone"], kept["removed"], kept["keeper"]
    assert gone["changed"] and not gone.get("failed"), gone
    unit_file = "%s/%s" % (UNIT_DIR, keeper)
    assert gone["planned"] == ["systemctl stop %s" % kept["slice"], "remove %s/%s" % (UNIT_DIR, kept["slice"])] + [
        "remove %s" % link for link in kept["links"]] + ["remove %s" % unit_file, "systemctl daemon-reload"]
    assert removed[unit_file] == ABSENT and removed["%s/%s" % (UNIT_DIR, kept["slice"])] == ABSENT
    assert removed["%s/%s.wants" % (UNIT_DIR, kept["slice"])] == ABSENT
    assert removed["%s/%s" % (CG, kept["slice"])] == ABSENT
    assert kept["removed_links"] == [ABSENT, ABSENT]
    assert kept["removed_units"][1] == "inactive", kept["removed_units"]
    assert kept["gone_again"]["changed"] is False


def test_remote_partition_keeper_writes_the_exclusive_chain(kept):
    """Below machine.slice (not a partition root) the keeper writes cpuset.cpus.exclusive on machine.slice and on
    the slice before the partition; machine.slice is re-created at boot too, so the whole chain is its job then."""
    partition, effective, own, parent, root = kept["remote_files"]
    first = kept["remote_first"]
    assert first["changed"] and not first.get("failed") and first["partition"] == "isolated", first
    assert first["writes"][-1]["file"] == "systemctl restart %s" % kept["remote_keeper"], first["writes"]
    for state in ("remote_created", "remote_restarted", "remote_booted"):
        files = kept[state]
        assert files[partition] == "isolated", (state, files, kept.get("remote_boot_journal"))
        assert files[effective] == "1" and files[own] == "1" and files[parent] == "1", (state, files)
    assert kept["remote_created"][root] == "0"
    assert "= isolated" in kept["remote_boot_journal"], kept["remote_boot_journal"]
    assert kept["remote_again"]["changed"] is False and kept["remote_again"]["planned"] == [], kept["remote_again"]
    assert kept["remote_gone"]["changed"] and not kept["remote_gone"].get("failed"), kept["remote_gone"]
    assert list(kept["remote_removed"].values()) == [ABSENT, ABSENT], kept["remote_removed"]
