"""A cgroup_cpuset run SIGKILLed halfway through a large plan, on this machine's real cpuset hierarchy.

The run builds thousands of throwaway cgroups below the test's rtvirt-test-<uuid> sandbox through ansible-playbook.
The test finds the module process by the PID it wrote into the engine's lock file, steps it (SIGSTOP/SIGCONT)
until part of the tree exists, and SIGKILLs it there.  Right after, the lock is free (the kernel dropped the flock
with the process, although the file still names it), and the same call converges: every cgroup as asked, and a
third run changes nothing.  Nothing is timed; the sandbox fixture removes the tree.
"""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import (
    LOCK_PATH,
    HostLock,
    LockTimeout,
    lock_holder,
)
from tests.integration.cpuset.conftest import read
from tests.support.ansible_runner import REPO, ansible_env
from tests.support.playbook_runner import RECAP

pytestmark = pytest.mark.real

# Two levels keep the planner's sibling checks small; the plan has three operations per cgroup (mkdir, cpus, mems).
PARENTS, CHILDREN = 40, 50
BOUND = 600   # a bound on waiting for the run to get somewhere, not a measured time


def _play(tmp_path, sandbox):
    cgroups = [{"path": sandbox}]
    for parent in range(PARENTS):
        cgroups.append({"path": "%s/p%02d" % (sandbox, parent)})
        cgroups.extend({"path": "%s/p%02d/c%02d" % (sandbox, parent, child)} for child in range(CHILDREN))
    path = tmp_path / "play.yml"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Build the sandbox tree", "rtvirt.kvm.cgroup_cpuset": {"cgroups": cgroups}}]}]))
    return path, [c["path"] for c in cgroups]


def _argv(env, play):
    return [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"], str(play)]


def _run(play):
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"})
    proc = subprocess.run(_argv(env, play), env=env, cwd=str(REPO), capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL, check=False)
    recap = RECAP.search(proc.stdout)
    assert recap, (proc.stdout + proc.stderr)[-4000:]
    return dict(rc=proc.returncode, changed=int(recap.group(2)), out=proc.stdout + proc.stderr)


def _ppid(pid):
    try:
        stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descends_from(pid, ancestor):
    while pid and pid > 1:
        if pid == ancestor:
            return True
        pid = _ppid(pid)
    return False


def _alive(pid):
    try:
        stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _holder_pid(run):
    """The module process of ``run`` once it holds the engine's lock (the PID it wrote there)."""
    deadline = time.monotonic() + BOUND
    while True:
        holder = lock_holder(LOCK_PATH)
        if holder and "cgroup_cpuset" in holder:
            pid = int(holder.split()[1])
            if _descends_from(pid, run.pid):
                return pid
        assert run.poll() is None, "the run ended before it took the lock: %s" % (run.communicate()[0][-3000:],)
        assert time.monotonic() < deadline, "the run did not take the lock"
        time.sleep(0.01)


def _made(mountpoint, paths):
    return sum(os.path.isdir(os.path.join(mountpoint, p)) for p in paths)


def _stop_halfway(pid, mountpoint, paths):
    """Step the stopped process until part of the tree exists; it is left stopped there."""
    os.kill(pid, signal.SIGSTOP)
    while True:
        made = _made(mountpoint, paths)
        assert made < len(paths), "the plan finished before the test could stop it halfway"
        if made > 0:
            return made
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
        os.kill(pid, signal.SIGSTOP)


def test_sigkill_halfway_leaves_no_stale_lock_and_the_same_call_converges(cpuset_root, sandbox, tmp_path):
    mountpoint = cpuset_root[0]
    play, paths = _play(tmp_path, sandbox)
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"})
    run = subprocess.Popen(_argv(env, play), env=env, cwd=str(REPO), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    holder = None
    try:
        holder = _holder_pid(run)
        made = _stop_halfway(holder, mountpoint, paths)
        os.kill(holder, signal.SIGKILL)
        deadline = time.monotonic() + BOUND
        while _alive(holder):
            assert time.monotonic() < deadline, "pid %d outlived SIGKILL" % holder
            time.sleep(0.01)
        # The file still names the dead holder, and the lock is free: nobody has to clean anything up.
        assert open(LOCK_PATH).read() == "%d cgroup_cpuset\n" % holder
        try:
            with HostLock(LOCK_PATH, timeout=0, owner="test %s" % sandbox):
                pass
        except LockTimeout:
            # Another run on this machine (the main job) took it in between; it must be a live process, not ours.
            other = lock_holder(LOCK_PATH)
            assert other and not other.startswith("pid %d " % holder), other
            with HostLock(LOCK_PATH, timeout=BOUND, owner="test %s" % sandbox):
                pass
        out, _err = run.communicate(timeout=BOUND)
        assert run.returncode != 0, out[-3000:]
        assert 0 < made <= _made(mountpoint, paths) < len(paths)    # halfway: some made, not all
    finally:
        if holder is not None and _alive(holder):
            os.kill(holder, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=60)

    again = _run(play)
    assert again["rc"] == 0 and again["changed"] == 1, again["out"][-3000:]
    assert _made(mountpoint, paths) == len(paths)
    root_cpus, root_mems = read(mountpoint, "", "cpuset.cpus"), read(mountpoint, "", "cpuset.mems")
    for path in paths:
        assert (read(mountpoint, path, "cpuset.cpus"), read(mountpoint, path, "cpuset.mems")) == (root_cpus, root_mems)
    third = _run(play)
    assert third["rc"] == 0 and third["changed"] == 0, third["out"][-3000:]
