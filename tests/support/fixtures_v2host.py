"""pytest fixtures for the systemd + cgroup v2 test host (tests/support/v2host, layer `v2host`).

- ``v2host``: session-scoped, parametrized over the kernels ``"6.1"`` and ``"6.12"``; pytest runs all
  tests of one kernel before booting the other, so one guest runs at a time.
- ``v2host_61`` / ``v2host_612``: one kernel for tests that need exactly that one.
- ``v2host_numa``: module-scoped, 6.1 booted as a production-shaped host, 2 sockets x 2 cores x 2 threads on
  2 NUMA nodes (8 CPUs, ``NUMA_SMT``); powered off when the module that used it ends.
- ``prodhost``: module-scoped, the "prod" image (build.sh's second flavour: PREEMPT_RT kernel 6.1-rt, libvirt
  as Debian packages it, machined) booted production-shaped like ``v2host_numa`` (``NUMA_SMT``) with 4 GiB,
  2 GiB per node; powered off when the module that used it ends.
- ``v1host``: module-scoped, the same image on 6.1 in the CI machines' shape (``init="v1"``: no systemd as
  PID 1, one cgroup v1 hierarchy per controller, cgroup2 at /sys/fs/cgroup/unified), with 4 CPUs. It is
  powered off when the module that used it ends (its tests may reboot it).

All three share one pool: a kernel's guest boots once (about 30 s under TCG) and is powered off when
the last fixture holding it is torn down (``systemctl poweroff``, then QEMU by its PID). Console
logs stay in pytest's temporary directory. The image is built or reused by build.sh
(/var/cache/rtvirt-v2host/); a build or boot failure is an error, missing prerequisites a skip
(which tests/conftest.py turns into a failure in CI).
"""
import os
import shutil

import pytest

from tests.support.v2host.boot import KERNELS, CpuTopology, V2Host, ensure_built

#: The production-shaped test host: two sockets, each its own NUMA node, of two cores with two threads.
NUMA_SMT = CpuTopology(sockets=2, cores=2, threads=2, nodes=2)


def _prerequisites_missing():
    if os.geteuid() != 0:
        return "the v2 test host needs root (debootstrap, chroot)"
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    return None


class _V2HostPool:
    """Boots each kernel's guest at most once at a time; shuts it down when nobody holds it."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._cache_dirs = {}
        self._hosts = {}
        self._holders = {}

    def acquire(self, kernel, init="systemd", topology=None, flavour="base", memory_mib=2048):
        key = (kernel, init, topology, flavour)
        if key not in self._hosts:
            reason = _prerequisites_missing()
            if reason:
                pytest.skip(reason)
            if flavour not in self._cache_dirs:
                self._cache_dirs[flavour] = ensure_built(flavour=flavour)
            state_dir = self._tmp.mktemp("v2host-%s%s%s" % (kernel.replace(".", ""), "" if init == "systemd" else "-" + init,
                                                            "" if topology is None else "-%dcpu" % topology.cpus))
            host = V2Host(kernel, state_dir=state_dir, cache_dir=self._cache_dirs[flavour], init=init, topology=topology,
                          flavour=flavour, memory_mib=memory_mib)
            host.boot()
            self._hosts[key] = host
            self._holders[key] = 0
        self._holders[key] += 1
        return self._hosts[key]

    def release(self, kernel, init="systemd", topology=None, flavour="base"):
        key = (kernel, init, topology, flavour)
        self._holders[key] -= 1
        if self._holders[key] == 0:
            self._hosts.pop(key).shutdown()

    def close(self):
        for kernel in list(self._hosts):
            self._hosts.pop(kernel).shutdown()


@pytest.fixture(scope="session")
def v2host_pool(tmp_path_factory):
    pool = _V2HostPool(tmp_path_factory)
    yield pool
    pool.close()


def _hold(pool, kernel, init="systemd", topology=None, flavour="base", memory_mib=2048):
    host = pool.acquire(kernel, init, topology, flavour, memory_mib)
    try:
        yield host
    finally:
        pool.release(kernel, init, topology, flavour)


@pytest.fixture(scope="session", params=sorted(KERNELS, key=lambda k: tuple(map(int, k.split(".")))))
def v2host(request, v2host_pool):
    """A booted test host (V2Host), once per kernel: "6.1", then "6.12"."""
    yield from _hold(v2host_pool, request.param)


@pytest.fixture(scope="session")
def v2host_61(v2host_pool):
    """The test host on bookworm's 6.1 kernel (cpuset partitions, no cpuset.cpus.exclusive)."""
    yield from _hold(v2host_pool, "6.1")


@pytest.fixture(scope="session")
def v2host_612(v2host_pool):
    """The test host on the 6.12 backports kernel (cpuset.cpus.exclusive, cpuset.cpus.isolated)."""
    yield from _hold(v2host_pool, "6.12")


@pytest.fixture(scope="module")
def v1host(v2host_pool):
    """The test host on 6.1 in the CI machines' shape: no systemd, cgroup v1 per controller (init="v1")."""
    yield from _hold(v2host_pool, "6.1", "v1")


@pytest.fixture(scope="module")
def v2host_numa(v2host_pool):
    """The test host on 6.1 with 2 sockets x 2 cores x 2 threads on 2 NUMA nodes (``NUMA_SMT``), 8 CPUs."""
    yield from _hold(v2host_pool, "6.1", topology=NUMA_SMT)


@pytest.fixture(scope="module")
def prodhost(v2host_pool):
    """The production-shaped host: PREEMPT_RT 6.1, libvirt under machined, 2 sockets x 2 cores x 2 threads on 2 NUMA
    nodes, 4 GiB. Its guests run under TCG (no nested KVM): placement can be tested there, latency cannot."""
    yield from _hold(v2host_pool, "6.1-rt", topology=NUMA_SMT, flavour="prod", memory_mib=4096)
