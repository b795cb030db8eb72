"""The partition keeper (issue 16 item 3): libvirt_partition on a fake systemd + cgroup v2 host installs, with an
exclusive slice, the oneshot unit that writes the partition again whenever systemd re-creates the slice's cgroup;
and the planner (host_plan's check_partitions, the way back) sees the same steps."""
import os
import pathlib
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _module_runner import run_module  # noqa: E402
# host and systemd_host are pytest fixtures, used by name.
from test_libvirt_partition import _files, host, systemd_host  # noqa: E402,F401  pylint: disable=unused-import

from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan as hs  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import parse_name  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_keeper import (  # noqa: E402
    exclusive_chain,
    keeper_fits,
    keeper_paths,
    keeper_script,
    keeper_unit,
    plan_keeper,
    render_keeper,
)
from ansible_collections.rtvirt.kvm.plugins.modules import libvirt_partition  # noqa: E402

KEEPER = "rtvirt-partition-rt.service"


def run(args, check=False, diff=False):
    return run_module(libvirt_partition, args, check_mode=check, diff=diff)


@pytest.fixture
def v2(systemd_host):
    """A systemd host with cpuset on the unified hierarchy, 4 CPUs, machine.slice on CPU 0."""
    host, fake = systemd_host
    unified = host / "cg" / "unified"
    _files(unified, {"cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": "cpuset cpu memory",
                     "cpuset.cpus.effective": "0-3", "cpuset.mems.effective": "0"})
    _files(unified / "machine.slice", {"cpuset.cpus": "0", "cpuset.cpus.effective": "0", "cpuset.mems": "",
                                       "cpuset.mems.effective": "0", "cpuset.cpus.partition": "member",
                                       "cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": ""})
    units = host / "etc-systemd"
    return host, fake, unified, units


def _slice_started(unified):
    """What systemd leaves when it starts rt.slice: a fresh member cgroup with the unit's CPUs."""
    _files(unified / "rt.slice", {"cpuset.cpus": "1-3", "cpuset.cpus.effective": "1-3", "cpuset.mems": "",
                                  "cpuset.mems.effective": "0", "cpuset.cpus.partition": "member",
                                  "cgroup.controllers": "cpuset cpu memory", "cgroup.subtree_control": ""})


def _keeper_files(units):
    return [units / KEEPER, units / "rt.slice.wants" / KEEPER, units / "multi-user.target.wants" / KEEPER]


WANT = {"name": "/rt", "cpus": "1-3", "exclusive": True}


def _converge(v2):
    host, fake, unified, units = v2
    _slice_started(unified)
    fake.active.add("rt.slice")
    return run(WANT, diff=True)


def test_exclusive_slice_gets_its_keeper_check_mode_writes_nothing(v2):
    host, fake, unified, units = v2
    checked = run(WANT, check=True, diff=True)
    assert not checked.get("failed"), checked.get("msg")
    unit, links = keeper_paths(str(units), parse_name("/rt"))
    # The slice's own steps come first (they were once dropped from the list when a partition was formed).
    assert checked["planned"][:3] == ["write %s" % (units / "rt.slice"), "systemctl daemon-reload",
                                      "systemctl start rt.slice"], checked["planned"]
    assert checked["planned"][3].startswith("write 'isolated' to rt.slice/cpuset.cpus.partition")
    assert checked["planned"][-5:] == [
        "write %s" % unit, "link %s -> %s" % (links[0], unit), "link %s -> %s" % (links[1], unit),
        "systemctl daemon-reload", "systemctl restart %s" % KEEPER], checked["planned"]
    assert not units.exists() and checked["writes"] == []
    assert [c for c in fake.calls if c[0] != "is-active"] == []
    keeper_diff = checked["diff"][-1]
    assert keeper_diff["after_header"] == "%s (keeper)" % KEEPER
    assert "ExecStart=/bin/sh -c" in keeper_diff["after"] and "-> %s" % unit in keeper_diff["after"]


def test_keeper_written_enabled_run_once_and_a_second_run_changes_nothing(v2):
    host, fake, unified, units = v2
    result = _converge(v2)
    assert not result.get("failed"), result.get("msg")
    assert result["partition"] == "isolated"
    unit, wants, boot = _keeper_files(units)
    text = unit.read_text()
    for line in ("Requires=rt.slice", "After=rt.slice", "PartOf=rt.slice", "Type=oneshot", "RemainAfterExit=yes",
                 "Before=libvirtd.service virtqemud.service", "WantedBy=rt.slice multi-user.target"):
        assert line in text.splitlines(), (line, text)
    assert "echo isolated > \"$$f\"" in text and str(unified / "rt.slice" / "cpuset.cpus.partition") in text
    assert os.readlink(wants) == str(unit) and os.readlink(boot) == str(unit)
    # The partition first (what the module itself checks), then the keeper, run once to prove it works.
    files = [w["file"] for w in result["writes"]]
    assert files.index(str(unified / "rt.slice" / "cpuset.cpus.partition")) < files.index(str(unit))
    assert fake.calls[-1] == ["restart", KEEPER] and ["daemon-reload"] in fake.calls
    fake.calls.clear()
    again = run(WANT, diff=True)
    assert not again["changed"] and again["planned"] == [] and again["writes"] == [], again["planned"]
    assert [c for c in fake.calls if c[0] != "is-active"] == []


def test_a_failed_keeper_is_started_again(v2):
    host, fake, unified, units = v2
    _converge(v2)
    fake.active.discard(KEEPER)
    result = run(WANT)
    assert result["planned"] == ["systemctl restart %s" % KEEPER], result["planned"]


def test_a_keeper_changed_by_hand_is_rewritten(v2):
    host, fake, unified, units = v2
    _converge(v2)
    unit, wants, _boot = _keeper_files(units)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    wants.unlink()
    result = run(WANT)
    assert result["planned"] == ["write %s" % unit, "link %s -> %s" % (wants, unit), "systemctl daemon-reload",
                                 "systemctl restart %s" % KEEPER], result["planned"]
    assert "PartOf=rt.slice" in unit.read_text() and os.readlink(wants) == str(unit)


def test_keeper_that_fails_fails_the_run_with_its_journal(v2, monkeypatch):
    host, fake, unified, units = v2
    _slice_started(unified)
    fake.active.add("rt.slice")
    original = fake.__call__

    def refusing(argv):
        if argv[1] == "restart":
            fake.calls.append(argv[1:])
            return 1, "", "Job for %s failed because the control process exited with error code." % KEEPER
        if argv[0].endswith("journalctl"):
            return 0, "rtvirt-partition rt.slice: ... reads isolated invalid (Cpu list in cpuset.cpus not exclusive)\n", ""
        return original(argv)

    monkeypatch.setattr(libvirt_partition.AnsibleModule, "run_command", lambda self, argv, **kw: refusing(argv))
    result = run(WANT)
    assert result.get("failed") and result["changed"]
    assert "the partition is in place, but its keeper %s failed" % KEEPER in result["msg"], result["msg"]
    assert "isolated invalid (Cpu list in cpuset.cpus not exclusive)" in result["msg"]


def test_exclusive_false_stops_and_removes_the_keeper(v2):
    host, fake, unified, units = v2
    _converge(v2)
    shared = {"name": "/rt", "cpus": "1-3", "exclusive": False}
    checked = run(shared, check=True)
    unit, wants, boot = _keeper_files(units)
    assert checked["planned"][0].startswith("write 'member'"), checked["planned"]
    assert checked["planned"][1:] == ["systemctl stop %s" % KEEPER, "remove %s" % wants, "remove %s" % boot,
                                      "remove %s" % unit, "systemctl daemon-reload"], checked["planned"]
    assert unit.exists()
    result = run(shared)
    assert not result.get("failed"), result.get("msg")
    assert not any(path.exists() or path.is_symlink() for path in (unit, wants, boot))
    assert not (units / "rt.slice.wants").exists() and (units / "multi-user.target.wants").is_dir()
    assert ["stop", KEEPER] in fake.calls
    assert run(shared)["changed"] is False


def test_absent_removes_the_keeper_with_the_slice(v2):
    host, fake, unified, units = v2
    _converge(v2)
    unit, wants, boot = _keeper_files(units)
    checked = run({"name": "/rt", "state": "absent"}, check=True)
    assert checked["planned"] == ["systemctl stop rt.slice", "remove %s" % (units / "rt.slice"), "remove %s" % wants,
                                  "remove %s" % boot, "remove %s" % unit, "systemctl daemon-reload"], checked["planned"]
    result = run({"name": "/rt", "state": "absent"})
    assert not result.get("failed"), result.get("msg")
    assert not any(path.exists() or path.is_symlink() for path in (unit, wants, boot, units / "rt.slice"))
    assert [c for c in fake.calls if c[0] == "daemon-reload"] and fake.calls[-1] == ["daemon-reload"]


def test_a_failed_keeper_is_forgotten_when_it_goes(v2):
    """A keeper that failed (the kernel refused at the last boot) and is removed must not stay in systemctl --failed."""
    host, fake, unified, units = v2
    _converge(v2)
    fake.active.discard(KEEPER)
    fake.failed.add(KEEPER)
    shared = run({"name": "/rt", "cpus": "1-3", "exclusive": False}, check=True)
    assert shared["planned"][-2:] == ["systemctl daemon-reload", "systemctl reset-failed %s" % KEEPER], shared["planned"]
    assert "systemctl stop %s" % KEEPER not in shared["planned"]
    gone = run({"name": "/rt", "state": "absent"}, check=True)
    assert gone["planned"][-1] == "systemctl reset-failed %s" % KEEPER, gone["planned"]
    result = run({"name": "/rt", "state": "absent"})
    assert not result.get("failed") and fake.calls[-1] == ["reset-failed", KEEPER], (result.get("msg"), fake.calls)


def test_exclusive_omitted_leaves_the_keeper_alone(v2):
    host, fake, unified, units = v2
    _converge(v2)
    assert run({"name": "/rt", "cpus": "1-3"})["changed"] is False
    assert _keeper_files(units)[0].exists()


# ---- the planner ---------------------------------------------------------------------------------------------

class _PlanModule:
    """What planned_steps needs of a module: systemctl through the fake (read-only calls only in check mode)."""

    _diff = False

    def __init__(self, fake):
        self.fake = fake

    def get_bin_path(self, name, required=False):
        return "/bin/" + name

    def run_command(self, argv, **kw):
        return self.fake(argv)


def test_host_plan_sees_the_keeper_and_a_converged_host_is_zero(v2):
    host, fake, unified, units = v2
    _slice_started(unified)
    fake.active.add("rt.slice")
    (unified / "rt.slice" / "cpuset.cpus.partition").write_text("isolated\n")
    (units).mkdir()
    (units / "rt.slice").write_text(_slice_unit_text())
    module = _PlanModule(fake)
    target = [{"name": "/rt", "cpus": "1-3", "exclusive": True}]
    # A host converged before keepers existed: the unit and the partition are right, the keeper is missing.
    reasons = hs.check_partitions(module, target)
    assert reasons and all(r.startswith("/rt: ") for r in reasons), reasons
    assert "/rt: systemctl restart %s" % KEEPER in reasons and any(KEEPER in r and "write" in r for r in reasons)
    assert run(WANT)["changed"]
    assert hs.check_partitions(module, target) == []
    # The way back plans the keeper's removal with the slice's, through the same code.
    reasons, refusals = hs.check_revert_partitions(module, ["/rt"], {}, "0-3")
    assert not refusals and "/rt: remove %s" % (units / KEEPER) in reasons, reasons


def _slice_unit_text():
    from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_systemd import render_slice_unit
    return render_slice_unit(parse_name("/rt"), frozenset({1, 2, 3}))


# ---- the unit's text ------------------------------------------------------------------------------------------

def test_keeper_unit_names_and_length():
    assert keeper_unit(parse_name("/rt")) == KEEPER
    assert keeper_unit(parse_name("/machine/tenant/rt")) == "rtvirt-partition-machine-tenant-rt.service"
    assert keeper_fits(parse_name("/rt"))
    assert not keeper_fits(parse_name("/" + "r" * 240))


def test_local_partition_writes_no_exclusive_chain_remote_writes_every_level():
    rt, nested = parse_name("/rt"), parse_name("/machine/tenant/rt")
    assert exclusive_chain(rt, frozenset({2, 3}), remote=False) == []
    assert exclusive_chain(nested, frozenset({2, 3}), remote=True) == [
        "machine.slice", "machine.slice/machine-tenant.slice", "machine.slice/machine-tenant.slice/machine-tenant-rt.slice"]
    script = keeper_script(nested, "/sys/fs/cgroup", "isolated", frozenset({2, 3}), remote=True)
    # Added to what each level holds (other remote partitions below the same parent keep theirs).
    assert script.count('echo "$${c:+$$c,}2-3" > "$$x"') == 3
    assert script.index('x="/sys/fs/cgroup/machine.slice/cpuset.cpus.exclusive"') < script.index('echo isolated > "$$f"')


def test_script_is_safe_inside_systemds_quotes():
    text = render_keeper(parse_name("/machine/my-rt"), "/sys/fs/cgroup", "root")
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    body = exec_line[len("ExecStart=/bin/sh -c '"):-1]
    assert "'" not in body
    # systemd would expand a lone $ (its own variables) and % (specifiers); \\ is one backslash after unquoting.
    assert "$" not in body.replace("$$", "") and "%" not in body.replace("%%", "")
    assert "machine-my\\\\x2drt.slice" in body
    assert "exit 1" in body and ">&2" in body


def test_plan_keeper_on_an_empty_dir(tmp_path):
    rt = parse_name("/rt")
    assert plan_keeper(str(tmp_path), rt, None) == []
    steps = plan_keeper(str(tmp_path), rt, "x\n")
    assert [kind for kind, _p, _v in steps] == ["write", "link", "link"]
    assert pathlib.Path(steps[0][1]).name == KEEPER
