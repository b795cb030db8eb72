"""Two runs at once for the one free pCPU, on a real libvirtd: exactly one owner, and the other run fails naming it.

Both runs are real ansible processes.  The test holds the pCPU lock (/run/lock/rtvirt-kvm-pcpu.lock) while it starts
them, waits until each run's realtime_domain process has the lock file open (it then waits for the lock, its plan
made from the books as they were before either guest was defined), and lets go: the two contend for the lock at
the same moment, as two operators' runs would.  Without the lock and the re-check under it both would define
their guest on the same pCPU.  Nothing here is timed; guests are removed by name, processes ended by PID.
"""
import json
import os
import pathlib
import re
import subprocess
import time

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import PCPU_LOCK_PATH
from tests.support.ansible_runner import REPO, ansible_env, parse_adhoc_output, run_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu
from tests.support.playbook_runner import RECAP

pytestmark = pytest.mark.libvirt

GATE_TIMEOUT = 600   # a bound on waiting for the runs to reach the lock, not a measured time
ATTEMPTS = 5         # on a shared machine another session's guest may take the pCPU before both runs plan


def _children():
    """ppid → [pid] of every process now."""
    children = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def _descendants(pid):
    children, found, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _has_open(pid, path):
    try:
        fds = list(pathlib.Path("/proc/%d/fd" % pid).iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == path:
                return True
        except OSError:
            continue
    return False


def _wait_at_the_lock(procs, taken_by_others=None):
    """Wait until a descendant of every run has the pCPU lock file open (it is then in HostLock's wait).

    False when a run ended first because its plan found the pCPU held by ``taken_by_others`` (the text of that
    refusal): another session's guest on this shared machine took it in between."""
    deadline = time.monotonic() + GATE_TIMEOUT
    waiting = set()
    while len(waiting) < len(procs):
        for index, proc in enumerate(procs):
            if proc.poll() is not None:
                out, err = proc.communicate()
                if taken_by_others and taken_by_others in out + err:
                    return False
                pytest.fail("run %d ended before it reached the pCPU lock (rc %s):\n%s\n%s"
                            % (index, proc.returncode, out[-3000:], err[-3000:]))
            if any(_has_open(pid, os.path.realpath(PCPU_LOCK_PATH)) for pid in _descendants(proc.pid)):
                waiting.add(index)
        assert time.monotonic() < deadline, "the runs did not reach the pCPU lock"
        time.sleep(0.2)
    return True


def _finish(procs):
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        outputs.append((proc.returncode, out, err))
    return outputs


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)


def _remove_domains(rig, names):
    for name in names:
        if name in rig.domains(inactive=False):
            rig.destroy(name)
        if name in rig.domains():
            rig.undefine(name)


def _vcpu_pins(rig, name):
    xml = rig.virsh("dumpxml", "--inactive", name).stdout
    return re.findall(r"<vcpupin vcpu='(\d+)' cpuset='([^']+)'/>", xml)


def _plans_from_the_same_books(names, pool):
    """One pcpu_allocation plan per guest, as two operators running it ad hoc would make them; made again when
    another session's guest took the pCPU in between (the machine is shared)."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while True:
        wait_for_free_pcpu(names[0], pool)
        plans = [run_module("rtvirt.kvm.pcpu_allocation", {"name": name, "vcpus": 1, "pool": pool}) for name in names]
        if [p.get("vcpupin") for p in plans] == [{"0": pool}, {"0": pool}]:
            return plans
        assert time.monotonic() < deadline, plans
        time.sleep(5)


def test_two_realtime_domain_runs_at_once_define_exactly_one_guest(libvirt_rig, unique_name):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), str(cpus[0])
    names = ["%s-a" % unique_name, "%s-b" % unique_name]
    plans = _plans_from_the_same_books(names, pool)
    env = ansible_env()
    procs = []
    try:
        with HostLock(PCPU_LOCK_PATH, timeout=GATE_TIMEOUT, owner="test gate %s" % unique_name):
            for name, plan in zip(names, plans):
                args = {"name": name, "vcpus": 1, "memory_mib": 128, "vcpupin": plan["vcpupin"],
                        "emulator_cpus": housekeeping, "metadata": plan["metadata"], "running": False,
                        "lock_timeout": GATE_TIMEOUT}
                procs.append(subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                     "-e", "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"],
                     "-m", "rtvirt.kvm.realtime_domain", "-a", json.dumps(args)],
                    env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True))
            _wait_at_the_lock(procs)
        results = [parse_adhoc_output(out, "localhost", err) for _rc, out, err in _finish(procs)]

        owners = [name for name, result in zip(names, results) if not result.get("failed")]
        assert len(owners) == 1, results
        owner = owners[0]
        loser, refused = next((n, r) for n, r in zip(names, results) if r.get("failed"))
        assert refused["changed"] is False and refused["defined"] is False, refused
        assert ("guest '%s' cannot be defined with pCPU %s: already held by guest '%s' (%s)"
                % (loser, pool, owner, pool)) in refused["msg"], refused["msg"]
        defined = libvirt_rig.domains()
        assert owner in defined and loser not in defined
        assert _vcpu_pins(libvirt_rig, owner) == [("0", pool)]
        record = open(PCPU_LOCK_PATH).read()     # emptied by each run before it let go (others may hold it now)
        assert not any("realtime_domain %s\n" % name in record for name in names), record
    finally:
        _stop(procs)
        _remove_domains(libvirt_rig, names)
    assert not set(names) & set(libvirt_rig.domains())


def _role_play(name, partition, pool, tmp_path):
    role_vars = {"realtime_vm_guests": [{"name": name, "vcpus": 1, "memory_mib": 128}],
                 "realtime_vm_isolated_cpus": pool, "realtime_vm_partition": partition,
                 "realtime_vm_cpu_map": False, "realtime_vm_cpu_map_path": str(tmp_path / "cpu-map.html")}
    # The first run to reach the lock waits there for the other: its realtime_domain must outwait the gate.
    return [{"hosts": "localhost", "gather_facts": False,
             "module_defaults": {"rtvirt.kvm.realtime_domain": {"lock_timeout": GATE_TIMEOUT}},
             "roles": [{"role": "rtvirt.kvm.realtime_vm", "vars": role_vars}]}]


def _start_playbook(directory, plays):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "play.yml"
    path.write_text(json.dumps(plays))
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"})
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"], str(path)],
        env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_realtime_vm_runs_at_once_end_with_one_owner(libvirt_rig, unique_name, tmp_path, fifo_allowed):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool = str(cpus[-1])
    partition = "/%s" % unique_name
    names = ["%s-a" % unique_name, "%s-b" % unique_name]
    procs = []
    try:
        for attempt in range(ATTEMPTS):
            wait_for_free_pcpu(names[0], pool)
            # Each run plans (guest_plan) while the gate holds the lock, so both plan `pool` from the same books.
            with HostLock(PCPU_LOCK_PATH, timeout=GATE_TIMEOUT, owner="test gate %s" % unique_name):
                procs = [_start_playbook(tmp_path / ("%s-%d" % (name, attempt)),
                                         _role_play(name, partition, pool, tmp_path / ("%s-%d" % (name, attempt))))
                         for name in names]
                ready = _wait_at_the_lock(procs, taken_by_others="only 0 are free")
            if ready:
                break
            # Another session's guest took the pCPU before both runs had planned: let them end, then again.
            _finish([proc for proc in procs if proc.poll() is None])
            _remove_domains(libvirt_rig, names)
            time.sleep(10)
        else:
            pytest.fail("another session's guest kept taking pCPU %s before both runs had planned" % pool)
        runs = []
        for rc, out, err in _finish(procs):
            recap = RECAP.search(out)
            assert recap, (out + err)[-4000:]
            runs.append(dict(rc=rc, failed=int(recap.group(4)), out=out + err))

        owners = [name for name, run in zip(names, runs) if run["rc"] == 0]
        assert len(owners) == 1, [run["out"][-3000:] for run in runs]
        owner = owners[0]
        loser, refused = next((n, r) for n, r in zip(names, runs) if r["rc"] != 0)
        assert refused["failed"] == 1
        failure = refused["out"].index("cannot be defined with pCPU")
        assert "TASK [rtvirt.kvm.realtime_vm : Define and start each present guest]" in refused["out"][:failure]
        assert ("guest '%s' cannot be defined with pCPU %s: already held by guest '%s' (%s)"
                % (loser, pool, owner, pool)) in refused["out"], refused["out"][-3000:]
        assert owner in libvirt_rig.domains(inactive=False) and loser not in libvirt_rig.domains()
        assert _vcpu_pins(libvirt_rig, owner) == [("0", pool)]
        # The loser's run again, now planned from the books that name the owner: refused at the plan, nothing defined.
        again = _start_playbook(tmp_path / "again", _role_play(loser, partition, pool, tmp_path / "again"))
        out, err = again.communicate(timeout=900)
        assert again.returncode != 0 and "only 0 are free" in out + err, (out + err)[-3000:]
        held = re.search(r"; held: (.*?)\"", out + err)
        assert held and "%s %s" % (owner, pool) in held.group(1).split(", "), (out + err)[-3000:]
        assert loser not in libvirt_rig.domains()
    finally:
        _stop(procs)
        _remove_domains(libvirt_rig, names)
        run_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert not set(names) & set(libvirt_rig.domains())
    assert not list(pathlib.Path("/sys/fs/cgroup").glob("*/%s.partition" % unique_name))
