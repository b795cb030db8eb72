"""Throwaway cgroups in this machine's real cpuset hierarchy, and processes the tests own."""
import os
import subprocess
import uuid

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import discover_layout


def _cpuset_mount():
    layout = discover_layout()
    mount = layout.cpuset
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs root and a cpuset hierarchy (this machine has %s)" % layout.mode)
    return mount


@pytest.fixture
def cpuset_root():
    """(mountpoint, version) of the real cpuset hierarchy."""
    mount = _cpuset_mount()
    return mount.mountpoint, mount.version


@pytest.fixture
def sandbox(cpuset_root):
    """A unique top-level cgroup name; whatever the test leaves below it is removed afterwards."""
    mountpoint = cpuset_root[0]
    name = "rtvirt-test-" + uuid.uuid4().hex[:10]
    yield name
    top = os.path.join(mountpoint, name)
    if not os.path.isdir(top):
        return
    # Move anything still inside to the root first (only our own processes can be there), then rmdir deepest first.
    for dirpath, dummy_dirs, dummy_files in os.walk(top, topdown=False):
        with open(os.path.join(dirpath, "tasks")) as handle:
            for tid in handle.read().split():
                try:
                    with open(os.path.join(mountpoint, "tasks"), "w") as root_tasks:
                        root_tasks.write(tid)
                except OSError:
                    pass
        os.rmdir(dirpath)


@pytest.fixture
def spawn():
    """Start `sleep` processes owned by the test; they are ended by PID afterwards."""
    started = []

    def _spawn():
        proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc.pid

    yield _spawn
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def read(mountpoint, path, knob):
    with open(os.path.join(mountpoint, path, knob)) as handle:
        return handle.read().strip()


def snapshot(mountpoint, top):
    """Every cpuset knob and task list in a subtree: a check-mode run must leave it byte-for-byte equal."""
    result = {}
    base = os.path.join(mountpoint, top)
    if not os.path.isdir(base):
        return result
    for dirpath, dummy_dirs, files in os.walk(base):
        for name in sorted(files):
            if name.startswith("cpuset.") and "pressure" not in name or name in ("tasks", "cgroup.procs"):
                with open(os.path.join(dirpath, name), "rb") as handle:
                    result[os.path.relpath(os.path.join(dirpath, name), mountpoint)] = handle.read()
    return result


def cgroup_of(pid, controller="cpuset"):
    with open("/proc/%d/cgroup" % pid) as handle:
        for line in handle:
            dummy_hid, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None
