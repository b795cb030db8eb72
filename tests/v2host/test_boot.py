"""The systemd + cgroup v2 test host is what the v2 tests need, on both kernels.

6.1 (bookworm): cgroup v2 cpuset with partitions, no cpuset.cpus.exclusive.
6.12 (bookworm-backports): also cpuset.cpus.exclusive (6.7+) and the root's cpuset.cpus.isolated (6.8+).
"""
import os
import pathlib
import subprocess
import uuid

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist

pytestmark = pytest.mark.v2host

REPO = pathlib.Path(__file__).resolve().parents[2]
CG = "/sys/fs/cgroup"


def run(host, cmd):
    proc = host.ssh(cmd)
    assert proc.returncode == 0, "%r failed (rc=%d): %s" % (cmd, proc.returncode, proc.stderr)
    return proc.stdout


def exists(host, path):
    return host.ssh("test -e %s" % path).returncode == 0


@pytest.fixture
def child_cgroup(v2host):
    """A throwaway child of the root with the cpuset controller enabled; yields its path.

    The root's subtree_control is put back as it was, and the child removed, afterwards."""
    before = run(v2host, "cat %s/cgroup.subtree_control" % CG).split()
    path = "%s/rtvirt-test-%s" % (CG, uuid.uuid4())
    if "cpuset" not in before:
        run(v2host, "echo +cpuset > %s/cgroup.subtree_control" % CG)
    run(v2host, "mkdir %s" % path)
    try:
        yield path
    finally:
        v2host.ssh("rmdir %s" % path)
        if "cpuset" not in before:
            v2host.ssh("echo -cpuset > %s/cgroup.subtree_control" % CG)
        after = run(v2host, "cat %s/cgroup.subtree_control" % CG).split()
        assert sorted(after) == sorted(before)
        assert not exists(v2host, path)


def test_runs_the_requested_kernel(v2host):
    assert v2host.kernel_release.startswith(v2host.kernel + "."), v2host.kernel_release


def test_pid1_is_systemd(v2host):
    assert run(v2host, "cat /proc/1/comm").strip() == "systemd"
    assert run(v2host, "readlink -f /proc/1/exe").strip() == "/usr/lib/systemd/systemd"


def test_cgroup2_only(v2host):
    assert run(v2host, "stat -fc %%T %s" % CG).strip() == "cgroup2fs"
    mount_types = [line.split()[2] for line in run(v2host, "cat /proc/self/mounts").splitlines()]
    assert "cgroup" not in mount_types      # no v1 hierarchy anywhere: a pure unified host


def test_cpuset_controller_available(v2host):
    assert "cpuset" in run(v2host, "cat %s/cgroup.controllers" % CG).split()


def test_at_least_four_cpus_online(v2host):
    online = parse_cpulist(run(v2host, "cat /sys/devices/system/cpu/online").strip())
    assert len(online) >= 4, online


def test_child_has_partition_file(v2host, child_cgroup):
    assert exists(v2host, child_cgroup + "/cpuset.cpus.partition")
    assert run(v2host, "cat %s/cpuset.cpus.partition" % child_cgroup).strip() == "member"


def test_cpus_exclusive_only_on_612(v2host, child_cgroup):
    assert exists(v2host, child_cgroup + "/cpuset.cpus.exclusive") == (v2host.kernel == "6.12")


def test_root_cpus_isolated_only_on_612(v2host):
    assert exists(v2host, CG + "/cpuset.cpus.isolated") == (v2host.kernel == "6.12")


def test_ansible_reaches_it(v2host):
    env = dict(os.environ)   # what hack/env.sh sets, in case it was not sourced
    env["PATH"] = str(REPO / ".venv" / "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".venv"))
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    cmd = ["ansible", "-i", str(v2host.inventory_path), "v2host",
           "-m", "ansible.builtin.setup", "-a", "filter=ansible_kernel"]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "v2host | SUCCESS" in proc.stdout, proc.stdout
    assert v2host.kernel_release in proc.stdout, proc.stdout
