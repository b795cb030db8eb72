"""The realtime_vm role's steady state on a real libvirtd: no module call but the facts, and the full path
as soon as anything is to be done.

Every run logs each task result (action, status) through tests/support/callback/task_log.py; a module call is
a result whose action the controller does not run by itself. Nothing here is timed.
"""
import subprocess

import pytest

from tests.support.ansible_runner import REPO, run_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu
from tests.support.playbook_runner import module_runs, run_playbook

pytestmark = pytest.mark.libvirt

FACTS = "rtvirt.kvm.cpu_isolation_facts"


def _module_calls(tasks):
    """(action, task name) of every result that was a module run on the host."""
    return [(t["action"], t["name"].split(" : ", 1)[-1]) for t in module_runs(tasks)]


def _run(tmp_path, plays, inventory=None, check=False):
    run = run_playbook(tmp_path, plays, inventory=inventory, check=check)
    role = [t for t in run["tasks"] if (t["role"] or "").endswith("realtime_vm")]
    return dict(run, calls=_module_calls(role), tasks=role)


def _role_play(role_vars, facts_first=None):
    """The role on localhost; ``facts_first``: gather the facts before it and mark them current, as host_prep does."""
    play = {"hosts": "localhost", "gather_facts": False, "roles": [{"role": "rtvirt.kvm.realtime_vm", "vars": role_vars}]}
    if facts_first is not None:
        play["pre_tasks"] = [
            {"name": "Gather the facts as host_prep leaves them", FACTS: facts_first},
            {"name": "Mark them current", "ansible.builtin.set_fact": {"rtvirt_isolation_facts_current": True}},
        ]
    return [play]


def _virsh(*args):
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_steady_state_takes_the_fast_path_and_a_hand_change_the_full_one(
        libvirt_rig, unique_name, tmp_path, fifo_allowed):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), str(cpus[0])
    partition = "/%s" % unique_name
    role_vars = {"realtime_vm_guests": [{"name": unique_name, "vcpus": 1, "memory_mib": 128, "fifo_priority": 3}],
                 "realtime_vm_isolated_cpus": pool, "realtime_vm_partition": partition,
                 "realtime_vm_cpu_map_path": str(tmp_path / "map" / "cpu-map.html")}
    host_prep_facts = {"isolated_cpus": pool, "realtime_partitions": [partition]}
    wait_for_free_pcpu(unique_name, pool)
    try:
        first = _run(tmp_path, _role_play(role_vars))
        assert first["rc"] == 0 and first["changed"] > 0, first["out"][-4000:]
        assert ("rtvirt.kvm.realtime_domain", "Define and start %s" % unique_name) in first["calls"]

        # Converged: the role's own facts call and nothing else; no change.
        steady = _run(tmp_path, _role_play(role_vars))
        assert steady["rc"] == 0 and steady["changed"] == 0, steady["out"][-4000:]
        assert [a for a, _n in steady["calls"]] == [FACTS], steady["calls"]
        assert "steady state: %s as asked" % unique_name in steady["out"]

        # Facts left current by host_prep: no module call at all.
        after_host_prep = _run(tmp_path, _role_play(role_vars, facts_first=host_prep_facts))
        assert after_host_prep["rc"] == 0 and after_host_prep["changed"] == 0, after_host_prep["out"][-4000:]
        assert after_host_prep["calls"] == [], after_host_prep["calls"]

        # The full path agrees: nothing to change (and its verify step passes).
        full = _run(tmp_path, _role_play(dict(role_vars, realtime_vm_fast_path=False)))
        assert full["rc"] == 0 and full["changed"] == 0, full["out"][-4000:]
        assert len(full["calls"]) > 1

        # A pin moved by hand off the pool: the full path re-plans and redefines it.
        _virsh("vcpupin", unique_name, "0", housekeeping, "--config")
        repaired = _run(tmp_path, _role_play(role_vars, facts_first=host_prep_facts))
        assert repaired["rc"] == 0 and repaired["changed"] > 0, repaired["out"][-4000:]
        assert "its definition differs in vcpupin" in repaired["out"], repaired["out"][-4000:]
        assert ("rtvirt.kvm.realtime_domain", "Define and start %s" % unique_name) in repaired["calls"]
        assert "vcpupin vcpu='0' cpuset='%s'" % pool in _virsh("dumpxml", "--inactive", unique_name)
        again = _run(tmp_path, _role_play(role_vars, facts_first=host_prep_facts))
        assert again["rc"] == 0 and again["changed"] == 0 and again["calls"] == [], again["out"][-4000:]

        # The guest stopped by hand: the full path starts it.
        _virsh("destroy", unique_name)
        started = _run(tmp_path, _role_play(role_vars))
        assert started["rc"] == 0 and started["changed"] > 0, started["out"][-4000:]
        assert "guest %s is not running" % unique_name in started["out"]
        assert unique_name in libvirt_rig.domains(inactive=False)
        again = _run(tmp_path, _role_play(role_vars))
        assert again["rc"] == 0 and again["changed"] == 0 and [a for a, _n in again["calls"]] == [FACTS]

    finally:
        gone = _run(tmp_path, _role_play({"realtime_vm_guests": [{"name": unique_name, "state": "absent"}],
                                          "realtime_vm_isolated_cpus": pool, "realtime_vm_partition": partition,
                                          "realtime_vm_cpu_map": False}))
        run_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert gone["rc"] == 0, gone["out"][-3000:]
    assert unique_name not in libvirt_rig.domains()


def test_fast_path_never_steady_where_the_full_path_would_change(libvirt_rig, tmp_path):
    """Read-only, on whatever this shared host holds: the role in check mode with the inventory of
    hack/site.sh, once deciding by the facts and once the full way. A steady answer must come with a full
    check run that would change nothing."""
    inventory = REPO / "inventories" / "localhost"
    fast = _run(tmp_path, [{"hosts": "all", "gather_facts": False, "roles": [{"role": "rtvirt.kvm.realtime_vm"}]}],
                inventory=inventory, check=True)
    full = _run(tmp_path, [{"hosts": "all", "gather_facts": False, "roles": [
        {"role": "rtvirt.kvm.realtime_vm", "vars": {"realtime_vm_fast_path": False}}]}],
        inventory=inventory, check=True)
    steady = "steady state:" in fast["out"]
    if steady:
        assert fast["rc"] == 0 and fast["changed"] == 0, fast["out"][-4000:]
        assert [a for a, _n in fast["calls"]] == [FACTS], fast["calls"]
        assert full["rc"] == 0 and full["changed"] == 0, full["out"][-4000:]
