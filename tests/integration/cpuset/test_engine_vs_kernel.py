"""The rules model and the executor against the real kernel, in-process.

The planner refuses what the model refuses, so the model must refuse exactly what the kernel
refuses: random operation sequences run on both, and every answer (accepted, or the errno) must agree.
"""
import errno
import os

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ApplyError, execute
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import (
    ATTACH,
    INHERITED_FLAGS_V1,
    KNOBS,
    MKDIR,
    RMDIR,
    WRITE,
    CpusetModel,
    KernelRuleError,
    Op,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import Request, plan
from tests.integration.cpuset.conftest import cgroup_of, read

pytestmark = pytest.mark.real

NAMES = ["a", "a/x", "a/y", "b", "b/z"]


def operations(online, mems):
    cpu_sets = st.frozensets(st.sampled_from(sorted(online)))
    mem_sets = st.frozensets(st.sampled_from(sorted(mems)))
    return st.one_of(
        st.builds(lambda p: (MKDIR, p, "", ""), st.sampled_from(NAMES)),
        st.builds(lambda p: (RMDIR, p, "", ""), st.sampled_from(NAMES)),
        st.builds(lambda p, c: (WRITE, p, "cpus", format_cpulist(c)), st.sampled_from(NAMES), cpu_sets),
        st.builds(lambda p, m: (WRITE, p, "mems", format_cpulist(m)), st.sampled_from(NAMES), mem_sets),
        st.builds(lambda p, f: (WRITE, p, "cpu_exclusive", f), st.sampled_from(NAMES), st.sampled_from(["0", "1"])),
        st.builds(lambda p: (ATTACH, p, "threads", "TASK"), st.sampled_from(NAMES)),
    )


def kernel_answer(fs, op):
    try:
        if op.kind == MKDIR:
            fs.mkdir(op.path)
        elif op.kind == RMDIR:
            fs.rmdir(op.path)
        else:
            fs.write(op.path, op.knob, op.value)
    except OSError as exc:
        return exc.errno
    return 0


def model_answer(model, op):
    try:
        model.apply(op)
    except KernelRuleError as exc:
        return exc.errno
    return 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_model_agrees_with_the_kernel(cpuset_root, sandbox, spawn, data):
    mountpoint, version = cpuset_root
    assert version == 1, "this differential test drives the v1 hierarchy of these machines"
    base = CpusetFs(mountpoint, 1)
    online, mems = base.online_cpus(), base.memory_nodes()
    top = sandbox + "-" + format(data.draw(st.integers(0, 10**9)), "x")
    os.mkdir(os.path.join(mountpoint, top))
    task = spawn()
    try:
        fs = CpusetFs(mountpoint, 1)
        fs.write(top, "cpus", format_cpulist(online))
        fs.write(top, "mems", format_cpulist(mems))
        model = CpusetModel(CpusetFs(mountpoint, 1))
        # Start from the five cgroups existing (empty, as mkdir leaves them), then do anything.
        steps = [(MKDIR, name, "", "") for name in NAMES]
        steps += data.draw(st.lists(operations(online, mems), min_size=1, max_size=16))
        for kind, path, knob, value in steps:
            op = Op(kind, top + "/" + path, knob, str(task) if value == "TASK" else value,
                    previous=cgroup_of(task).lstrip("/") if kind == ATTACH else "")
            expected = model_answer(model, op)
            event("%s -> %s" % (kind + ":" + knob, errno.errorcode.get(expected, "ok")))
            actual = kernel_answer(fs, op)
            assert expected == actual, "%s: model says %s, kernel says %s" % (
                op.describe(1), errno.errorcode.get(expected, expected), errno.errorcode.get(actual, actual))
    finally:
        with open(os.path.join(mountpoint, "tasks"), "w") as handle:
            handle.write(str(task))
        for dirpath, dummy_dirs, dummy_files in os.walk(os.path.join(mountpoint, top), topdown=False):
            os.rmdir(dirpath)


def test_failed_write_rolls_back_in_reverse(cpuset_root, sandbox, spawn):
    """A task that exits between planning and applying: the kernel answers ESRCH at the attach, and
    everything created and written before it is undone."""
    mountpoint = cpuset_root[0]
    fs = CpusetFs(mountpoint, 1)
    os.mkdir(os.path.join(mountpoint, sandbox))
    fs.write(sandbox, "cpus", "0")
    fs.write(sandbox, "mems", "0")
    pid = spawn()
    result = plan(CpusetFs(mountpoint, 1), [Request(sandbox, cpus=frozenset(range(len(fs.online_cpus())))),
                                            Request(sandbox + "/app/leaf", procs=(pid,))])
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    runner = CpusetFs(mountpoint, 1)
    with pytest.raises(ApplyError) as caught:
        execute(runner, result.ops, before=result.before)
    message = caught.value.message
    assert "ESRCH" in message and "rolled back" in message, message
    assert caught.value.rollback_failures == []
    assert not os.path.exists(os.path.join(mountpoint, sandbox, "app"))
    with open(os.path.join(mountpoint, sandbox, "cpuset.cpus")) as handle:
        assert handle.read().strip() == "0"


def test_exclusive_flags_need_the_parents_so_the_model_does_not_read_them(cpuset_root, sandbox):
    """cgroup v1 (is_cpuset_subset): a cpuset can be cpu_exclusive or mem_exclusive only if its
    parent is; the kernel answers EACCES.  The model relies on it to skip reading those two files
    under a parent without the flag."""
    mountpoint = cpuset_root[0]
    fs = CpusetFs(mountpoint, 1)
    child = sandbox + "/child"
    for path in (sandbox, child):
        os.mkdir(os.path.join(mountpoint, path))
        fs.write(path, "cpus", format_cpulist(fs.online_cpus()))
        fs.write(path, "mems", format_cpulist(fs.memory_nodes()))
    for key in INHERITED_FLAGS_V1:
        assert read(mountpoint, sandbox, KNOBS[1][key]) == "0"
        with pytest.raises(OSError) as caught:
            fs.write(child, key, "1")
        assert caught.value.errno == errno.EACCES, key
        assert read(mountpoint, child, KNOBS[1][key]) == "0"

    asked = {}

    class Recording(CpusetFs):
        def read_node(self, path, known_false=()):
            asked[path] = tuple(known_false)
            return super().read_node(path, known_false)

    model = CpusetModel(Recording(mountpoint, 1))
    assert model.node(child) == fs.read_node(child)
    assert asked[sandbox] == ()                        # below the root, which is always exclusive
    assert asked[child] == INHERITED_FLAGS_V1
    assert not model.node(sandbox + "/missing").exists
