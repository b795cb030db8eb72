"""The QEMU command line of the v2 test host: a CPU topology changes only -smp and adds NUMA nodes."""
import pytest

from tests.support.v2host.boot import CpuTopology, V2Host, parse_topology


def _argv(tmp_path, **kwargs):
    host = V2Host("6.1", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", **kwargs)
    argv, _env = host.qemu_command(port=2222)
    return argv


def test_default_boot_is_unchanged(tmp_path):
    argv = _argv(tmp_path)
    assert argv[argv.index("-smp") + 1] == "4" and argv[argv.index("-m") + 1] == "2048"
    assert "-numa" not in argv and "-object" not in argv and argv[argv.index("-cpu") + 1] == "max"


def test_two_node_smt_host(tmp_path):
    argv = _argv(tmp_path, topology=CpuTopology(sockets=2, cores=2, threads=2, nodes=2))
    start = argv.index("-smp")
    assert argv[start:start + 10] == [
        "-smp", "8,sockets=2,cores=2,threads=2",
        "-object", "memory-backend-ram,id=mem0,size=1024M", "-numa", "node,nodeid=0,cpus=0-3,memdev=mem0",
        "-object", "memory-backend-ram,id=mem1,size=1024M", "-numa", "node,nodeid=1,cpus=4-7,memdev=mem1",
    ]
    assert argv.count("-smp") == 1 and argv[argv.index("-m") + 1] == "2048"
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"


def test_one_node_topology_has_no_numa_options(tmp_path):
    argv = _argv(tmp_path, topology=CpuTopology(1, 4, 2))
    assert argv[argv.index("-smp") + 1] == "8,sockets=1,cores=4,threads=2" and "-numa" not in argv
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"
    assert _argv(tmp_path, topology=CpuTopology(1, 4, 1))[argv.index("-cpu") + 1] == "max"


@pytest.mark.parametrize("args, message", [
    ((3, 2, 2, 2), "2 NUMA nodes cannot share 3 sockets evenly"),
    ((2, 0, 2, 1), "cores must be a positive integer, not 0"),
])
def test_bad_topology(args, message):
    with pytest.raises(ValueError, match=message):
        CpuTopology(*args)


def test_memory_must_split_over_the_nodes(tmp_path):
    with pytest.raises(ValueError, match="2047 MiB cannot be split evenly over 2 NUMA nodes"):
        _argv(tmp_path, topology=CpuTopology(2, 1, 1, 2), memory_mib=2047)


def test_cli_topology():
    assert parse_topology("2x2x2:2") == CpuTopology(2, 2, 2, 2)
    assert parse_topology("1x4x1") == CpuTopology(1, 4, 1, 1)
