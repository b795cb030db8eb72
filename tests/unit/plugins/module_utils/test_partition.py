"""Pure tests of libvirt partition naming, hierarchy detection, tunables and slice units."""
import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupMount
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    UNLIMITED,
    PartitionNameError,
    Tunables,
    guest_of_cgroup,
    libvirt_hierarchies,
    parse_name,
    parse_proc_cgroups,
    parse_qemu_conf_controllers,
    parse_size,
    removal_order,
    slice_name,
    systemd_escape,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_cgroupfs import plan_tunables
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_systemd import render_slice_unit

SUBSYSTEMS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event",
              "net_prio", "hugetlb", "pids")


@pytest.mark.parametrize("name, path, slices", [
    ("/machine/production", "machine/production.partition", "machine.slice/machine-production.slice"),
    ("/machine/tenant/rt", "machine/tenant.partition/rt.partition",
     "machine.slice/machine-tenant.slice/machine-tenant-rt.slice"),
    # libvirt adds no suffix to a level that already holds a dot
    ("/machine/rt.v2", "machine/rt.v2", "machine.slice/machine-rt.v2.slice"),
    # '_' prefix: levels starting with '_', '.', 'cgroup.' or '<controller>.' (virCgroupPartitionEscape)
    ("/machine/cpu", "machine/_cpu.partition", "machine.slice/machine-cpu.slice"),
    ("/machine/memory/x", "machine/_memory.partition/x.partition",
     "machine.slice/machine-memory.slice/machine-memory-x.slice"),
    ("/machine/_rt", "machine/__rt.partition", "machine.slice/machine-_rt.slice"),
    ("/machine/cgroup.x", "machine/_cgroup.x", "machine.slice/machine-cgroup.x.slice"),
    ("/machine/cpux", "machine/cpux.partition", "machine.slice/machine-cpux.slice"),
    # '-' is systemd's level separator: escaped in the slice, literal in the cgroup directory
    ("/machine/my-rt", "machine/my-rt.partition", "machine.slice/machine-my\\x2drt.slice"),
])
def test_names(name, path, slices):
    pname = parse_name(name, SUBSYSTEMS)
    assert pname.cgroup_path == path
    assert pname.slice_path == slices
    assert pname.slice == slices.rsplit("/", 1)[-1]


def test_levels_top_first():
    pname = parse_name("/machine/tenant/rt", SUBSYSTEMS)
    assert pname.levels == ["machine", "machine/tenant.partition", "machine/tenant.partition/rt.partition"]
    assert pname.parent_path == "machine/tenant.partition"


@pytest.mark.parametrize("text, escaped", [
    ("machine/production", "machine-production"),
    ("machine/my-rt", "machine-my\\x2drt"),
    (".hidden", "\\x2ehidden"),
    ("a b", "a\\x20b"),
    ("back\\slash", "back\\x5cslash"),
    ("x:y_z.w", "x:y_z.w"),
])
def test_systemd_escape_matches_systemd_escape(text, escaped):
    assert systemd_escape(text) == escaped


def test_slice_name_as_libvirt():
    assert slice_name("/machine/tenant/rt") == "machine-tenant-rt.slice"


@pytest.mark.parametrize("name, message", [
    ("machine/rt", "not absolute"),
    ("", "empty"),
    ("/machine/rt/", "ends with '/'"),
    ("/machine//rt", "empty level"),
    ("/machine/../rt", "'..'"),
    ("/machine/./rt", "'.'"),
    ("/machine/r t", "holds ' '"),
    ("/machine/r\\t", "holds"),
    ("/machine/rt\n", "holds"),
    ("/machine/grün", "holds"),
    ("/system/rt", "systemd's own system.slice"),
    ("/user/1000", "logind"),
    ("/machine/qemu-1-x.libvirt-qemu", "libvirt domain"),
    ("/machine/" + "a" * 250, "longer"),
])
def test_bad_names(name, message):
    with pytest.raises(PartitionNameError, match=None) as info:
        parse_name(name, SUBSYSTEMS)
    assert message in str(info.value)


@pytest.mark.parametrize("name, dirs, slice_path, default", [
    # Top-level partitions sit beside /machine (docs/LAYOUT.md); libvirt suffixes their first level.
    ("/rt", ("rt.partition",), "rt.slice", False),
    ("/rt/fast", ("rt.partition", "fast.partition"), "rt.slice/rt-fast.slice", False),
    ("/cpu", ("_cpu.partition",), "cpu.slice", False),
    ("/machine", ("machine",), "machine.slice", True),
])
def test_top_level_and_default(name, dirs, slice_path, default):
    pname = parse_name(name, SUBSYSTEMS)
    assert (pname.dirs, pname.slice_path, pname.is_default) == (dirs, slice_path, default)


def test_proc_cgroups():
    text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t6\t1\ncpu\t1\t6\t1\n"
    assert parse_proc_cgroups(text) == ("cpuset", "cpu")


def test_qemu_conf_controllers():
    assert parse_qemu_conf_controllers('#cgroup_controllers = [ "cpu" ]\nuser = "root"\n') is None
    text = 'cgroup_controllers = [ "cpu", "memory",\n  "cpuset" ] # trailing\n'
    assert parse_qemu_conf_controllers(text) == ("cpu", "memory", "cpuset")


def _hybrid():
    v1 = [CgroupMount("/sys/fs/cgroup/%s" % c, 1, (c,)) for c in
          ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")]
    return v1 + [CgroupMount("/sys/fs/cgroup/systemd", 1, (), name="systemd"),
                 CgroupMount("/sys/fs/cgroup/unified", 2, ("hugetlb",))]


def test_hybrid_host_as_libvirt_9_sees_it():
    """cpuacct and devices go to the v2 backend (it claims them first), so libvirt never makes
    partition dirs in the v1 cpuacct and devices hierarchies (seen on the project's machines)."""
    found = {h.key: h for h in libvirt_hierarchies(_hybrid())}
    assert set(found) == {"unified", "cpu", "cpuset", "memory", "freezer", "blkio"}
    assert found["unified"].controllers == ("cpuacct", "devices")
    assert found["blkio"].optional and not found["cpu"].optional


def test_qemu_conf_narrows_the_hierarchies():
    found = {h.key for h in libvirt_hierarchies(_hybrid(), wanted=("cpu", "cpuset"))}
    assert found == {"cpu", "cpuset"}


def test_comounted_v1_counts_once():
    mounts = [CgroupMount("/cg/cpu,cpuacct", 1, ("cpu", "cpuacct")), CgroupMount("/cg/cpuset", 1, ("cpuset",))]
    found = libvirt_hierarchies(mounts)
    assert [(h.mountpoint, h.controllers) for h in found] == [("/cg/cpu,cpuacct", ("cpu", "cpuacct")),
                                                              ("/cg/cpuset", ("cpuset",))]


def test_pure_v2():
    found = libvirt_hierarchies([CgroupMount("/sys/fs/cgroup", 2, ("cpuset", "cpu", "io", "memory", "pids"))])
    assert len(found) == 1
    assert found[0].controllers == ("cpu", "cpuacct", "cpuset", "memory", "devices", "blkio")


@pytest.mark.parametrize("text, expected", [
    ("4G", 4 << 30), ("512MiB", 512 << 20), ("1048576", 1048576), ("16k", 16 << 10), ("unlimited", UNLIMITED),
])
def test_sizes(text, expected):
    assert parse_size(text, "x") == expected


def test_bad_size():
    with pytest.raises(ValueError, match="not a size"):
        parse_size("4 apples", "memory_hard_limit")


def _reader(files):
    return lambda controller, name: files.get(name)


def test_v1_tunables_write_only_what_differs():
    files = {"cpu.shares": "1024", "memory.limit_in_bytes": "9223372036854771712",
             "memory.soft_limit_in_bytes": "9223372036854771712", "blkio.bfq.weight": "100"}
    writes, errors = plan_tunables(1, Tunables(cpu_shares=1024, memory_hard_limit=(1 << 30) + 5,
                                               blkio_weight=200), _reader(files))
    assert errors == []
    assert [(w.file, w.value, w.expect) for w in writes] == [
        ("blkio.bfq.weight", "200", "200"),
        ("memory.limit_in_bytes", str((1 << 30) + 5), str(1 << 30))]


def test_v1_memsw_raised_before_the_hard_limit_grows():
    files = {"memory.limit_in_bytes": str(1 << 30), "memory.memsw.limit_in_bytes": str(1 << 30)}
    writes, errors = plan_tunables(1, Tunables(memory_hard_limit=2 << 30, memory_swap_hard_limit=3 << 30),
                                   _reader(files))
    assert [w.file for w in writes] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    files = {"memory.limit_in_bytes": str(2 << 30), "memory.memsw.limit_in_bytes": str(3 << 30)}
    writes, errors = plan_tunables(1, Tunables(memory_hard_limit=1 << 30, memory_swap_hard_limit=1 << 30),
                                   _reader(files))
    assert [w.file for w in writes] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v2_tunables_as_libvirt_maps_them():
    files = {"cpu.weight": "100", "memory.max": "max", "memory.high": "max", "memory.swap.max": "max",
             "io.weight": "default 100"}
    writes, errors = plan_tunables(2, Tunables(cpu_shares=500, memory_hard_limit=1 << 30,
                                               memory_soft_limit=512 << 20, memory_swap_hard_limit=2 << 30,
                                               blkio_weight=300), _reader(files))
    assert errors == []
    assert {(w.file, w.value) for w in writes} == {
        ("cpu.weight", "500"), ("io.weight", "default 300"), ("memory.max", str(1 << 30)),
        ("memory.high", str(512 << 20)), ("memory.swap.max", str(1 << 30))}


def test_missing_knob_is_an_error():
    writes, errors = plan_tunables(1, Tunables(blkio_weight=200), _reader({}))
    assert writes == [] and "blkio.bfq.weight" in errors[0]


def test_slice_unit_rendering():
    pname = parse_name("/machine/my-rt", SUBSYSTEMS)
    text = render_slice_unit(pname, frozenset({2, 3}), frozenset({0}),
                             Tunables(cpu_shares=200, memory_hard_limit=4 << 30, memory_soft_limit=UNLIMITED,
                                      memory_swap_hard_limit=5 << 30, blkio_weight=300))
    lines = text.splitlines()
    assert lines[0].startswith("# Managed by rtvirt.kvm.libvirt_partition")
    assert "Description=libvirt resource partition /machine/my-rt" in lines
    body = lines[lines.index("[Slice]") + 1:]
    assert body == ["AllowedCPUs=2-3", "AllowedMemoryNodes=0", "CPUWeight=200", "MemoryMax=%d" % (4 << 30),
                    "MemoryHigh=infinity", "MemorySwapMax=%d" % (1 << 30), "IOWeight=300"]


def test_slice_unit_swap_needs_hard_limit():
    with pytest.raises(ValueError, match="MemorySwapMax"):
        render_slice_unit(parse_name("/machine/x"), tunables=Tunables(memory_swap_hard_limit=1 << 30))


@pytest.mark.parametrize("dirname, guest", [
    ("qemu-3-rt1.libvirt-qemu", ("rt1", 3)),
    ("qemu-12-a-b-c.libvirt-qemu", ("a-b-c", 12)),
    ("machine-qemu\\x2d4\\x2drt\\x2d1.scope", ("rt-1", 4)),
    ("vcpu0", None),
    ("rt.partition", None),
])
def test_guest_of_cgroup(dirname, guest):
    assert guest_of_cgroup(dirname) == guest


def test_removal_order_deepest_first():
    assert removal_order(["", "a", "a/b", "c"]) == ["a/b", "a", "c", ""]
