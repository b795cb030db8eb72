# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Applying a cpuset plan: the executor, its rollback, and the host-wide lock.

The planner has already simulated every operation, so a failure here means the kernel knows
something the model did not (a task that appeared, a CPU that went offline, a partition the
kernel marks invalid).  The executor then puts back what it had changed, newest first, and reports
both the failure and the rollback.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import time

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import (
    ATTACH,
    KNOBS,
    MKDIR,
    RMDIR,
    WRITE,
)

LOCK_PATH = "/run/lock/rtvirt-kvm-cpuset.lock"

# What each errno means for a cpuset write, in the words an operator needs.
ERRNO_RULES = {
    _errno.ENOSPC: "the cgroup has no CPUs or no memory nodes (empty cpuset.cpus or cpuset.mems): a task cannot "
                   "be attached to it, and a cgroup with tasks cannot be emptied",
    _errno.EACCES: "on cgroup v1 a child may only hold CPUs and nodes its parent has, and may only be exclusive "
                   "if its parent is",
    _errno.EBUSY: "a child still holds the CPUs or nodes being removed, a child is still exclusive or a partition, "
                  "or the cgroup still has tasks or children",
    _errno.EINVAL: "the value names offline CPUs or nodes without memory, is malformed, or overlaps an exclusive "
                   "sibling or partition",
    _errno.ERANGE: "a number is beyond the kernel's CPU or node mask",
    _errno.ENOENT: "the cgroup or knob does not exist (on cgroup v2: +cpuset is missing in the parent's "
                   "cgroup.subtree_control)",
    _errno.ESRCH: "the task no longer exists",
    _errno.EOPNOTSUPP: "the cgroup type does not allow this (cgroup v2 threaded/domain rules)",
}

# The other controllers' knobs libvirt_partition writes: what the kernel's refusal of one means, by file and errno,
# in an operator's words (the one table for them: CgroupFs.errno_rule reads it).
KNOB_RULES = {
    ("memory.limit_in_bytes", _errno.EBUSY): (
        "the partition's tasks use more memory than the new limit and the kernel could not reclaim enough "
        "(no swap, or the memory is locked or anonymous); stop or shrink the guests inside first, or give a "
        "higher limit"),
    ("memory.limit_in_bytes", _errno.EINVAL): (
        "on cgroup v1 memory.limit_in_bytes may not exceed memory.memsw.limit_in_bytes (memory + swap); raise "
        "memory_swap_hard_limit with it"),
    ("memory.memsw.limit_in_bytes", _errno.EINVAL): (
        "on cgroup v1 memory.memsw.limit_in_bytes (memory + swap) may not be below memory.limit_in_bytes"),
    ("memory.memsw.limit_in_bytes", _errno.EBUSY): (
        "the partition's tasks use more memory + swap than the new limit and the kernel could not reclaim enough"),
    ("memory.soft_limit_in_bytes", _errno.EINVAL): "the kernel refuses soft limits on this cgroup",
    ("memory.max", _errno.EINVAL): "the value is not a size in bytes or 'max'",
    ("cpu.shares", _errno.EINVAL): "cpu.shares is a weight from 2 to 262144",
    ("cpu.weight", _errno.ERANGE): "cpu.weight is a weight from 1 to 10000",
    ("blkio.bfq.weight", _errno.ERANGE): "blkio.bfq.weight is a weight from 1 to 1000",
    ("cpu.rt_runtime_us", _errno.EINVAL): "the RT time of a cgroup may not exceed its parent's, nor the sum of its "
                                          "children's exceed its own",
}


class ApplyError(Exception):
    """A kernel write failed; ``rolled_back`` and ``rollback_failures`` say what was restored."""

    def __init__(self, message, writes, rolled_back, rollback_failures):
        super().__init__(message)
        self.message = message
        self.writes = writes
        self.rolled_back = rolled_back
        self.rollback_failures = rollback_failures

    def result(self):
        """fail_json's arguments: the writes made and what the rollback did.  ``changed`` only when the
        rollback left something behind."""
        return dict(msg=self.message, changed=bool(self.rollback_failures),
                    writes=[{"file": f, "value": v} for f, v in self.writes],
                    rolled_back=self.rolled_back, rollback_failures=self.rollback_failures)


class LockTimeout(Exception):
    pass


def lock_holder(path):
    """Who holds the lock at ``path``, from what its holder wrote into it: "pid N (owner)", or None when the file
    names no live process (a holder that writes nothing, such as the qemu hook, or one that has not written yet)."""
    try:
        with open(path) as handle:
            text = handle.read(4096).strip()
    except OSError:
        return None
    pid, _sep, owner = text.partition(" ")
    if not pid.isdigit() or not os.path.exists("/proc/%s" % pid):
        return None
    return "pid %s (%s)" % (pid, owner) if owner else "pid %s" % pid


class HostLock:
    """An exclusive flock on ``path`` so two runs on one host never interleave what it guards.

    The kernel drops a flock when the last descriptor of the open file goes, so a holder that dies, even by
    SIGKILL, leaves no stale lock: the file stays, the lock does not.  While it holds the lock, the holder's PID and
    ``owner`` (what it is doing) are in the file, so that a run that waits in vain can name it; the file is
    emptied again before the lock is released.
    """

    def __init__(self, path=LOCK_PATH, timeout=60.0, owner=None):
        self.path = path
        self.timeout = timeout
        self.owner = owner
        self._fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    self._fd = None
                    holder = lock_holder(self.path)
                    raise LockTimeout("another rtvirt.kvm run%s has held %s for %.0f s; wait for it to finish and "
                                      "run again (a holder that died has released it: the kernel drops the lock with "
                                      "its process)" % (" (%s)" % holder if holder else "", self.path,
                                                        self.timeout)) from None
                time.sleep(0.05)
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, ("%d %s\n" % (os.getpid(), self.owner or "")).encode("utf-8", "replace"), 0)
        except OSError:
            pass  # the record only lets a waiting run name the holder; the lock holds without it
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # as in __enter__: the record is a courtesy, the unlock below is what counts
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
        return False


def describe_failure(fs, op, exc):
    err = exc.errno or 0
    name = _errno.errorcode.get(err, str(err))
    rule = fs.errno_rule(op, err)
    return "%s failed: %s (%s)%s" % (fs.describe(op), exc.strerror or str(exc), name, ": " + rule if rule else "")


def _do(fs, op):
    if op.kind == MKDIR:
        fs.mkdir(op.path)
    elif op.kind == RMDIR:
        fs.rmdir(op.path)
    elif op.kind == WRITE:
        fs.write(op.path, op.knob, op.value)
        if op.knob == "partition" and op.value != "member":
            _check_partition(fs, op)
    elif op.kind == ATTACH:
        fs.write(op.path, op.knob, op.value)


class PartitionInvalid(OSError):
    pass


def _check_partition(fs, op):
    """The kernel accepts an impossible partition and reports it only when read back."""
    state = fs.read(op.path, KNOBS[2]["partition"]) or ""
    if "invalid" in state:
        raise PartitionInvalid(_errno.EINVAL, "the kernel reports '%s'" % state)


def _undo(fs, op, created_values):
    if op.kind == MKDIR:
        fs.rmdir(op.path)
    elif op.kind == RMDIR:
        fs.mkdir(op.path)
        for knob, value in created_values.get(op.path, ()):
            fs.write(op.path, knob, value)
    elif op.kind == WRITE and op.previous is not None:
        # previous=None: a write nothing needs to undo (enabling a controller in cgroup.subtree_control).
        fs.write(op.path, op.knob, op.previous)
    elif op.kind == ATTACH and op.previous is not None:
        fs.write(op.previous, op.knob, op.value)


class Transaction:
    """Operations on one or more hierarchies (CgroupFs/CpusetFs views sharing one WriteGate), applied in
    order and, when one fails, undone together newest first: a run that writes several hierarchies leaves
    none of them half done."""

    def __init__(self, gate):
        self.gate = gate
        self._done = []         # (fs, op, values that restore a removed cgroup)

    def apply(self, fs, ops, before=None):
        """Apply ``ops`` through ``fs``; on failure undo everything this transaction did and raise
        :class:`ApplyError`.  ``before`` (path → Node) lets the undo of an ``rmdir`` restore the removed
        cgroup's sets."""
        created = _created_values(before or {})
        for op in ops:
            try:
                _do(fs, op)
            except OSError as exc:
                if isinstance(exc, PartitionInvalid):
                    self._done.append((fs, op, created))
                self.fail(describe_failure(fs, op, exc))
            self._done.append((fs, op, created))

    def rollback(self):
        """Undo what was applied, newest first; return (what was undone, what could not be)."""
        restored, failures = [], []
        while self._done:
            fs, op, created = self._done.pop()
            try:
                _undo(fs, op, created)
                restored.append(fs.describe(op))
            except OSError as exc:
                failures.append("could not undo %s: %s" % (fs.describe(op), exc.strerror or exc))
        return restored, failures

    def fail(self, failure):
        """Roll back and raise :class:`ApplyError` for ``failure`` (what went wrong, in words)."""
        restored, failures = self.rollback()
        message = failure
        if restored:
            message += "; rolled back %d earlier change(s)" % len(restored)
        if failures:
            message += "; ROLLBACK INCOMPLETE: %s" % "; ".join(failures)
        raise ApplyError(message, list(self.gate.writes), restored, failures) from None


def _created_values(before):
    return {path: [("cpus", node.knob_text("cpus")), ("mems", node.knob_text("mems"))]
            for path, node in before.items() if node.exists}


def execute(fs, ops, before=None):
    """Apply ``ops`` in order through ``fs``; on failure roll back and raise :class:`ApplyError`."""
    Transaction(fs.gate).apply(fs, ops, before)
    return fs.writes
