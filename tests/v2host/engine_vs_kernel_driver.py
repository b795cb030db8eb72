"""Runs inside the v2 test host: operation sequences on the real cgroup v2 kernel and on CpusetModel side by side.

Called by tests/v2host/test_engine_vs_kernel_v2.py with the collection's module_utils copied next to it. Standard
library only (the test host has no hypothesis): the sequences come from the controller as JSON on stdin, and the
answers go back as JSON on stdout. Every sequence runs in its own throwaway cgroup below the root; the root's
cgroup.subtree_control is put back as it was.
"""
import errno
import json
import os
import subprocess
import sys

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import (
    ATTACH, MKDIR, RMDIR, WRITE, CpusetModel, KernelRuleError, Op)

MOUNT = "/sys/fs/cgroup"


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
    """(errno, partition invalid) as the model predicts them."""
    try:
        model.apply(op)
    except KernelRuleError as exc:
        # errno 0: the kernel takes the write and marks the partition invalid.
        return exc.errno, exc.errno == 0
    return 0, False


def cgroup_of(pid):
    with open("/proc/%d/cgroup" % pid) as handle:
        for line in handle:
            if line.startswith("0::"):
                return line.rstrip("\n")[3:].strip("/")
    return ""


def remove_tree(top):
    real = os.path.join(MOUNT, top)
    for dirpath, _dirs, _files in os.walk(real, topdown=False):
        os.rmdir(dirpath)


def run_sequence(index, top, steps, names, task):
    fs = CpusetFs(MOUNT, 2)
    online, mems = format_cpulist(fs.online_cpus()), format_cpulist(fs.memory_nodes())
    fs.mkdir(top)
    fs.write(top, "cpus", online)
    fs.write(top, "mems", mems)
    fs.write(top, "subtree_control", "+cpuset")
    for name in names:
        fs.mkdir(top + "/" + name)
    model = CpusetModel(CpusetFs(MOUNT, 2))
    answers = []
    try:
        for kind, path, knob, value in steps:
            full = top + "/" + path
            previous = cgroup_of(task) if kind == ATTACH else ""
            op = Op(kind, full, knob, str(task) if value == "TASK" else value, previous=previous)
            expected, expect_invalid = model_answer(model, op)
            actual = kernel_answer(fs, op)
            invalid = False
            if kind == WRITE and knob == "partition" and actual == 0:
                readback = fs.read(full, "cpuset.cpus.partition") or ""
                invalid = "invalid" in readback
            answers.append([kind + ":" + knob, errno.errorcode.get(actual, "ok") + (" invalid" if invalid else "")])
            if expected != actual or expect_invalid != invalid:
                return {"sequence": index, "op": op.describe(2), "answers": answers,
                        "model": errno.errorcode.get(expected, "ok") + (" invalid" if expect_invalid else ""),
                        "kernel": errno.errorcode.get(actual, "ok") + (" invalid" if invalid else ""),
                        "steps": steps}
            if kind == WRITE and knob in ("partition", "cpus", "cpus_exclusive") and actual == 0:
                # A partition's validity moves with its siblings' and parent's CPUs in ways the planner never
                # leans on (it refuses an invalid partition up front): start again from what the kernel says.
                model = CpusetModel(CpusetFs(MOUNT, 2))
        return {"sequence": index, "answers": answers}
    finally:
        with open(os.path.join(MOUNT, "cgroup.procs"), "w") as handle:
            handle.write(str(task))
        for name in sorted(names, key=lambda n: -n.count("/")):
            path = os.path.join(MOUNT, top, name, "cpuset.cpus.partition")
            if os.path.exists(path):
                try:
                    with open(path, "w") as handle:
                        handle.write("member")
                except OSError:
                    pass
        remove_tree(top)


def main():
    request = json.load(sys.stdin)
    root_control = open(os.path.join(MOUNT, "cgroup.subtree_control")).read().split()
    task = subprocess.Popen(["sleep", "3600"])
    results = []
    try:
        if "cpuset" not in root_control:
            with open(os.path.join(MOUNT, "cgroup.subtree_control"), "w") as handle:
                handle.write("+cpuset")
        for index, steps in enumerate(request["sequences"]):
            results.append(run_sequence(index, "%s-%d" % (request["top"], index), steps, request["names"], task.pid))
            if "op" in results[-1]:
                break
    finally:
        with open(os.path.join(MOUNT, "cgroup.procs"), "w") as handle:
            handle.write(str(task.pid))
        task.kill()
        task.wait()
        if "cpuset" not in root_control:
            with open(os.path.join(MOUNT, "cgroup.subtree_control"), "w") as handle:
                handle.write("-cpuset")
    json.dump({"kernel": os.uname().release, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
