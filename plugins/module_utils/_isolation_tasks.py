# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pass over ``/proc/*/task/*`` of the isolation facts, and what it finds on isolated CPUs.

A userspace thread whose affinity lies *entirely* within isolated CPUs was put there on purpose
(a pinned vCPU, an RT application started with taskset or a cpuset): it is listed under
``threads_on_isolated``, not reported as a violation.  A thread allowed on isolated *and*
housekeeping CPUs is a leak (the default affinity of everything nobody placed) and is a
``thread_on_isolated`` violation.

Kernel threads bound to one CPU (ksoftirqd/N, migration/N, cpuhp/N, kworker/N:*) are expected.
Kernel threads with ``PF_NO_SETAFFINITY`` that are not per-CPU (unbound kworkers and rescuers)
follow the workqueue cpumask and are covered by the ``workqueue_cpumask`` check.  Other kernel
threads allowed on isolated CPUs (kthreadd, rcu_*, kswapd, ...) can be moved by the operator and
are ``kthread_on_isolated`` violations.
"""

from __future__ import annotations

import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import (
    AFFINITY_KEY,
    AFFINITY_KEY_LEN,
    PF_KTHREAD,
    PF_NO_SETAFFINITY,
    parse_stat,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError, read_bytes

# A tid list in a violation is cut to this many; ``thread_count`` keeps the real number.
MAX_TIDS = 64


class _TaskScan(object):
    """One pass over ``/proc/*/task/*``: stat and status of every task, read once."""

    def __init__(self):
        self.count = 0
        self.leaks = {}        # pid -> [comm, tids, isolated cpus, affinity texts]
        self.placed = {}       # pid -> [comm, tids, affinity cpus]
        self.kthreads = []     # (pid, comm, affinity text, cpus)
        self.guest_tasks = {}  # qemu pid -> [(tid, comm, state, last_cpu, rt_priority, policy, affinity text, flags)]
        self.unreadable = 0


def scan_tasks(proc_root, isolated, guest_pids=(), affinity_of=None, affinity_is_status=False):
    """Walk every task once; sort those allowed on ``isolated`` CPUs and keep the QEMU tasks.

    ``affinity_of``: a function TID → set of CPUs (``os.sched_getaffinity``), only for the real
    ``/proc`` of this PID namespace and only when every isolated CPU is online (it returns the
    allowed CPUs that are active, ``status`` all of them).  Then a task that is not a guest's and
    whose affinity misses the isolated CPUs is counted and skipped after one system call, without
    its ``stat`` and ``status`` (the kernel formats ``status`` in full: at 10,000 tasks that read was
    most of the scan).  Every other task is read as before, so the facts are the same.
    ``affinity_is_status``: besides, no CPU is offline (possible == online), so the set equals
    ``Cpus_allowed_list`` and ``status`` is not read for the other tasks either (only ``stat``).
    """
    scan = _TaskScan()
    guest_pids = {str(pid) for pid in guest_pids}
    for pid in guest_pids:
        scan.guest_tasks[int(pid)] = []
    # affinity text -> (cpus, class, isolated part); class 0 none, 1 only isolated, 2 mixed
    cache = {}
    outside = {}  # affinity_of's sets -> True when they miss the isolated CPUs
    texts = {}    # affinity_of's sets -> Cpus_allowed_list text
    leaks, placed, kthreads, guest_tasks = scan.leaks, scan.placed, scan.kthreads, scan.guest_tasks
    prefix = proc_root.rstrip("/") + "/"
    count = 0
    try:
        entries = os.scandir(proc_root)
    except OSError as exc:
        raise IsolationError("cannot list %s: %s" % (proc_root, exc.strerror)) from None
    with entries:
        for entry in entries:
            pid = entry.name
            if not pid.isdigit():
                continue
            task_dir = prefix + pid + "/task/"
            try:
                tids = os.listdir(task_dir)
            except OSError:
                continue  # gone meanwhile
            is_guest = pid in guest_pids
            for tid in tids:
                allowed = None
                if affinity_of is not None and (affinity_is_status or not is_guest):
                    try:
                        allowed = frozenset(affinity_of(int(tid)))
                    except ProcessLookupError:
                        continue  # gone meanwhile
                    except OSError:
                        allowed = None
                    if allowed is not None and not is_guest:
                        miss = outside.get(allowed)
                        if miss is None:
                            miss = outside[allowed] = not allowed & isolated
                        if miss:
                            count += 1
                            continue
                base = task_dir + tid
                if allowed is not None and affinity_is_status:
                    try:
                        stat = read_bytes(base + "/stat", 1024)
                    except OSError:
                        continue
                    count += 1
                    affinity = texts.get(allowed)
                    if affinity is None:
                        affinity = texts[allowed] = format_cpulist(allowed).encode("ascii")
                else:
                    try:
                        stat = read_bytes(base + "/stat", 1024)
                        status = read_bytes(base + "/status")
                    except OSError:
                        continue
                    count += 1
                    start = status.find(AFFINITY_KEY)
                    if start < 0:
                        scan.unreadable += 1
                        continue
                    start += AFFINITY_KEY_LEN
                    affinity = status[start:status.find(b"\n", start)].strip()
                known = cache.get(affinity)
                if known is None:
                    cpus = parse_cpulist(affinity.decode("ascii"), what="Cpus_allowed_list")
                    inside = cpus & isolated
                    klass = 0 if not inside else (1 if inside == cpus else 2)
                    known = cache[affinity] = (cpus, klass, inside)
                right = stat.rfind(b")")
                fields = stat[right + 2:].split()
                state = fields[0]
                if state == b"Z" or state == b"X":
                    continue
                if is_guest:
                    guest_tasks[int(pid)].append((
                        int(tid), stat[stat.find(b"(") + 1:right].decode("utf-8", "replace"),
                        state.decode("ascii", "replace"), int(fields[36]), int(fields[37]), int(fields[38]),
                        affinity.decode("ascii"), int(fields[6])))
                klass = known[1]
                if not klass:
                    continue
                flags = int(fields[6])
                comm = stat[stat.find(b"(") + 1:right].decode("utf-8", "replace")
                if flags & PF_KTHREAD:
                    if len(known[0]) == 1 or flags & PF_NO_SETAFFINITY:
                        continue  # per-CPU, or follows the workqueue cpumask
                    kthreads.append((int(pid), comm, affinity.decode("ascii"), known[2]))
                    continue
                target = leaks if klass == 2 else placed
                record = target.get(pid)
                if record is None:
                    record = target[pid] = [comm if tid == pid else None, [], set(), set()]
                elif tid == pid:
                    record[0] = comm
                record[1].append(int(tid))
                record[2].update(known[2])
                record[3].update(known[0])
    scan.count = count
    # A process is named by its main thread (a QEMU process, not its "CPU 0/KVM").
    for records in (leaks, placed):
        for pid, record in records.items():
            if record[0] is None:
                try:
                    record[0] = parse_stat(read_bytes(prefix + pid + "/stat", 1024))[0]
                except (OSError, ValueError, IndexError):
                    record[0] = "?"
    return scan


def thread_violations(scan, violations):
    """Append the scan's leaks and movable kernel threads to ``violations``; return the threads placed on purpose
    (``threads_on_isolated``)."""
    threads_on_isolated = []
    for pid in sorted(scan.leaks, key=int):
        comm, tids, inside, allowed = scan.leaks[pid]
        tids.sort()
        violations.append({
            "kind": "thread_on_isolated",
            "offender": "pid %s (%s)" % (pid, comm),
            "message": "%d thread(s) of pid %s (%s) may run on isolated CPUs %s together with "
                       "housekeeping CPUs (allowed: %s)"
                       % (len(tids), pid, comm, format_cpulist(inside), format_cpulist(allowed)),
            "pid": int(pid),
            "comm": comm,
            "tids": tids[:MAX_TIDS],
            "thread_count": len(tids),
            "cpus": format_cpulist(inside),
            "affinity": format_cpulist(allowed),
        })
    for pid, comm, affinity, inside in sorted(scan.kthreads):
        violations.append({
            "kind": "kthread_on_isolated",
            "offender": "kthread %d (%s)" % (pid, comm),
            "message": "kernel thread %d (%s) is not bound to one CPU and may run on isolated CPUs %s "
                       "(allowed: %s); move it to the housekeeping CPUs" % (pid, comm, format_cpulist(inside), affinity),
            "pid": pid,
            "comm": comm,
            "cpus": format_cpulist(inside),
            "affinity": affinity,
        })
    for pid in sorted(scan.placed, key=int):
        comm, tids, inside, allowed = scan.placed[pid]
        tids.sort()
        threads_on_isolated.append({
            "pid": int(pid), "comm": comm, "tids": tids[:MAX_TIDS], "thread_count": len(tids),
            "cpus": format_cpulist(allowed),
        })
    return threads_on_isolated
