"""pytest fixtures for the libvirt layer; registered via `pytest_plugins` in tests/conftest.py."""
import os
import pathlib
import time
import uuid

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist
from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module

SCHED_RT_RUNTIME = pathlib.Path("/proc/sys/kernel/sched_rt_runtime_us")


@pytest.fixture(scope="session")
def libvirt_rig(tmp_path_factory):
    """A running libvirtd for the whole session: started (or reused) once, stopped at the end.

    Only daemons this session started are stopped (see libvirt_rig.stop); the daemons' logs are
    /var/log/libvirt/libvirtd.log and virtlogd.log.
    """
    if os.geteuid() != 0:
        pytest.skip("the libvirt rig needs root")
    rig_lib.ensure_installed()
    state_dir = tmp_path_factory.mktemp("libvirt-rig")
    # holder_pid: if this session dies without stopping, other rigs must not hand daemons to it.
    rig = rig_lib.start(state_dir, holder_pid=os.getpid())
    yield rig
    rig_lib.stop(state_dir)


@pytest.fixture
def unique_name():
    """A domain name no other test uses: rtvirt-t-<8 hex digits> (short enough that libvirt
    keeps it whole in cgroup names)."""
    return "rtvirt-t-%s" % uuid.uuid4().hex[:8]


@pytest.fixture
def fifo_allowed():
    """kernel.sched_rt_runtime_us=-1 for the test (host_prep's job on a real host); restored after."""
    old = SCHED_RT_RUNTIME.read_text().strip()
    SCHED_RT_RUNTIME.write_text("-1")
    yield
    SCHED_RT_RUNTIME.write_text(old)


def online_cpus():
    """This host's online CPUs, ascending."""
    return sorted(parse_cpulist(pathlib.Path("/sys/devices/system/cpu/online").read_text()))


def wait_for_free_pcpu(name, pool):
    """Another engineer's guest (or the inventory's rt-demo) may hold the one realtime CPU of this host: wait
    for it to be free (never remove it)."""
    deadline = time.monotonic() + 900
    while True:
        result = run_module("rtvirt.kvm.pcpu_allocation", {"name": name, "vcpus": 1, "pool": pool})
        if not result.get("failed"):
            return
        if time.monotonic() > deadline:
            pytest.fail("no free pCPU in the pool %s for the test guest: %s" % (pool, result.get("msg")))
        time.sleep(10)
