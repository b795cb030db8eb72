import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import (
    HYBRID,
    V1,
    V2,
    CgroupDiscoveryError,
    parse_mountinfo,
    unescape_mount_field,
)

# CentOS 7: combined controller mounts, as in the seed's libvirt host.
CENTOS7 = """\
25 19 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup \
rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpuset,cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpuset,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,blkio
"""

# This project's CI machines: one mount per controller plus cgroup2 at /sys/fs/cgroup/unified.
HYBRID_HOST = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

UNIFIED = """\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def test_combined_v1_mount_carries_cpuset():
    layout = parse_mountinfo(CENTOS7)
    assert layout.mode == V1
    assert layout.cpuset.mountpoint == "/sys/fs/cgroup/cpuset,cpu,cpuacct"
    assert layout.v1_mount("cpuacct") is layout.cpuset
    assert layout.unified is None
    assert layout.controller_mounts()["memory"].mountpoint == "/sys/fs/cgroup/memory"


def test_hybrid_keeps_cpuset_on_v1():
    layout = parse_mountinfo(HYBRID_HOST, lambda mp: "hugetlb")
    assert layout.mode == HYBRID
    assert layout.cpuset.mountpoint == "/sys/fs/cgroup/cpuset"
    assert layout.cpuset.version == 1
    assert layout.unified.mountpoint == "/sys/fs/cgroup/unified"
    assert layout.unified.controllers == ("hugetlb",)
    assert layout.controller_mounts()["cpuset"].version == 1


def test_unified_offers_cpuset_when_enabled():
    layout = parse_mountinfo(UNIFIED, lambda mp: "cpuset cpu io memory pids")
    assert layout.mode == V2
    assert layout.cpuset.mountpoint == "/sys/fs/cgroup"
    assert layout.cpuset.version == 2
    assert layout.as_dict()["cpuset_version"] == 2


def test_unified_without_cpuset_has_no_cpuset_hierarchy():
    assert parse_mountinfo(UNIFIED, lambda mp: "memory pids").cpuset is None


def test_no_cgroups_at_all():
    with pytest.raises(CgroupDiscoveryError, match="no cgroup hierarchy"):
        parse_mountinfo("22 27 0:21 / /proc rw,relatime - proc proc rw\n")


def test_escaped_mountpoint():
    text = r"34 31 0:31 / /mnt/cg\040set rw - cgroup cgroup rw,cpuset" + "\n"
    assert parse_mountinfo(text).cpuset.mountpoint == "/mnt/cg set"
    assert unescape_mount_field(r"a\134b") == "a\\b"


def test_bind_mount_of_same_hierarchy_counts_once():
    text = HYBRID_HOST + "50 31 0:31 / /mnt/cpuset rw - cgroup cgroup rw,cpuset\n"
    layout = parse_mountinfo(text, lambda mp: "")
    assert [m.mountpoint for m in layout.mounts if "cpuset" in m.controllers] == ["/sys/fs/cgroup/cpuset"]
