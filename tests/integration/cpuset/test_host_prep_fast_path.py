"""host_prep's fast path on the real kernel: a converged host costs one module call; drift is found and repaired.

The role runs through ansible-playbook on this machine with a throwaway realtime partition
(``/rtvirt-fp-<hex>``, beside /machine), the sysctl.d file in the test's temporary directory and
kernel.sched_rt_runtime_us at the value the host already has. Besides its own partition (removed at the
end) it narrows /machine to the housekeeping CPUs, as the role does, and gives /machine its CPUs back.
A test callback (tests/support/callback/task_log.py) records which tasks really ran.
"""
import pathlib
import re
import uuid

import pytest

from tests.support.ansible_runner import run_module
from tests.support.playbook_runner import module_runs, run_playbook

SYSCTL = pathlib.Path("/proc/sys/kernel/sched_rt_runtime_us")


def _cpuset_dir(name):
    return pathlib.Path("/sys/fs/cgroup/cpuset") / (name.lstrip("/") + ".partition")


@pytest.fixture
def partition():
    name = "/rtvirt-fp-%s" % uuid.uuid4().hex[:8]
    machine = pathlib.Path("/sys/fs/cgroup/cpuset/machine/cpuset.cpus")
    machine_cpus = machine.read_text().strip() if machine.exists() else None
    yield name
    run_module("rtvirt.kvm.libvirt_partition", {"name": name, "state": "absent"})
    assert not _cpuset_dir(name).exists()
    if machine_cpus:
        run_module("rtvirt.kvm.libvirt_partition", {"name": "/machine", "cpus": machine_cpus})
        assert machine.read_text().strip() == machine_cpus


def _play(tmp_path, partition, check=False, extra=None):
    role_vars = {
        "host_prep_partitions": [{"name": partition}],
        "host_prep_manage_cmdline": False,
        "host_prep_install_libvirt": False,
        "host_prep_install_hook": False,
        "host_prep_manage_irqs": False,
        "host_prep_sysctl_file": str(tmp_path / "90-rtvirt-test.conf"),
        "host_prep_sched_rt_runtime_us": int(SYSCTL.read_text()),
        "host_prep_verify_kinds": ["cgroup_cpuset"],
        # The tuning area has its own real test (tests/integration/test_host_tuning_real.py).
        "host_prep_tuning": False,
    }
    role_vars.update(extra or {})
    play = [{"hosts": "localhost", "gather_facts": False,
             "roles": [{"role": "rtvirt.kvm.host_prep", "vars": role_vars}]}]
    return run_playbook(tmp_path, play, check=check, timeout=600)


def _modules_run(run):
    return [t["action"] for t in module_runs(run["tasks"])]


def test_converged_host_costs_one_module_call_and_drift_is_repaired(tmp_path, partition):
    first = _play(tmp_path, partition)
    assert first["rc"] == 0, first["out"][-4000:]
    assert first["changed"] > 0
    cpuset = _cpuset_dir(partition)
    wanted = (cpuset / "cpuset.cpus").read_text().strip()
    assert wanted == pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()

    again = _play(tmp_path, partition)
    assert again["rc"] == 0 and again["changed"] == 0, again["out"][-4000:]
    assert _modules_run(again) == ["rtvirt.kvm.host_plan"], again["tasks"]
    # The line and the verdict come from the plan task on a converged host.
    assert ("the host matches the plan; no cgroup_cpuset violation host_prep answers for on the realtime CPUs"
            in again["out"]), again["out"][-3000:]

    # Drift: a hand-narrowed partition and an edited sysctl.d file. Check mode names both and writes nothing.
    (cpuset / "cpuset.cpus").write_text("1")
    sysctl_file = tmp_path / "90-rtvirt-test.conf"
    sysctl_file.write_text("# edited by hand\n")
    dry = _play(tmp_path, partition, check=True)
    assert dry["rc"] == 0 and dry["changed"] > 0, dry["out"][-4000:]
    # The partitions area is libvirt_partition's own plan, in its words.
    assert re.search(r"write '+%s'+ to \S*cpuset\.cpus" % re.escape(wanted), dry["out"]), dry["out"][-4000:]
    assert "90-rtvirt-test.conf differs" in dry["out"]
    assert "would converge partitions, sysctl; " in dry["out"], dry["out"][-3000:]
    assert (cpuset / "cpuset.cpus").read_text().strip() == "1"
    assert sysctl_file.read_text() == "# edited by hand\n"

    repaired = _play(tmp_path, partition)
    assert repaired["rc"] == 0 and repaired["changed"] > 0, repaired["out"][-4000:]
    ran = _modules_run(repaired)
    assert "rtvirt.kvm.libvirt_partition" in ran and "ansible.builtin.copy" in ran, ran
    assert "rtvirt.kvm.irq_affinity" not in ran    # an area without a difference stays skipped
    assert (cpuset / "cpuset.cpus").read_text().strip() == wanted
    assert "kernel.sched_rt_runtime_us" in sysctl_file.read_text()
    # After a change the verdict comes from the facts read again (the host_prep_verdict filter).
    assert "converged partitions, sysctl; no cgroup_cpuset violation host_prep answers for" in repaired["out"]

    settled = _play(tmp_path, partition)
    assert settled["changed"] == 0 and _modules_run(settled) == ["rtvirt.kvm.host_plan"], settled["out"][-3000:]


def test_full_path_on_request_changes_nothing_on_a_converged_host(tmp_path, partition):
    assert _play(tmp_path, partition)["rc"] == 0
    full = _play(tmp_path, partition, extra={"host_prep_fast_path": False})
    assert full["rc"] == 0 and full["changed"] == 0, full["out"][-4000:]
    assert "rtvirt.kvm.libvirt_partition" in _modules_run(full)


@pytest.fixture
def default_affinity_everywhere():
    """New IRQs allowed on every online CPU (the realtime one included), as on a host without irqaffinity=."""
    path = pathlib.Path("/proc/irq/default_smp_affinity")
    before = path.read_text().strip()
    online = pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()
    last = int(online.replace(",", "-").split("-")[-1])
    path.write_text("%x" % ((1 << (last + 1)) - 1))
    yield
    path.write_text(before)
    assert path.read_text().strip() == before


def test_a_violation_on_a_converged_host_fails_the_verdict_and_check_mode_lists_it(
        tmp_path, partition, default_affinity_everywhere):
    assert _play(tmp_path, partition)["rc"] == 0
    # IRQs are not host_prep's to manage here (host_prep_manage_irqs false), so nothing is pending and the
    # plan task's verdict decides: the default affinity includes the realtime CPU.
    kinds = {"host_prep_verify_kinds": ["irq_default_affinity"]}
    failed = _play(tmp_path, partition, extra=kinds)
    assert failed["rc"] != 0 and failed["failed"] == 1 and failed["changed"] == 0, failed["out"][-3000:]
    assert "new IRQs get affinity" in failed["out"], failed["out"][-3000:]
    assert _modules_run(failed) == ["rtvirt.kvm.host_plan"]
    dry = _play(tmp_path, partition, check=True, extra=kinds)
    assert dry["rc"] == 0 and dry["changed"] == 0, dry["out"][-3000:]
    assert "the host matches the plan; a real run would still have to fix: new IRQs get affinity" in dry["out"]


def test_bad_input_fails_in_the_plan_task_before_any_change(tmp_path, partition):
    online = pathlib.Path("/sys/devices/system/cpu/online").read_text().strip()
    bad = _play(tmp_path, partition, extra={"host_prep_realtime_cpus": online})
    assert bad["rc"] != 0 and bad["failed"] == 1
    assert "housekeeping" in bad["out"], bad["out"][-3000:]
    assert _modules_run(bad) == ["rtvirt.kvm.host_plan"]
    assert not _cpuset_dir(partition).exists()
    assert not (tmp_path / "90-rtvirt-test.conf").exists()


def test_read_only_smp_affinity_means_the_kernel_refuses_the_move():
    """The fast path skips IRQs whose smp_affinity the kernel made read-only; prove on this kernel that such an
    IRQ really cannot be moved (writing its own current value back is refused, so nothing changes either way)."""
    from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_irqs import irq_changeable
    read_only = []
    for entry in sorted(pathlib.Path("/proc/irq").iterdir()):
        if entry.name.isdigit() and not (entry / "smp_affinity").stat().st_mode & 0o200:
            read_only.append(entry)
    for entry in read_only:
        assert irq_changeable("/proc", "/sys", entry.name) is False
        current = (entry / "smp_affinity_list").read_text().strip()
        with pytest.raises(OSError):
            (entry / "smp_affinity_list").write_text(current)
        assert (entry / "smp_affinity_list").read_text().strip() == current
    # These machines have such IRQs (virtio's managed queue interrupts); without any the proof above is empty.
    assert read_only, "no IRQ with a read-only smp_affinity on this host: nothing was proven"
