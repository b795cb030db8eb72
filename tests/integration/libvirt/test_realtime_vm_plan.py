"""The realtime_vm role on a real libvirtd: one plan call (guest_plan) and nothing else on a converged host, and
exactly the plan applied as soon as anything is to be done.

Every run logs each task result (action, status) through tests/support/callback/task_log.py; a module call is
a result whose action the controller does not run by itself. Nothing here is timed.
"""
import subprocess

import pytest

from tests.support.ansible_runner import REPO, run_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu
from tests.support.playbook_runner import module_runs, run_playbook

pytestmark = pytest.mark.libvirt

PLAN = "rtvirt.kvm.guest_plan"


def _module_calls(tasks):
    """(action, task name) of every result that was a module run on the host."""
    return [(t["action"], t["name"].split(" : ", 1)[-1]) for t in module_runs(tasks)]


def _run(tmp_path, plays, inventory=None, check=False):
    run = run_playbook(tmp_path, plays, inventory=inventory, check=check)
    role = [t for t in run["tasks"] if (t["role"] or "").endswith("realtime_vm")]
    return dict(run, calls=_module_calls(role), tasks=role)


def _role_play(role_vars, **play):
    return [dict({"hosts": "localhost", "gather_facts": False,
                  "roles": [{"role": "rtvirt.kvm.realtime_vm", "vars": role_vars}]}, **play)]


def _virsh(*args):
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_a_converged_host_costs_the_plan_call_and_a_hand_change_is_applied(
        libvirt_rig, unique_name, tmp_path, fifo_allowed):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), str(cpus[0])
    partition = "/%s" % unique_name
    role_vars = {"realtime_vm_guests": [{"name": unique_name, "vcpus": 1, "memory_mib": 128, "fifo_priority": 3}],
                 "realtime_vm_isolated_cpus": pool, "realtime_vm_partition": partition,
                 "realtime_vm_cpu_map_path": str(tmp_path / "map" / "cpu-map.html")}
    wait_for_free_pcpu(unique_name, pool)
    try:
        checked = _run(tmp_path, _role_play(role_vars), check=True)
        assert checked["rc"] == 0 and "to do: guest %s: define" % unique_name in checked["out"], checked["out"][-4000:]
        assert unique_name not in libvirt_rig.domains()          # check mode wrote nothing

        first = _run(tmp_path, _role_play(role_vars))
        assert first["rc"] == 0 and first["changed"] > 0, first["out"][-4000:]
        assert ("rtvirt.kvm.realtime_domain", "Define and start each present guest") in first["calls"]

        # Converged: the plan call and nothing else; no change, in a real run and in check mode.
        for check in (False, True):
            steady = _run(tmp_path, _role_play(role_vars), check=check)
            assert steady["rc"] == 0 and steady["changed"] == 0, steady["out"][-4000:]
            assert [a for a, _n in steady["calls"]] == [PLAN], steady["calls"]
            assert "steady state: %s as asked" % unique_name in steady["out"]

        # Applying the plan anyway agrees: nothing changes (and its verify step passes).
        full = _run(tmp_path, _role_play(dict(role_vars, realtime_vm_fast_path=False)))
        assert full["rc"] == 0 and full["changed"] == 0, full["out"][-4000:]
        assert len(full["calls"]) > 1

        # A pin moved by hand off the pool: planned, and redefined as planned.
        _virsh("vcpupin", unique_name, "0", housekeeping, "--config")
        repaired = _run(tmp_path, _role_play(role_vars))
        assert repaired["rc"] == 0 and repaired["changed"] > 0, repaired["out"][-4000:]
        assert "its definition differs in vcpupin" in repaired["out"], repaired["out"][-4000:]
        assert "vcpupin vcpu='0' cpuset='%s'" % pool in _virsh("dumpxml", "--inactive", unique_name)
        again = _run(tmp_path, _role_play(role_vars))
        assert again["rc"] == 0 and again["changed"] == 0 and [a for a, _n in again["calls"]] == [PLAN]

        # The guest stopped by hand: planned to start, and started.
        _virsh("destroy", unique_name)
        started = _run(tmp_path, _role_play(role_vars))
        assert started["rc"] == 0 and started["changed"] > 0, started["out"][-4000:]
        assert "guest %s: start" % unique_name in started["out"]
        assert unique_name in libvirt_rig.domains(inactive=False)
        again = _run(tmp_path, _role_play(role_vars))
        assert again["rc"] == 0 and again["changed"] == 0 and [a for a, _n in again["calls"]] == [PLAN]

    finally:
        gone = _run(tmp_path, _role_play({"realtime_vm_guests": [{"name": unique_name, "state": "absent"}],
                                          "realtime_vm_isolated_cpus": pool, "realtime_vm_partition": partition,
                                          "realtime_vm_cpu_map": False}))
        run_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert gone["rc"] == 0, gone["out"][-3000:]
    assert unique_name not in libvirt_rig.domains()


def test_never_steady_where_applying_the_plan_would_change(libvirt_rig, tmp_path):
    """Read-only, on whatever this shared host holds: the role in check mode with the inventory of
    hack/site.sh, once ending after the plan and once applying it anyway. A steady answer must come with a check
    run of the whole role that would change nothing."""
    inventory = REPO / "inventories" / "localhost"
    fast = _run(tmp_path, [{"hosts": "all", "gather_facts": False, "roles": [{"role": "rtvirt.kvm.realtime_vm"}]}],
                inventory=inventory, check=True)
    full = _run(tmp_path, [{"hosts": "all", "gather_facts": False, "roles": [
        {"role": "rtvirt.kvm.realtime_vm", "vars": {"realtime_vm_fast_path": False}}]}],
        inventory=inventory, check=True)
    steady = "steady state:" in fast["out"]
    if steady:
        assert fast["rc"] == 0 and fast["changed"] == 0, fast["out"][-4000:]
        assert [a for a, _n in fast["calls"]] == [PLAN], fast["calls"]
        assert full["rc"] == 0 and full["changed"] == 0, full["out"][-4000:]
    else:
        # Something is to be done: the plan says what, and the role goes on to apply it.
        assert fast["rc"] == 0 and "to do: " in fast["out"], fast["out"][-4000:]
        assert len(fast["calls"]) > 1, fast["calls"]
