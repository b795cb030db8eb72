# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU isolation facts: what the kernel was asked, what it does, and who leaks onto isolated CPUs.

Everything is read from files (``/proc``, ``/sys``, libvirt's ``/run/libvirt/qemu``), never through
a libvirt connection, so the facts work on a host whose libvirtd is down.  All roots are
parameters so the unit tests run against recorded trees.

:func:`gather` reads the host step by step and returns the facts dict.  The parts live in modules of
their own: the pure parsers (``_isolation_parse``), the pass over the tasks (``_isolation_tasks``),
IRQs (``_isolation_irqs``), guests and their pinning (``_isolation_guests``), cgroups and partitions
(``_isolation_cgroups``) and what they share (``_isolation_read``); the topology comes from
``_topology``, the one reader of it.

Policy decisions an RT engineer should know about (documented in the module too):

* "Isolated CPUs" is the union of ``isolcpus=`` (only with the ``domain`` flag or no flag),
  ``nohz_full=``, ``/sys/devices/system/cpu/isolated``, ``/sys/devices/system/cpu/nohz_full``,
  the v2 root's ``cpuset.cpus.isolated``, valid v2 ``isolated`` partitions and the caller's
  ``isolated_cpus``.  Housekeeping CPUs are the online CPUs that are not isolated.
* Threads: which ones are placed on isolated CPUs on purpose and which leak is decided in
  ``_isolation_tasks`` (its docstring says how).
"""

from __future__ import annotations

import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_cgroups import (
    Cgroups,
    cgroup_violations,
    read_layout,
    partition_cgroup_paths,
    partition_state,
    v2_partitions,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_guests import (
    guest_facts,
    idle_workers,
    read_domain_definitions,
    read_guests,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_irqs import read_irqs
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import (
    CMDLINE_LISTS,
    isolcpus_isolates,
    parse_cmdline,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import (
    Context,
    IsolationError,
    format_cpus,
    read_text,
    rebase,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_tasks import scan_tasks, thread_violations
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    parse_proc_cgroups,
    parse_qemu_conf_controllers,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import (
    TopologyError,
    read_node_lists,
    read_sibling_lists,
    read_smt_active,
    read_topology,
)


def gather(proc_root="/proc", sys_root="/sys", run_root="/run/libvirt/qemu", layout=None,
           isolated_cpus=None, realtime_partitions=(), gather_threads=True, libvirt_config_dir="/etc/libvirt",
           systemd_run_dir="/run/systemd/system"):
    """Return the ``cpu_isolation`` facts dict (see the module's RETURN for every key).

    ``layout`` is a :class:`CgroupLayout`; None discovers it from ``<proc_root>/self/mountinfo``.
    Cgroup mountpoints under ``/sys`` are read below ``sys_root``.  ``isolated_cpus`` (a list
    string or an iterable of ints) is added to what the kernel reports.  ``libvirt_config_dir`` holds
    ``qemu.conf`` and the persistent domain definitions (``qemu/<name>.xml``); ``systemd_run_dir``
    tells a systemd host.
    """
    cpu_dir = os.path.join(sys_root, "devices", "system", "cpu")
    ctx = Context(_possible_limit(cpu_dir))
    requested = _requested_cpus(isolated_cpus)
    partition_paths = []
    for partition in realtime_partitions or ():
        partition_paths.extend(partition_cgroup_paths(partition))

    cpus = _cpu_states(ctx, cpu_dir)
    online = cpus["online"]
    numa_nodes = _numa_nodes(ctx, sys_root)
    smt_groups = _smt_groups(ctx, sys_root, cpus["present"] or online)

    cmdline, asked = _read_cmdline(ctx, proc_root)
    kernel = _kernel_isolation(ctx, cpu_dir)
    if layout is None:
        layout = _read_layout(ctx, proc_root, sys_root)
    cpuset_isolated, partitions = _v2_isolation(ctx, layout, sys_root)
    sources = _isolated_sources(cmdline, asked, kernel, cpuset_isolated, partitions, requested)
    isolated = _union(sources, ctx.limit)
    housekeeping = online - isolated
    if isolated and not housekeeping:
        ctx.warnings.append("every online CPU is isolated: nothing is left for housekeeping")

    violations = []
    _check_cmdline(violations, cmdline, asked, kernel)
    workqueue = _workqueue_cpumask(ctx, sys_root, isolated, violations)
    irqs, default_affinity = read_irqs(ctx, proc_root, sys_root, isolated, violations)

    guests = read_guests(ctx, run_root, proc_root)
    cgroups = Cgroups(ctx, layout, sys_root, proc_root)
    scan = _scan_threads(ctx, proc_root, sys_root, isolated, cpus, guests) if gather_threads else None
    given = {}  # cgroup relative path -> isolated CPUs the domain XML gives it
    idle = idle_workers(sys_root)
    guests_facts = [guest_facts(g, scan, cgroups, isolated, violations, given, idle) for g in guests]
    threads_on_isolated = thread_violations(scan, violations) if scan is not None else []
    cgroup_violations(ctx, cgroups, isolated, partition_paths, given, violations)

    # What the realtime_vm role plans with.
    topology = _topology(ctx, sys_root)
    domains = read_domain_definitions(os.path.join(libvirt_config_dir, "qemu"))
    if domains is None:
        ctx.warnings.append("cannot read the domain definitions in %s/qemu" % libvirt_config_dir)
    rt_partitions = _realtime_partitions(realtime_partitions, layout, proc_root, sys_root, libvirt_config_dir,
                                         systemd_run_dir)

    return {
        "cgroup": layout.as_dict() if layout is not None else None,
        "cpus": {name: format_cpus(value) for name, value in cpus.items()},
        "numa_nodes": numa_nodes,
        "smt_siblings": smt_groups,
        "smt_active": read_smt_active(sys_root),
        "cmdline": {
            "isolcpus": format_cpus(asked["isolcpus"]),
            "isolcpus_flags": cmdline["isolcpus_flags"],
            "nohz_full": format_cpus(asked["nohz_full"]),
            "rcu_nocbs": format_cpus(asked["rcu_nocbs"]) if cmdline["rcu_nocbs"] else cmdline["rcu_nocbs"],
            "irqaffinity": format_cpus(asked["irqaffinity"]),
        },
        "kernel": {
            "isolated": format_cpus(kernel["isolated"]),
            "nohz_full": format_cpus(kernel["nohz_full"]),
            "cpuset_cpus_isolated": format_cpus(cpuset_isolated),
            "partitions": [{k: v for k, v in p.items() if not k.startswith("_")} for p in partitions],
            # PREEMPT_RT kernels (mainline 6.12+, Debian's -rt flavour) have /sys/kernel/realtime = 1.
            "preempt_rt": read_text(os.path.join(sys_root, "kernel", "realtime")) == "1",
        },
        "isolated_cpus": format_cpulist(isolated),
        "isolated_sources": {name: format_cpus(value) for name, value in sources.items() if value},
        "housekeeping_cpus": format_cpulist(housekeeping),
        "sched_rt_runtime_us": _sched_rt_runtime(proc_root),
        "workqueue_cpumask": format_cpus(workqueue),
        "irq_default_affinity": format_cpus(default_affinity),
        "irqs": irqs,
        "guests": guests_facts,
        "threads_scanned": scan.count if scan is not None else None,
        "threads_on_isolated": threads_on_isolated,
        "violations": violations,
        "topology": topology,
        "domains": domains,
        "realtime_partitions": rt_partitions,
        "warnings": ctx.warnings,
    }


def _possible_limit(cpu_dir):
    """One past the highest possible CPU (what ``N`` in a kernel list stands for), None when unknown."""
    possible = read_text(os.path.join(cpu_dir, "possible"))
    try:
        return max(parse_cpulist(possible)) + 1 if possible else None
    except (CpuListError, ValueError):
        return None


def _requested_cpus(isolated_cpus):
    """The caller's ``isolated_cpus``, a list string or an iterable of CPU numbers, as a frozenset."""
    if isolated_cpus is None or isolated_cpus == "":
        return frozenset()
    if isinstance(isolated_cpus, str):
        try:
            return parse_cpulist(isolated_cpus, what="isolated_cpus")
        except CpuListError as exc:
            raise IsolationError(str(exc)) from None
    try:
        return frozenset(int(c) for c in isolated_cpus)
    except (TypeError, ValueError):
        raise IsolationError("isolated_cpus must be a CPU list such as '2-5' or a list of CPU numbers, "
                             "not %r" % (isolated_cpus,)) from None


def _cpu_states(ctx, cpu_dir):
    """The online, offline, present and possible CPUs; without online CPUs nothing can be judged."""
    cpus = {}
    for name in ("online", "offline", "present", "possible"):
        cpus[name] = ctx.cpus(read_text(os.path.join(cpu_dir, name)), "/sys/devices/system/cpu/" + name)
    if not cpus["online"]:
        raise IsolationError("cannot read the online CPUs from %s/online" % cpu_dir)
    if ctx.limit is None:
        ctx.limit = max(cpus["online"]) + 1
    return cpus


def _numa_nodes(ctx, sys_root):
    nodes = []
    for node, text in read_node_lists(sys_root).items():
        node_cpus = ctx.cpus(text, "node%d cpulist" % node)
        nodes.append({"node": node, "cpus": format_cpus(node_cpus or frozenset())})
    return sorted(nodes, key=lambda n: n["node"])


def _smt_groups(ctx, sys_root, cpus):
    """The distinct sibling groups as the kernel lists them; a bad list is a warning, not a failed gather."""
    siblings = set()
    for cpu, text in read_sibling_lists(sys_root, cpus).items():
        group = ctx.cpus(text, "cpu%d thread_siblings_list" % cpu)
        if group:
            siblings.add(frozenset(group))
    return [format_cpulist(g) for g in sorted(siblings, key=min)]


def _read_cmdline(ctx, proc_root):
    """What ``/proc/cmdline`` asks: the parsed parameters and, as CPU sets, the lists it gives."""
    cmdline = parse_cmdline(read_text(os.path.join(proc_root, "cmdline")) or "")
    for flag in cmdline["isolcpus_unknown_flags"]:
        ctx.warnings.append("isolcpus= has the unknown flag %r, which the kernel ignores" % flag)
    asked = {"isolcpus": ctx.cpus(cmdline["isolcpus"], "isolcpus=")}
    for name in CMDLINE_LISTS:
        asked[name] = ctx.cpus(cmdline[name], name + "=") if cmdline[name] else None
    return cmdline, asked


def _kernel_isolation(ctx, cpu_dir):
    """What the kernel reports it isolates; ``nohz_full_text`` None means no such file (no CONFIG_NO_HZ_FULL)."""
    nohz_text = read_text(os.path.join(cpu_dir, "nohz_full"))
    if nohz_text == "(null)":
        nohz_text = ""  # CONFIG_NO_HZ_FULL without nohz_full= prints "(null)"
    return {
        "isolated": ctx.cpus(read_text(os.path.join(cpu_dir, "isolated")), "/sys/devices/system/cpu/isolated"),
        "nohz_full_text": nohz_text,
        "nohz_full": ctx.cpus(nohz_text, "/sys/devices/system/cpu/nohz_full"),
    }


def _read_layout(ctx, proc_root, sys_root):
    try:
        return read_layout(proc_root, sys_root)
    except CgroupDiscoveryError as exc:
        ctx.warnings.append("cgroup layout unknown: %s" % exc)
        return None


def _v2_isolation(ctx, layout, sys_root):
    """The v2 root's ``cpuset.cpus.isolated`` and every v2 partition; nothing without a v2 cpuset controller."""
    unified = layout.unified if layout is not None else None
    if unified is None or "cpuset" not in unified.controllers:
        return None, []
    unified_dir = rebase(sys_root, unified.mountpoint)
    cpuset_isolated = ctx.cpus(read_text(os.path.join(unified_dir, "cpuset.cpus.isolated")), "cpuset.cpus.isolated")
    return cpuset_isolated, v2_partitions(ctx, unified_dir)


def _isolated_sources(cmdline, asked, kernel, cpuset_isolated, partitions, requested):
    """Every source of isolated CPUs, by the name the facts report it under (see the module docstring)."""
    partition_isolated = frozenset()
    for partition in partitions:
        if partition["mode"] == "isolated" and partition["valid"]:
            partition_isolated |= partition["_cpus"]
    isolcpus = asked["isolcpus"]
    return {
        "isolcpus": isolcpus if isolcpus is not None and isolcpus_isolates(cmdline["isolcpus_flags"]) else None,
        "nohz_full": asked["nohz_full"],
        "kernel_isolated": kernel["isolated"],
        "kernel_nohz_full": kernel["nohz_full"],
        "cpuset_cpus_isolated": cpuset_isolated,
        "isolated_partitions": partition_isolated or None,
        "option": requested or None,
    }


def _union(sources, limit):
    """The isolated CPUs: every source together, cut to the possible CPUs."""
    isolated = frozenset()
    for value in sources.values():
        if value:
            isolated |= value
    return isolated & frozenset(range(limit)) if limit else isolated


def _check_cmdline(violations, cmdline, asked, kernel):
    """What the command line asks and the kernel does not do (old boot, bad list, missing config)."""
    kernel_isolated, kernel_nohz = kernel["isolated"], kernel["nohz_full"]
    if asked["isolcpus"] is not None and isolcpus_isolates(cmdline["isolcpus_flags"]) \
            and kernel_isolated is not None and asked["isolcpus"] != kernel_isolated:
        violations.append({
            "kind": "cmdline_mismatch",
            "offender": "isolcpus=",
            "message": "the command line asks isolcpus=%s but /sys/devices/system/cpu/isolated says %r "
                       "(reboot pending, or CPUs the kernel refused)"
                       % (format_cpulist(asked["isolcpus"]), format_cpulist(kernel_isolated)),
            "requested": format_cpulist(asked["isolcpus"]),
            "reported": format_cpulist(kernel_isolated),
        })
    if asked["nohz_full"]:
        if kernel["nohz_full_text"] is None:
            violations.append({
                "kind": "cmdline_mismatch",
                "offender": "nohz_full=",
                "message": "the command line asks nohz_full=%s but the kernel has no "
                           "/sys/devices/system/cpu/nohz_full (built without CONFIG_NO_HZ_FULL?)"
                           % format_cpulist(asked["nohz_full"]),
                "requested": format_cpulist(asked["nohz_full"]),
                "reported": None,
            })
        elif kernel_nohz is not None and kernel_nohz != asked["nohz_full"]:
            violations.append({
                "kind": "cmdline_mismatch",
                "offender": "nohz_full=",
                "message": "the command line asks nohz_full=%s but the kernel reports %r"
                           % (format_cpulist(asked["nohz_full"]), format_cpulist(kernel_nohz)),
                "requested": format_cpulist(asked["nohz_full"]),
                "reported": format_cpulist(kernel_nohz),
            })


def _sched_rt_runtime(proc_root):
    text = read_text(os.path.join(proc_root, "sys", "kernel", "sched_rt_runtime_us"))
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _workqueue_cpumask(ctx, sys_root, isolated, violations):
    """The CPUs unbound workqueues may run on; a ``workqueue_cpumask`` violation where they include isolated ones."""
    text = read_text(os.path.join(sys_root, "devices", "virtual", "workqueue", "cpumask"))
    workqueue = ctx.cpumask(text, "workqueue cpumask")
    if workqueue is not None and workqueue & isolated:
        violations.append({
            "kind": "workqueue_cpumask",
            "offender": "/sys/devices/virtual/workqueue/cpumask",
            "message": "unbound workqueues may run on isolated CPUs %s (cpumask %s); write the "
                       "housekeeping CPUs' mask there" % (format_cpulist(workqueue & isolated), text),
            "cpus": format_cpulist(workqueue & isolated),
        })
    return workqueue


def _scan_threads(ctx, proc_root, sys_root, isolated, cpus, guests):
    # sched_getaffinity answers for the TIDs of this PID namespace: only with the real /proc (and /sys, which
    # told the online CPUs); the allowed CPUs it returns are the active ones, so every isolated CPU must be online.
    fast = (os.path.realpath(proc_root) == "/proc" and os.path.realpath(sys_root) == "/sys"
            and hasattr(os, "sched_getaffinity") and isolated <= cpus["online"])
    scan = scan_tasks(proc_root, isolated, [g["pid"] for g in guests],
                      affinity_of=os.sched_getaffinity if fast else None,
                      affinity_is_status=fast and cpus["possible"] == cpus["online"])
    if scan.unreadable:
        ctx.warnings.append("%d task(s) had no Cpus_allowed_list in their status" % scan.unreadable)
    return scan


def _topology(ctx, sys_root):
    try:
        return read_topology(sys_root).as_dict()
    except TopologyError as exc:
        ctx.warnings.append("CPU topology unknown: %s" % exc)
        return None


def _realtime_partitions(names, layout, proc_root, sys_root, libvirt_config_dir, systemd_run_dir):
    """How each realtime partition stands (see :func:`partition_state`); nothing is read without partitions."""
    if not names:
        return []
    subsystems = parse_proc_cgroups(read_text(os.path.join(proc_root, "cgroups")) or "")
    qemu_conf = read_text(os.path.join(libvirt_config_dir, "qemu.conf"))
    controllers = parse_qemu_conf_controllers(qemu_conf) if qemu_conf else None
    systemd = os.path.isdir(systemd_run_dir)
    return [partition_state(name, layout, sys_root, subsystems, controllers, systemd) for name in sorted(set(names))]
