# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run-time noise sources TuneD's realtime-virtual-host profile tunes, planned and applied.

One planner (:func:`plan_tuning`) for the host_tuning module and for host_plan's ``tuning`` area: the role's
plan call and the module that writes agree because they run the same code.  Items (each switchable):

``workqueue``      unbound workqueue cpumask (and every workqueue's own ``cpumask``) on the housekeeping CPUs
``kthreads``       kernel threads that may move (not per-CPU, no ``PF_NO_SETAFFINITY``) off the realtime CPUs
``ksm``            KSM stopped (``run`` 1 becomes 2: stop and unmerge, as TuneD writes)
``kvm``            KVM module parameters, persisted in a modprobe.d file, written at run time where sysfs allows
``rt_priorities``  ksoftirqd/ktimers/rcuc/rcub at SCHED_FIFO as the profile sets them, PREEMPT_RT kernels only
``sysctl``         sysctls, persisted in a sysctl.d file and written now
``mce``            machine check polling of corrected errors off (``ignore_ce``), a per-CPU timer otherwise

Where TuneD is active (:func:`detect_tuned`), the items its active profiles set are left to it.
Roots are parameters so unit tests point them at fake trees.

``state="absent"`` plans the way back with the same code: what the item reads is compared with the kernel's
default instead of the tuned value.  Nothing is recorded before tuning, so only what host_tuning's own value
identifies is taken back (a kernel thread on exactly the housekeeping CPUs, a kernel thread at the priority the
profile gives it); where the kernel's default is not knowable here the plan leaves the setting and says so.
"""

from __future__ import annotations

import configparser
import glob
import os
import re

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import (
    AFFINITY_KEY,
    AFFINITY_KEY_LEN,
    PF_KTHREAD,
    PF_NO_SETAFFINITY,
    parse_stat,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_tasks import scan_tasks
from ansible_collections.rtvirt.kvm.plugins.module_utils._textfile import read_or_none

ITEMS = ("workqueue", "kthreads", "ksm", "kvm", "rt_priorities", "sysctl", "mce")

# TuneD's realtime-virtual-host [scheduler] groups: (comm prefix, SCHED_FIFO priority).
RT_GROUPS = (("ksoftirqd", 2), ("ktimers", 2), ("ktimersoftd", 3), ("rcuc", 4), ("rcub", 4))
SCHED_FIFO = 1

# What realtime(-virtual-host) and cpu-partitioning set; kernel.sched_rt_runtime_us is host_prep's sysctl area.
DEFAULT_SYSCTLS = {
    "kernel.timer_migration": "0",
    "vm.stat_interval": "10",
    "kernel.hung_task_timeout_secs": "600",
    "kernel.nmi_watchdog": "0",
    "kernel.numa_balancing": "0",
}
DEFAULT_KVM = {"kvm": {"kvmclock_periodic_sync": "N", "nx_huge_pages": "N"}, "kvm_intel": {"ple_gap": "0"}}

# The way back's targets, the kernel's own defaults where the kernel fixes them (a value here is what a fresh boot
# without host_prep's files reads).  kernel.hung_task_timeout_secs (CONFIG_DEFAULT_HUNG_TASK_TIMEOUT),
# kernel.nmi_watchdog (hardware and nmi_watchdog=) and kernel.numa_balancing (CONFIG_NUMA_BALANCING_DEFAULT_ENABLED
# and the NUMA topology) depend on the build or the machine: not listed, so left and reported.
KERNEL_SYSCTL_DEFAULTS = {"kernel.timer_migration": "1", "vm.stat_interval": "1"}
# kvm.nx_huge_pages defaults to "auto", which reads back Y or N by the CPU's iTLB multihit bug: not listed.
KERNEL_KVM_DEFAULTS = {"kvm": {"kvmclock_periodic_sync": "Y"}, "kvm_intel": {"ple_gap": "128"}}
SCHED_OTHER = 0

_TRUE = {"1", "y", "yes", "true", "on"}
_FALSE = {"0", "n", "no", "false", "off"}
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_SYSCTL = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
_VALUE = re.compile(r"^[A-Za-z0-9_.,:+-]+$")


class TuningError(ValueError):
    """A setting host_tuning refuses: the message names the setting, the value and the rule."""


def _writable(path):
    try:
        return bool(os.stat(path).st_mode & 0o222)
    except OSError:
        return False


def _same_param(current, wanted):
    """Module parameters read back Y/N for booleans, numbers as numbers: ``off`` and ``N`` are the same."""
    cur, want = current.strip().lower(), str(wanted).strip().lower()
    if cur in _TRUE | _FALSE and want in _TRUE | _FALSE:
        return (cur in _TRUE) == (want in _TRUE)
    return cur == want


class Change(object):
    """One thing a real run writes: ``kind`` write (a knob), file (a persisted file), remove (a persisted file the
    way back deletes), affinity or scheduler (a thread).  ``target`` is a path or a pid."""

    def __init__(self, item, kind, target, before, after, what):
        self.item, self.kind, self.target, self.before, self.after, self.what = item, kind, target, before, after, what

    def words(self):
        if self.kind == "file":
            return "%s: %s %s" % (self.item, self.what, "is missing" if self.before is None else "differs")
        if self.kind == "remove":
            return "%s: %s exists" % (self.item, self.what)
        return "%s: %s is %s, not %s" % (self.item, self.what, self.before, self.after)

    def item_dict(self):
        return {"item": self.item, "kind": self.kind, "target": str(self.target), "what": self.what,
                "before": self.before, "after": self.after}


class TuningPlan(object):
    def __init__(self):
        self.changes = []
        self.reboot = []        # reasons a setting waits for a reboot or a module reload
        self.notes = []         # what the plan leaves and why (warnings)
        self.left_to_tuned = []

    def reasons(self):
        return [change.words() for change in self.changes] + self.reboot


def validate(settings):
    """Bad input fails here, before anything is read or written."""
    for name, value in (settings.get("sysctl") or {}).items():
        if not _SYSCTL.match(str(name)) or ".." in str(name):
            raise TuningError("sysctl %r: not a sysctl name (dotted words such as kernel.timer_migration)" % (name,))
        if not _VALUE.match(str(value)):
            raise TuningError("sysctl %s: value %r is not a single word or number" % (name, value))
    for module, params in (settings.get("kvm") or {}).items():
        if not _NAME.match(str(module)):
            raise TuningError("kvm module %r: not a kernel module name" % (module,))
        if not isinstance(params, dict):
            raise TuningError("kvm module %s: its parameters must be a mapping of name to value, not %r"
                              % (module, params))
        for name, value in params.items():
            if not _NAME.match(str(name)):
                raise TuningError("kvm parameter %s.%r: not a parameter name" % (module, name))
            if not _VALUE.match(str(value)):
                raise TuningError("kvm parameter %s.%s: value %r is not a single word or number" % (module, name, value))
    for key in ("modprobe_file", "sysctl_file"):
        path = settings.get(key)
        if path is not None and not os.path.isabs(path):
            raise TuningError("%s %r: must be an absolute path" % (key, path))


def modprobe_content(kvm):
    lines = ["# rtvirt.kvm host_prep: KVM module parameters for realtime guests (TuneD realtime-virtual-host's)"]
    for module in sorted(kvm):
        options = " ".join("%s=%s" % (name, kvm[module][name]) for name in sorted(kvm[module]))
        if options:
            lines.append("options %s %s" % (module, options))
    return "\n".join(lines) + "\n"


def sysctl_content(sysctls):
    lines = ["# rtvirt.kvm host_prep: realtime host sysctls (TuneD realtime/cpu-partitioning's)"]
    lines.extend("%s = %s" % (name, sysctls[name]) for name in sorted(sysctls))
    return "\n".join(lines) + "\n"


def sysctl_path(proc_root, name):
    return os.path.join(proc_root, "sys", *name.split("."))


def builtin_module(sys_root, module):
    """A module compiled into the kernel has /sys/module/NAME without ``initstate``: modprobe.d never reaches it,
    only ``NAME.param=`` on the kernel command line does."""
    base = os.path.join(sys_root, "module", module)
    return os.path.isdir(base) and not os.path.exists(os.path.join(base, "initstate"))


def kernel_version(release):
    numbers = re.findall(r"\d+", release or "")[:2]
    return tuple(int(n) for n in numbers) if len(numbers) == 2 else (0, 0)


def cmdline_params(housekeeping, settings, sys_root="/sys", release=None):
    """Kernel parameters the tuning needs at boot, beside host_prep's isolation ones: ``workqueue.unbound_cpus``
    (kernels 6.6+; older ones take the unbound mask from nohz_full's housekeeping set) and, for a KVM compiled in,
    its parameters (modprobe.d never reaches a built-in module)."""
    release = release if release is not None else os.uname().release
    params = {}
    if settings.get("workqueue") and kernel_version(release) >= (6, 6):
        params["workqueue.unbound_cpus"] = housekeeping
    for module, values in sorted((settings.get("kvm") or {}).items()):
        if builtin_module(sys_root, module):
            for name, value in sorted(values.items()):
                params["%s.%s" % (module, name)] = str(value)
    return params


# --------------------------------------------------------------------------------------------------------- TuneD

def _profile_conf(name, roots):
    for root in roots:
        path = os.path.join(root, name, "tuned.conf")
        if os.path.isfile(path):
            return path
    return None


def _profile_items(names, roots, seen=None):
    """{item or "sysctl:NAME"} the profiles ``names`` and their includes set."""
    seen = set() if seen is None else seen
    found = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        path = _profile_conf(name, roots)
        if path is None:
            continue
        parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
        parser.optionxform = str
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            keys = list(parser[section])
            plugin = parser[section].get("type", section)
            if section == "main":
                includes = [p.strip() for p in parser[section].get("include", "").replace(";", ",").split(",")]
                found |= _profile_items([p for p in includes if p], roots, seen)
            elif plugin == "sysctl":
                found |= {"sysctl:" + key for key in keys if key != "type"}
            elif plugin == "sysfs":
                for key in keys:
                    if "workqueue" in key:
                        found.add("workqueue")
                    elif "/ksm/" in key:
                        found.add("ksm")
                    elif "machinecheck" in key:
                        found.add("mce")
            elif plugin == "scheduler":
                if "isolated_cores" in keys:
                    found.add("kthreads")
                if any(key.startswith("group.") for key in keys):
                    found.add("rt_priorities")
            elif plugin == "modules" and any(key.startswith("kvm") for key in keys):
                found.add("kvm")
            elif plugin == "script":
                script = parser[section].get("script", "").replace("${i:PROFILE_DIR}", os.path.dirname(path))
                if "setup_kvm_mod_low_latency" in (read_or_none(script) or ""):
                    found.add("kvm")
    return found


def detect_tuned(etc_root="/etc/tuned", lib_root="/usr/lib/tuned", commands=()):
    """TuneD applies a profile where ``active_profile`` names one and its daemon runs (``commands``: the comm
    names of running processes), or ``tuned-main.conf`` says ``daemon = 0`` (tuned-adm then applies it once).
    Returns None, or {"profiles": [...], "items": [...], "sysctls": [...], "how": words}."""
    profiles = (read_or_none(os.path.join(etc_root, "active_profile")) or "").split()
    if not profiles:
        return None
    main = read_or_none(os.path.join(etc_root, "tuned-main.conf")) or ""
    no_daemon = re.search(r"^\s*daemon\s*=\s*(0|false|no)\s*$", main, re.M | re.I) is not None
    if "tuned" in commands:
        how = "its daemon is running"
    elif no_daemon:
        how = "it runs without a daemon (tuned-main.conf daemon = 0)"
    else:
        return None
    found = _profile_items(profiles, (etc_root, lib_root))
    return {"profiles": profiles, "how": how,
            "items": sorted(item for item in found if not item.startswith("sysctl:")),
            "sysctls": sorted(item[len("sysctl:"):] for item in found if item.startswith("sysctl:"))}


# --------------------------------------------------------------------------------------------------------- plan

def _plan_mask(plan, item, path, wanted, what):
    text = read_or_none(path)
    if text is None:
        return
    try:
        current = parse_cpumask(text, what=path)
    except CpuListError:
        current = None
    if current != wanted:
        before = format_cpulist(current) if current is not None else text.strip()
        plan.changes.append(Change(item, "write", path, before, format_cpulist(wanted), what))


def _plan_file(plan, item, path, content):
    current = read_or_none(path)
    if current != content:
        plan.changes.append(Change(item, "file", path, None if current is None else "different", content, path))


def _plan_remove(plan, item, path):
    if path and os.path.lexists(path):
        plan.changes.append(Change(item, "remove", path, "present", None, path))


def _movable_kthreads(proc_root):
    """(pid, comm, affinity set) of every kernel thread whose affinity may be set (no ``PF_NO_SETAFFINITY``: the
    kernel gives that flag to every per-CPU thread it binds and to the workers that follow the workqueue cpumask)."""
    found = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return found
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, pid, "stat"), "rb") as handle:
                stat = handle.read(1024)
            fields = stat[stat.rfind(b")") + 2:].split()
            flags = int(fields[6])
            if not flags & PF_KTHREAD or flags & PF_NO_SETAFFINITY or fields[0] in (b"Z", b"X"):
                continue
            with open(os.path.join(proc_root, pid, "task", pid, "status"), "rb") as handle:
                status = handle.read()
            start = status.find(AFFINITY_KEY)
            if start < 0:
                continue
            start += AFFINITY_KEY_LEN
            cpus = parse_cpulist(status[start:status.find(b"\n", start)].strip().decode("ascii"))
            comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode("utf-8", "replace")
        except (OSError, ValueError, IndexError, CpuListError):
            continue
        found.append((int(pid), comm, cpus))
    return found


def rt_defaults(sys_root="/sys"):
    """{comm prefix: (policy, priority)} the kernel starts RT_GROUPS' threads with, where it is known: ksoftirqd
    runs SCHED_OTHER; ktimers at SCHED_FIFO 1 (sched_set_fifo_low); rcuc and rcub at rcutree.kthread_prio when the
    kernel shows it (0 means SCHED_OTHER).  ktimersoftd (older RT patch sets) is not known here."""
    found = {"ksoftirqd": (SCHED_OTHER, 0), "ktimers": (SCHED_FIFO, 1)}
    text = (read_or_none(os.path.join(sys_root, "module", "rcutree", "parameters", "kthread_prio")) or "").strip()
    if text.isdigit():
        prio = int(text)
        found["rcuc"] = found["rcub"] = (SCHED_FIFO, prio) if prio > 0 else (SCHED_OTHER, 0)
    return found


def _kthreads(proc_root):
    """(pid, comm, policy, priority) of every kernel thread."""
    found = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return found
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, pid, "stat"), "rb") as handle:
                comm, state, flags, _cpu, priority, policy = parse_stat(handle.read(1024))
        except (OSError, ValueError, IndexError):
            continue
        if flags & PF_KTHREAD and state not in ("Z", "X"):
            found.append((int(pid), comm, policy, priority))
    return found


def plan_tuning(realtime, housekeeping, settings, proc_root="/proc", sys_root="/sys", tuned=None, state="present",
                online=None):
    """What a real run changes, as a :class:`TuningPlan`.  ``realtime``/``housekeeping``: sets of CPUs;
    ``settings``: {item: bool, "kvm": {module: {param: value}}, "sysctl": {name: value}, "modprobe_file",
    "sysctl_file"}; ``tuned``: :func:`detect_tuned`'s answer, whose items are left alone.  ``state="absent"``:
    the way back (:func:`_plan_absent`), to the ``online`` CPUs."""
    validate(settings)
    if state == "absent":
        return _plan_absent(housekeeping, settings, proc_root, sys_root, tuned, online)
    plan = TuningPlan()
    owned = set((tuned or {}).get("items") or ())
    owned_sysctls = set((tuned or {}).get("sysctls") or ())
    if tuned:
        left = sorted(owned & set(ITEMS)) + ["sysctl " + name for name in sorted(owned_sysctls & set(settings.get("sysctl") or {}))]
        plan.left_to_tuned = left

    def enabled(item):
        return settings.get(item) and item not in owned

    if enabled("workqueue"):
        base = os.path.join(sys_root, "devices", "virtual", "workqueue")
        _plan_mask(plan, "workqueue", os.path.join(base, "cpumask"), housekeeping, "the unbound workqueue cpumask")
        for path in sorted(glob.glob(os.path.join(base, "*", "cpumask"))):
            _plan_mask(plan, "workqueue", path, housekeeping,
                       "workqueue %s's cpumask" % os.path.basename(os.path.dirname(path)))
    if enabled("kthreads"):
        scan = scan_tasks(proc_root, frozenset(realtime))
        for pid, comm, affinity, _inside in sorted(scan.kthreads):
            plan.changes.append(Change("kthreads", "affinity", pid, affinity, format_cpulist(housekeeping),
                                       "kernel thread %d (%s)'s affinity" % (pid, comm)))
    if enabled("ksm"):
        path = os.path.join(sys_root, "kernel", "mm", "ksm", "run")
        current = (read_or_none(path) or "").strip()
        if current == "1":
            plan.changes.append(Change("ksm", "write", path, "1", "2", "KSM (%s)" % path))
    if enabled("kvm"):
        kvm = settings.get("kvm") or {}
        if settings.get("modprobe_file"):
            _plan_file(plan, "kvm", settings["modprobe_file"], modprobe_content(kvm))
        for module in sorted(kvm):
            for name in sorted(kvm[module]):
                wanted = str(kvm[module][name])
                path = os.path.join(sys_root, "module", module, "parameters", name)
                if not os.path.isdir(os.path.join(sys_root, "module", module)):
                    continue  # not loaded: the modprobe.d file applies when it is
                current = read_or_none(path)
                if current is None:
                    plan.notes.append("kvm parameter %s.%s: this kernel has no such parameter (%s is missing)"
                                      % (module, name, path))
                elif _same_param(current, wanted):
                    continue
                elif _writable(path):
                    plan.changes.append(Change("kvm", "write", path, current.strip(), wanted,
                                               "kvm parameter %s.%s" % (module, name)))
                else:
                    how = ("the kernel command line (%s is built in) and a reboot" % module
                           if builtin_module(sys_root, module) else "reloading %s (or a reboot)" % module)
                    plan.reboot.append("kvm parameter %s.%s is %s, not %s, and read-only at run time: it takes %s"
                                       % (module, name, current.strip(), wanted, how))
    if enabled("rt_priorities") and (read_or_none(os.path.join(sys_root, "kernel", "realtime")) or "").strip() == "1":
        for pid, comm, policy, priority in sorted(_kthreads(proc_root)):
            for prefix, wanted in RT_GROUPS:
                if comm == prefix or comm.startswith(prefix + "/"):
                    if (policy, priority) != (SCHED_FIFO, wanted):
                        plan.changes.append(Change("rt_priorities", "scheduler", pid, "%d:%d" % (policy, priority),
                                                   "%d:%d" % (SCHED_FIFO, wanted),
                                                   "kernel thread %d (%s)'s policy:priority" % (pid, comm)))
                    break
    if settings.get("sysctl") and "sysctl" not in owned:
        sysctls = {name: str(value) for name, value in settings["sysctl"].items() if name not in owned_sysctls}
        present = {name: value for name, value in sysctls.items() if os.path.exists(sysctl_path(proc_root, name))}
        for name in sorted(set(sysctls) - set(present)):
            plan.notes.append("sysctl %s: this kernel has no such setting; left out of %s"
                              % (name, settings.get("sysctl_file")))
        if settings.get("sysctl_file") and present:
            _plan_file(plan, "sysctl", settings["sysctl_file"], sysctl_content(present))
        for name in sorted(present):
            path = sysctl_path(proc_root, name)
            current = (read_or_none(path) or "").strip()
            if current.split() != present[name].split():
                plan.changes.append(Change("sysctl", "write", path, current, present[name], "sysctl %s" % name))
    if enabled("mce"):
        for path in sorted(glob.glob(os.path.join(sys_root, "devices", "system", "machinecheck", "machinecheck*",
                                                  "ignore_ce"))):
            current = (read_or_none(path) or "").strip()
            if current != "1":
                plan.changes.append(Change("mce", "write", path, current, "1", "corrected-error polling (%s)" % path))
    return plan


def _plan_absent(housekeeping, settings, proc_root, sys_root, tuned, online):
    plan = TuningPlan()
    owned = set((tuned or {}).get("items") or ())
    owned_sysctls = set((tuned or {}).get("sysctls") or ())
    if tuned:
        plan.left_to_tuned = sorted(owned & set(ITEMS)) + ["sysctl " + name for name in
                                                           sorted(owned_sysctls & set(settings.get("sysctl") or {}))]

    def enabled(item):
        return settings.get(item) and item not in owned

    if enabled("workqueue"):
        # The kernel starts the unbound mask (and every workqueue's own) on every CPU, less what isolcpus=domain or
        # nohz_full= keep off at boot: every online CPU is what a write can give back.
        base = os.path.join(sys_root, "devices", "virtual", "workqueue")
        _plan_mask(plan, "workqueue", os.path.join(base, "cpumask"), online, "the unbound workqueue cpumask")
        for path in sorted(glob.glob(os.path.join(base, "*", "cpumask"))):
            _plan_mask(plan, "workqueue", path, online,
                       "workqueue %s's cpumask" % os.path.basename(os.path.dirname(path)))
    if enabled("kthreads"):
        # Nothing was recorded: a movable kernel thread on exactly the housekeeping CPUs is one host_tuning moved (or
        # one kthreadd started while it was there); any other affinity is someone else's and stays.
        for pid, comm, cpus in sorted(_movable_kthreads(proc_root)):
            if cpus == housekeeping and cpus != online:
                plan.changes.append(Change("kthreads", "affinity", pid, format_cpulist(cpus), format_cpulist(online),
                                           "kernel thread %d (%s)'s affinity" % (pid, comm)))
    if enabled("ksm"):
        path = os.path.join(sys_root, "kernel", "mm", "ksm", "run")
        current = (read_or_none(path) or "").strip()
        if current == "2":
            plan.notes.append("ksm: %s stays 2 (stopped): whether KSM ran before host_prep was not recorded; the "
                              "kernel starts with 0 (stopped) too, and a service (ksm, ksmtuned) starts it again "
                              "where it is wanted" % path)
    if enabled("kvm"):
        kvm = settings.get("kvm") or {}
        _plan_remove(plan, "kvm", settings.get("modprobe_file"))
        for module in sorted(kvm):
            if not os.path.isdir(os.path.join(sys_root, "module", module)):
                continue  # not loaded: without the modprobe.d file it loads with its defaults
            for name in sorted(kvm[module]):
                path = os.path.join(sys_root, "module", module, "parameters", name)
                current = read_or_none(path)
                if current is None:
                    continue
                default = KERNEL_KVM_DEFAULTS.get(module, {}).get(name)
                if default is None:
                    plan.notes.append("kvm parameter %s.%s: left at %s: its kernel default is not known here (it "
                                      "depends on the CPU or the build); reloading %s or a reboot brings it back"
                                      % (module, name, current.strip(), module))
                elif _same_param(current, default):
                    continue
                elif _writable(path):
                    plan.changes.append(Change("kvm", "write", path, current.strip(), default,
                                               "kvm parameter %s.%s" % (module, name)))
                else:
                    how = ("removing %s.%s from the kernel command line and a reboot" % (module, name)
                           if builtin_module(sys_root, module) else "reloading %s (or a reboot)" % module)
                    plan.reboot.append("kvm parameter %s.%s is %s, not the kernel's default %s, and read-only at run "
                                       "time: it takes %s" % (module, name, current.strip(), default, how))
    if enabled("rt_priorities") and (read_or_none(os.path.join(sys_root, "kernel", "realtime")) or "").strip() == "1":
        defaults = rt_defaults(sys_root)
        for pid, comm, policy, priority in sorted(_kthreads(proc_root)):
            for prefix, tuned_priority in RT_GROUPS:
                if comm == prefix or comm.startswith(prefix + "/"):
                    # Only a thread at host_tuning's own value: any other priority was set by someone else.
                    if (policy, priority) != (SCHED_FIFO, tuned_priority):
                        break
                    if prefix not in defaults:
                        plan.notes.append("rt_priorities: kernel thread %d (%s) stays SCHED_FIFO %d: its kernel "
                                          "default is not known here; a reboot brings it back" % (pid, comm, priority))
                    elif defaults[prefix] != (policy, priority):
                        plan.changes.append(Change("rt_priorities", "scheduler", pid, "%d:%d" % (policy, priority),
                                                   "%d:%d" % defaults[prefix],
                                                   "kernel thread %d (%s)'s policy:priority" % (pid, comm)))
                    break
    if settings.get("sysctl") and "sysctl" not in owned:
        _plan_remove(plan, "sysctl", settings.get("sysctl_file"))
        for name in sorted(name for name in settings["sysctl"] if name not in owned_sysctls):
            path = sysctl_path(proc_root, name)
            if not os.path.exists(path):
                continue
            current = (read_or_none(path) or "").strip()
            default = KERNEL_SYSCTL_DEFAULTS.get(name)
            if default is None:
                plan.notes.append("sysctl %s: left at %s: its kernel default depends on the build or the machine "
                                  "(not known here); a reboot without %s brings it back"
                                  % (name, current, settings.get("sysctl_file")))
            elif current.split() != default.split():
                plan.changes.append(Change("sysctl", "write", path, current, default, "sysctl %s" % name))
    if enabled("mce"):
        # ignore_ce is 0 after boot unless mce=ignore_ce is on the kernel command line (which host_prep never sets).
        for path in sorted(glob.glob(os.path.join(sys_root, "devices", "system", "machinecheck", "machinecheck*",
                                                  "ignore_ce"))):
            current = (read_or_none(path) or "").strip()
            if current != "0":
                plan.changes.append(Change("mce", "write", path, current, "0", "corrected-error polling (%s)" % path))
    return plan


# -------------------------------------------------------------------------------------------------------- apply

class Gate(object):
    """The one way host_tuning changes the host; tests replace its parts."""

    def __init__(self, setaffinity=os.sched_setaffinity, setscheduler=None):
        self.setaffinity = setaffinity
        self.setscheduler = setscheduler or (lambda pid, policy, priority:
                                             os.sched_setscheduler(pid, policy, os.sched_param(priority)))

    def write(self, path, text):
        with open(path, "w") as handle:
            handle.write(text)

    def remove(self, path):
        os.unlink(path)

    def write_file(self, path, text):
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        tmp = path + ".rtvirt-tmp"
        with open(tmp, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)


def apply(plan, gate):
    """Carry out ``plan``.  Returns (done, refused): kernel threads the kernel will not move, or that ended
    meanwhile, are refused (listed, not fatal); any other failure raises OSError naming the path and value."""
    done, refused = [], []
    for change in plan.changes:
        try:
            if change.kind == "write":
                value = change.after
                if change.item == "workqueue":
                    value = format_cpumask(parse_cpulist(change.after))
                gate.write(change.target, value + "\n")
            elif change.kind == "file":
                gate.write_file(change.target, change.after)
            elif change.kind == "remove":
                gate.remove(change.target)
            elif change.kind == "affinity":
                gate.setaffinity(change.target, parse_cpulist(change.after))
            elif change.kind == "scheduler":
                policy, priority = (int(part) for part in change.after.split(":"))
                gate.setscheduler(change.target, policy, priority)
        except ProcessLookupError:
            refused.append(dict(change.item_dict(), error="the thread ended"))
            continue
        except OSError as exc:
            if change.kind in ("affinity", "scheduler"):
                refused.append(dict(change.item_dict(), error=exc.strerror or str(exc)))
                continue
            if change.kind == "remove":
                raise OSError(exc.errno, "%s: cannot remove %s: %s" % (change.item, change.target,
                                                                       exc.strerror or exc)) from None
            raise OSError(exc.errno, "%s: cannot write %s to %s: %s"
                          % (change.item, change.after if change.kind != "file" else "its content", change.target,
                             exc.strerror or exc)) from None
        done.append(change.item_dict())
    return done, refused


# ------------------------------------------------------------------------------------------------ module glue

def argument_spec():
    """The tuning options, shared by host_tuning and host_plan's ``tuning`` (one definition, one meaning)."""
    return dict(
        workqueue=dict(type="bool", default=True),
        kthreads=dict(type="bool", default=True),
        ksm=dict(type="bool", default=True),
        kvm=dict(type="bool", default=True),
        kvm_params=dict(type="dict", default=DEFAULT_KVM),
        modprobe_file=dict(type="path", default="/etc/modprobe.d/rtvirt-kvm.conf"),
        rt_priorities=dict(type="bool", default=True),
        sysctl=dict(type="dict", default=DEFAULT_SYSCTLS),
        sysctl_file=dict(type="path", default="/etc/sysctl.d/91-rtvirt-kvm-tuning.conf"),
        mce=dict(type="bool", default=True),
        respect_tuned=dict(type="bool", default=True),
    )


def settings_from(params):
    settings = {item: params[item] for item in ("workqueue", "kthreads", "ksm", "rt_priorities", "mce")}
    settings["kvm"] = dict(params["kvm_params"] or {}) if params["kvm"] else {}
    settings["sysctl"] = dict(params["sysctl"] or {})
    settings["modprobe_file"] = params["modprobe_file"]
    settings["sysctl_file"] = params["sysctl_file"]
    return settings


def tuned_note(tuned):
    """The warning for a host where TuneD is active, or None."""
    if not tuned:
        return None
    left = tuned["items"] + ["sysctl " + name for name in tuned["sysctls"]]
    what = ", ".join(left) if left else "nothing (its profiles set none of host_prep's tuning items)"
    return "TuneD is active (profile %s; %s): host_prep leaves to it %s" % (" ".join(tuned["profiles"]), tuned["how"], what)
