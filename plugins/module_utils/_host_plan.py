# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_prep's plan call: per area of the role (one task file each), what its tasks would change, in words.

An area's tasks run when its list is non-empty.  Where a collection module does the work, the list is that
module's own plan (``_irq_plan.plan_irqs``, ``_partition_host.converge_partition`` in check mode,
``_bootloader.detect`` with ``_grub.plan_edit`` or ``_bootloader.plan_bls``), so an area is never called
converged that its task would change.  Files the role writes with ansible.builtin.copy are planned by
:func:`plan_file`; what only builtin modules do (packages, users, lineinfile) keeps a presence check, erring towards "pending": the tasks then decide.

Roots are parameters so unit tests can point them at fake trees.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import stat
from xml.etree import ElementTree

from ansible_collections.rtvirt.kvm.plugins.module_utils._textfile import read_or_none
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import ApplyError, LockTimeout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import PlanError
from ansible_collections.rtvirt.kvm.plugins.module_utils._bootloader import (
    BootloaderError,
    NoBootloader,
    detect,
    os_family,
    plan_bls_host,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._grub import CmdlineParseError, missing_from_running, plan_edit
from ansible_collections.rtvirt.kvm.plugins.module_utils._irq_plan import plan_irqs
from ansible_collections.rtvirt.kvm.plugins.module_utils import _kvm as kvm
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    PartitionError, TunableError, parse_qemu_conf_controllers)
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_host import planned_steps
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import PARTITION_TUNABLES

# The regexp roles/host_prep/tasks/irqs.yml gives lineinfile: the last matching line is the one it edits.  A
# commented line (the package's template) is not matched: ours goes after it, so the way back leaves the file as
# it was.
_IRQBALANCE_LINE = re.compile(r"^\s*IRQBALANCE_BANNED_CPULIST=")
AREAS = ("cmdline", "libvirt", "hook", "partitions", "irqs", "sysctl", "tuning")


def _mode(path):
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def plan_file(path, content, mode):
    """What ansible.builtin.copy with this content and mode would change on ``path``, in words ([]: nothing)."""
    current = read_or_none(path)
    if current is None:
        return ["%s is missing" % path]
    if current != content:
        return ["%s differs from what the role writes" % path]
    if _mode(path) != mode:
        return ["%s has mode %04o, not %04o" % (path, _mode(path), mode)]
    return []


def _dir_check(path, mode):
    """[reason] when ``path`` is not a directory with ``mode`` (what ansible.builtin.file would change), else []."""
    if not os.path.isdir(path):
        return ["directory %s is missing" % path]
    if _mode(path) != mode:
        return ["%s has mode %04o, not %04o" % (path, _mode(path), mode)]
    return []


def cmdline_params(realtime, housekeeping, isolcpus_flags):
    """The kernel parameters host_prep sets (one definition: the cmdline tasks take them from here)."""
    return {
        "isolcpus": (isolcpus_flags + "," if isolcpus_flags else "") + realtime,
        "nohz_full": realtime,
        "rcu_nocbs": realtime,
        "irqaffinity": housekeeping,
    }


def check_cmdline(path, params, proc_cmdline="/proc/cmdline", variable="GRUB_CMDLINE_LINUX", root="/", absent=()):
    """Returns (reasons, reboot_required): kernel_cmdline's own detection and plan (GRUB's defaults file, or every
    BLS entry through grubby) for ``params`` to set and ``absent`` names to remove."""
    try:
        found = detect(root, path)
    except NoBootloader:
        return [], False            # no boot loader: the task only says so
    except BootloaderError as exc:
        return [str(exc)], False    # the task fails with it
    if found.kind == "bls":
        try:
            plan = plan_bls_host(root, params, absent)
        except BootloaderError as exc:
            return ["the BLS entries cannot be changed safely (%s)" % exc], False
        pending = missing_from_running(read_or_none(proc_cmdline) or "", params, absent)
        reasons = ["BLS entries %s (%s)" % (_cmdline_difference(params, absent, plural=True), " ".join(plan.argv))] \
            if plan.changed else []
        if pending:
            reasons.append(_running_difference(params, pending))
        return reasons, bool(pending)
    if found.kind != "grub":
        return [], False            # recognised, not managed: the task warns and changes nothing
    text = read_or_none(path if root == "/" else os.path.join(root, path.lstrip("/")))
    if text is None:
        return [], False
    try:
        changed, _new, pending = plan_edit(text, variable, params, absent, read_or_none(proc_cmdline) or "")
    except CmdlineParseError as exc:
        return ["%s cannot be edited safely (%s)" % (path, exc)], False
    reasons = []
    if changed:
        reasons.append("%s of %s %s" % (variable, path, _cmdline_difference(params, absent)))
    if pending:
        reasons.append(_running_difference(params, pending))
    return reasons, bool(pending)


def _cmdline_difference(params, absent, plural=False):
    if params:
        return "%s %s" % ("lack" if plural else "lacks", ", ".join(sorted(params)))
    return "%s %s" % ("still have" if plural else "still has", ", ".join(sorted(absent)))


def _running_difference(params, pending):
    return "the running kernel %s %s (reboot required)" % ("lacks" if params else "still has", ", ".join(pending))


# The package and service names the role uses, per OS family (roles/host_prep/vars/<family>.yml), and what each
# is where neither the family's table nor the role's variables name it: host_plan's behaviour before it knew
# families (a direct call checks no package, libvirtd's unit, Debian's irqbalance file).
OS_NAME_DEFAULTS = {
    "libvirt_packages": [],
    "libvirt_service_packages": [],
    "libvirt_units": ["libvirtd.service"],
    "libvirt_reload_unit": "libvirtd.service",
    "irqbalance_file": "/etc/default/irqbalance",
    "irqbalance_service": "irqbalance",
}


class OsNamesError(ValueError):
    """host_plan's os_names names something it does not know."""


def os_release_family(release):
    """(family, major version) from os-release, in the names of Ansible's os_family and
    distribution_major_version facts (family None where the OS is neither Debian's nor the RHEL family)."""
    return os_family(release), (release.get("VERSION_ID") or "").split(".")[0] or None


def resolve_os_names(table, family, major=None, overrides=None):
    """The names for this host: ``table[family]`` with ``table["<family>_<major>"]`` over it (RHEL 8 is
    monolithic libvirtd, 9 modular), ``table["Debian"]`` for a family the table lacks (what the role used on
    every host before), then ``overrides`` that are not None (the role's variables). Returns the names and
    the table keys used."""
    if family in table:
        used = [family]
    else:
        used = ["Debian"] if "Debian" in table else []
    if family in table and major and "%s_%s" % (family, major) in table:
        used.append("%s_%s" % (family, major))
    names = dict(OS_NAME_DEFAULTS)
    for key in used:
        unknown = sorted(set(table[key]) - set(OS_NAME_DEFAULTS))
        if unknown:
            raise OsNamesError("os_names[%r] names %s, which host_plan does not know (it knows %s)"
                               % (key, ", ".join(unknown), ", ".join(sorted(OS_NAME_DEFAULTS))))
        names.update(table[key])
    names.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return names, used


def installed_packages(status_path="/var/lib/dpkg/status"):
    """Names dpkg lists as installed, or None without dpkg."""
    text = read_or_none(status_path)
    if text is None:
        return None
    names = set()
    for stanza in text.split("\n\n"):
        name = installed = None
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Status: "):
                installed = line.split()[-1] == "installed"
        if name and installed:
            names.add(name)
    return names


def running_commands(proc_root="/proc"):
    """The command names (comm) of every process, as pgrep -x matches them."""
    names = set()
    for entry in os.listdir(proc_root):
        if entry.isdigit():
            comm = read_or_none(os.path.join(proc_root, entry, "comm"))
            if comm:
                names.add(comm.strip())
    return names


def check_kvm(manage_device, device=kvm.DEVICE):
    """What the libvirt tasks' KVM part would change: group kvm, libvirt-qemu in it, and (``manage_device``: no
    udev here) the device as root:kvm 0660."""
    try:
        group = grp.getgrnam(kvm.GROUP)
    except KeyError:
        return ["group %s does not exist" % kvm.GROUP]
    reasons = []
    if "libvirt-qemu" not in group.gr_mem:
        reasons.append("user libvirt-qemu is not in group %s" % kvm.GROUP)
    if manage_device:
        try:
            info = os.stat(device)
        except OSError:
            return reasons
        if (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (0, group.gr_gid, kvm.MODE):
            reasons.append("%s is not root:%s %04o" % (device, kvm.GROUP, kvm.MODE))
    return reasons


def check_libvirt(packages, installed, systemd_units, starter=None, proc_root="/proc", log_dir="/var/log/libvirt",
                  manage_kvm_device=False):
    """``installed``: the names of ``packages`` installed (installed_packages() from dpkg, or rpm's answer; None:
    neither, the role installs nothing); ``systemd_units``: {unit: {"active": ..., "enabled": ...}} from systemctl
    for the OS family's libvirt units (libvirtd.service, or virtqemud's sockets), or None without systemd;
    ``starter``: {"path", "content"} of the daemon starter on hosts without systemd."""
    reasons = []
    if installed is not None:
        missing = [p for p in packages if p not in installed]
        if missing:
            reasons.append("package(s) not installed: %s" % ", ".join(missing))
    try:
        group = grp.getgrnam("libvirt-qemu")
    except KeyError:
        reasons.append("group libvirt-qemu does not exist")
        group = None
    try:
        user = pwd.getpwnam("libvirt-qemu")
    except KeyError:
        reasons.append("user libvirt-qemu does not exist")
    else:
        if group is not None and user.pw_gid != group.gr_gid:
            reasons.append("user libvirt-qemu's primary group is not libvirt-qemu")
        if user.pw_shell != "/usr/sbin/nologin":
            reasons.append("user libvirt-qemu's shell is %s" % user.pw_shell)
    reasons.extend(_dir_check(log_dir, 0o755))
    reasons.extend(check_kvm(manage_kvm_device))
    if systemd_units is not None:
        for unit, states in systemd_units.items():
            name = unit[:-len(".service")] if unit.endswith(".service") else unit
            if states.get("active") != "active":
                reasons.append("%s is %s" % (name, states.get("active")))
            if states.get("enabled") != "enabled":
                reasons.append("%s is %s at boot" % (name, states.get("enabled")))
    else:
        if starter:
            reasons.extend(plan_file(starter["path"], starter["content"], 0o755))
        running = running_commands(proc_root)
        reasons.extend("%s is not running" % d for d in ("virtlogd", "libvirtd") if d not in running)
    return reasons


# The line every version of host_prep's hook carries (roles/host_prep/templates/qemu-hook.py.j2): how a hook of
# ours at the old path is told from the operator's.
HOOK_MARKER = "# libvirt qemu hook from rtvirt.kvm.host_prep"
_MARKER_LINES = 10


def legacy_hook(path):
    """What is at the single-script hook path libvirt runs before qemu.d: "absent", "ours" (a hook of an earlier
    host_prep, to be removed once the qemu.d one is in place) or "foreign" (the operator's, another tool's, or a
    symlink someone made: never replaced, edited or removed)."""
    if os.path.islink(path):
        return "foreign"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace").splitlines()[:_MARKER_LINES]
    except FileNotFoundError:
        return "absent"
    except OSError:
        return "foreign"
    return "ours" if any(line.startswith(HOOK_MARKER) for line in head) else "foreign"


def check_hook(path, content, layout_path, layout, legacy_path=None):
    """What the hook tasks would change: the hooks directory and qemu.d, the script in qemu.d, the layout file, and
    a hook of ours still at ``legacy_path`` (pending until removed).  A foreign hook there is not pending: it is
    left as it is."""
    reasons = []
    for directory in dict.fromkeys((os.path.dirname(layout_path), os.path.dirname(path))):
        reasons.extend(_dir_check(directory, 0o755))
    reasons.extend(plan_file(path, content, 0o755))
    text = read_or_none(layout_path)
    try:
        current = json.loads(text) if text is not None else None
    except ValueError:
        current = "unparsable"
    if current != layout:
        reasons.append("%s %s" % (layout_path, "is missing" if text is None else "does not describe this layout"))
    elif _mode(layout_path) != 0o644:
        reasons.append("%s has mode %04o, not 0644" % (layout_path, _mode(layout_path)))
    if legacy_path and legacy_hook(legacy_path) == "ours":
        reasons.append("%s is host_prep's hook of an earlier version: it moves to %s" % (legacy_path, path))
    return reasons


def hook_kept_note(legacy_path, legacy, path):
    """The role's words about a hook at the old path that is not ours, or None."""
    if legacy != "foreign":
        return None
    return ("found %s, which is not host_prep's: kept as it is (libvirt runs it before %s)"
            % (legacy_path, os.path.dirname(path) + "/"))


def check_partitions(module, wanted):
    """``wanted``: [{"name", "cpus", "mems" (optional), "exclusive" (bool or None: left alone)}], /machine included
    when host_prep narrows it; each is planned by libvirt_partition's own code, in check mode.  A target that cannot
    be planned on the host as it is (an exclusive partition while /machine still holds its CPUs) is pending: the
    role's tasks converge the partitions in the order that makes it possible."""
    reasons = []
    for entry in wanted:
        try:
            steps = planned_steps(module, name=entry["name"], cpus=entry["cpus"], mems=entry.get("mems"),
                                  exclusive=entry.get("exclusive"),
                                  **{key: entry.get(key) for key, _kind in PARTITION_TUNABLES})
        except TunableError:
            # A tunable this kernel cannot take is bad input: no order of the role's tasks converges it.
            raise
        except (PartitionError, PlanError, LockTimeout, ApplyError) as exc:
            reasons.append("%s: not converged as it stands (%s)" % (entry["name"], exc))
            continue
        reasons.extend("%s: %s" % (entry["name"], step) for step in steps)
    return reasons


def check_irqs(cpus, irqbalance_file, banned, proc_root="/proc", sys_root="/sys"):
    """irq_affinity's plan for ``cpus`` (IRQs the kernel refuses to move are not pending: the module cannot move
    them either) and the irqbalance line lineinfile would write."""
    reasons = plan_irqs(cpus, proc_root, sys_root).reasons()
    text = read_or_none(irqbalance_file, errors="surrogateescape")  # lineinfile edits it as bytes
    if text is not None:
        line = "IRQBALANCE_BANNED_CPULIST=%s" % banned
        matching = [row for row in text.splitlines() if _IRQBALANCE_LINE.match(row)]
        if not matching or matching[-1] != line:
            reasons.append("%s does not ban %s" % (irqbalance_file, banned))
    return reasons


# What lineinfile replaces in qemu.conf: the setting, or the commented default distributions ship.
QEMU_CONF_CONTROLLERS_LINE = r"^\s*#?\s*cgroup_controllers\s*="
_QEMU_CONF_CONTROLLERS_LINE = re.compile(QEMU_CONF_CONTROLLERS_LINE)
RT_THROTTLING_OFF = (
    "kernel.sched_rt_runtime_us=-1 turns RT throttling off on every CPU of the host: a runaway SCHED_FIFO task (a "
    "vCPU spinning in its guest, a stuck driver thread) then owns its CPU for good, and the kernel threads bound to "
    "that CPU never run there again. To keep throttling on, set host_prep_sched_rt_runtime_us to a number (the "
    "kernel's default is 950000: FIFO tasks get 95%% of each CPU) and, on a kernel with RT group scheduling (%s), "
    "host_prep_libvirt_cgroup_controllers to a list without cpu")


def qemu_conf_controllers_line(controllers):
    """The qemu.conf line host_prep writes for ``controllers`` (libvirt's names, in the order given)."""
    return "cgroup_controllers = [ %s ]" % ", ".join('"%s"' % name for name in controllers)


def check_qemu_conf(path, controllers):
    """What the role's lineinfile would change in qemu.conf for ``controllers`` ([]: nothing)."""
    text = read_or_none(path)
    matching = [row for row in (text or "").splitlines() if _QEMU_CONF_CONTROLLERS_LINE.match(row)]
    if not matching or matching[-1] != qemu_conf_controllers_line(controllers):
        return ["%s does not set cgroup_controllers to %s" % (path, ", ".join(controllers) or "none")]
    return []


def rt_budget_warnings(value, pending, sys_root, qemu_conf, controllers):
    """What the role says about the RT budget: RT throttling switched off by this run (``pending``: the area
    differs), or kept on where libvirt's vCPU cgroups would get no RT time. ``controllers``: what the role writes
    as qemu.conf's cgroup_controllers (None: qemu.conf as it is)."""
    # RT group scheduling shows as the v1 cpu hierarchy's cpu.rt_runtime_us; cgroup v2 has no RT knob at all.
    rt_groups = os.path.exists(os.path.join(sys_root, "fs", "cgroup", "cpu", "cpu.rt_runtime_us"))
    if value == -1:
        return [RT_THROTTLING_OFF % ("this kernel has it" if rt_groups else "this kernel shows none")] if pending else []
    if not rt_groups:
        return []
    if controllers is None:
        text = read_or_none(qemu_conf)
        controllers = parse_qemu_conf_controllers(text) if text else None
    if controllers is None or "cpu" in controllers:
        return ["kernel.sched_rt_runtime_us stays %s and this kernel has RT group scheduling: libvirt gives every "
                "vCPU's cpu cgroup cpu.rt_runtime_us=0, so a guest with SCHED_FIFO vCPUs fails to start (Cannot set "
                "scheduler parameters ... Operation not permitted). Leave cpu out of "
                "host_prep_libvirt_cgroup_controllers, or set host_prep_sched_rt_runtime_us to -1" % value]
    return []


def check_sysctl(path, content, value, proc_root="/proc", qemu_conf=None, controllers=None):
    """The RT budget: the sysctl file and value, and (``controllers`` not None) qemu.conf's cgroup_controllers."""
    reasons = plan_file(path, content, 0o644)
    current = (read_or_none(os.path.join(proc_root, "sys", "kernel", "sched_rt_runtime_us")) or "").strip()
    if current != str(value):
        reasons.append("kernel.sched_rt_runtime_us is %s, not %s" % (current or "unreadable", value))
    if controllers is not None:
        reasons.extend(check_qemu_conf(qemu_conf, controllers))
    return reasons


def partition_targets(plan, narrow_machine):
    """What host_prep's partition tasks ask libvirt_partition for, in the order they ask it."""
    targets = []
    if narrow_machine:
        targets.append({"name": "/machine", "cpus": plan["machine_cpus"], "exclusive": None})
    for partition in plan["partitions"]:
        # The role asks for exclusivity either way: a shared partition drops what a dedicated mode left.
        targets.append(dict({key: partition.get(key) for key, _kind in PARTITION_TUNABLES}, name=partition["name"],
                            cpus=partition["cpus"], mems=partition.get("mems"), exclusive=bool(partition["exclusive"])))
    return targets


def hook_layout(plan, narrow_machine):
    """What the qemu hook re-creates at a guest's prepare (the JSON file it reads), and the CPUs guest_plan takes
    when realtime_vm runs without host_prep in the play."""
    return {"partitions": {p["name"]: p for p in plan["partitions"]},
            "machine": {"cpus": plan["machine_cpus"]} if narrow_machine else {},
            # Not read by the hook: the layout host_prep leaves on the host, for realtime_vm run on its own.
            "realtime_cpus": plan["realtime_cpus"], "emulator_cpus": plan["emulator_cpus"]}


def summary(plan, narrow_machine):
    """The role's one line about the plan and what differs (``plan`` as host_plan returns it)."""
    partitions = ", ".join("%s on %s%s" % (p["name"], p["cpus"], " (exclusive)" if p["exclusive"] else "")
                           for p in plan["partitions"])
    pending = plan.get("pending") or {}
    verdict = "differs: " + "; ".join("%s (%s)" % (area, "; ".join(reasons)) for area, reasons in pending.items()) \
        if pending else "the host matches the plan"
    kept = (plan.get("hook_legacy") or {}).get("note")
    return "realtime CPUs %s (%s), housekeeping CPUs %s, /machine on %s, emulator threads on %s (%s), partitions %s; %s%s" % (
        plan["realtime_cpus"], plan["source"], plan["housekeeping_cpus"],
        plan["machine_cpus"] if narrow_machine else "its CPUs (left alone)", plan["emulator_cpus"],
        plan["emulator_mode"], partitions, verdict, "; " + kept if kept else "")


def verdict(summary, violations, other_violations, kinds, areas=(), check_mode=False, verify=True):
    """The role's verify step: {ok, msg, failures}.

    ``msg`` is the role's one line: ``summary`` on a host where nothing was converged, else the ``areas``
    converged, then what the verify step found; ``failures`` are the ``violations``' messages.  In check mode
    nothing was changed, so violations are listed as what a real run would still have to fix, not a failure.
    """
    failures = [violation.get("message", "") for violation in violations or ()]
    head = summary if not areas else ("would converge " if check_mode else "converged ") + ", ".join(areas)
    if not verify:
        tail = ""
    elif check_mode and failures:
        tail = "; a real run would still have to fix: " + "; ".join(failures)
    else:
        tail = "; no %s violation host_prep answers for on the realtime CPUs" % "/".join(kinds)
        if not areas and other_violations:
            tail += (" (%d others, e.g. threads that only a reboot with isolcpus moves or cgroups of guests:"
                     " rtvirt.kvm.remediation reports them)" % other_violations)
    return {"ok": not verify or check_mode or not failures, "msg": head + tail, "failures": failures}


# libvirt's default partition, as a v1/hybrid and as a systemd host names it: the only cgroups host_prep shapes
# itself; cgroups below it belong to guests and other roles (rtvirt.kvm.remediation reports those).
MACHINE_CGROUPS = ("/machine", "/machine.slice")
VERIFY_KINDS = ("irq_default_affinity", "irq_affinity", "cgroup_cpuset")


def host_prep_violations(violations, kinds, unmovable_irqs=()):
    """The facts' violations of ``kinds`` host_prep answers for: all but IRQs the kernel refuses to move
    (``unmovable_irqs``, from irq_affinity, or ``changeable: false`` in the facts) and cgroup_cpuset violations
    of cgroups other than /machine itself."""
    kinds = set(kinds or ())
    unmovable = {str(irq) for irq in unmovable_irqs or ()}
    result = []
    for violation in violations:
        kind = violation.get("kind")
        if kind not in kinds:
            continue
        if kind == "irq_affinity" and (str(violation.get("irq")) in unmovable or violation.get("changeable") is False):
            continue
        if kind == "cgroup_cpuset" and violation.get("offender") not in MACHINE_CGROUPS:
            continue
        result.append(violation)
    return result


# --- host_prep_state: absent -----------------------------------------------------------------------------------
# The way back is planned here too, area by area, from the planners of the modules that write it: libvirt_partition
# (state=absent, and /machine on every CPU), irq_affinity (every online CPU), kernel_cmdline (absent=), and the
# files the role removes with ansible.builtin.file.

# The kernel's default RT budget (kernel/sched/core.c, sysctl_sched_rt_runtime): what the value goes back to.
KERNEL_RT_RUNTIME_US = 950000
LIBVIRT_QEMU_CONFIG = "/etc/libvirt/qemu"


class RevertRefused(ValueError):
    """Taking host_prep off would leave guests without their partition: nothing is changed."""


def defined_guest_partitions(config_dir=LIBVIRT_QEMU_CONFIG):
    """{guest: partition} of every persistent libvirt domain (its XML in ``config_dir``) that names a
    ``<resource><partition>``.  Read from the files, not from libvirtd, so it answers with the daemon down too."""
    found = {}
    try:
        entries = sorted(os.listdir(config_dir))
    except OSError:
        return found
    for entry in entries:
        if not entry.endswith(".xml"):
            continue
        text = read_or_none(os.path.join(config_dir, entry))
        try:
            root = ElementTree.fromstring(text or "")
        except ElementTree.ParseError:
            continue
        if root.tag != "domain":
            continue
        partition = (root.findtext("resource/partition") or "").strip()
        if partition:
            found[(root.findtext("name") or entry[:-4]).strip()] = partition
    return found


def _json_partitions(path):
    text = read_or_none(path)
    try:
        data = json.loads(text) if text is not None else {}
    except ValueError:
        return []
    partitions = data.get("partitions") if isinstance(data, dict) else None
    return list(partitions) if isinstance(partitions, dict) else []


def revert_partition_names(planned, record_path, layout_path):
    """The partitions the way back removes, in order: host_prep's layout as planned now, then what the hook's layout
    file and libvirt_partition's record hold (an earlier layout, realtime_vm's partitions).  Never /machine, which
    is libvirt's own and goes back to every CPU instead."""
    names = [p["name"] for p in planned] + _json_partitions(layout_path) + _json_partitions(record_path)
    return [name for name in dict.fromkeys(names) if name.rstrip("/") not in ("/machine", "")]


def check_revert_partitions(module, names, guests, online_cpus):
    """(reasons, refusals): libvirt_partition's own plan for removing each of ``names`` and for /machine on
    ``online_cpus``.  A partition a defined guest (``guests``: {guest: partition}) names, or that still holds
    guests or tasks (libvirt_partition's refusal), is a refusal naming both."""
    reasons, refusals = [], []
    for name in names:
        inside = sorted(guest for guest, partition in guests.items() if partition.rstrip("/") == name.rstrip("/"))
        if inside:
            refusals.append("partition %s: guest%s %s %s defined in it (remove %s first: rtvirt.kvm.realtime_vm "
                            "with state absent, or virsh undefine)"
                            % (name, "s" if len(inside) > 1 else "", ", ".join(inside),
                               "are" if len(inside) > 1 else "is", "them" if len(inside) > 1 else "it"))
            continue
        try:
            steps = planned_steps(module, name=name, state="absent")
        except PartitionError as exc:
            refusals.append(str(exc))
            continue
        except (PlanError, LockTimeout, ApplyError) as exc:
            reasons.append("%s: cannot be removed as it stands (%s)" % (name, exc))
            continue
        reasons.extend("%s: %s" % (name, step) for step in steps)
    # Planned against the host as it is: an exclusive partition still beside /machine makes the widening pending;
    # the tasks remove the partitions first.
    try:
        steps = planned_steps(module, name="/machine", cpus=online_cpus, record=False)
    except (PartitionError, PlanError, LockTimeout, ApplyError) as exc:
        steps = ["not converged as it stands (%s)" % exc]
    reasons.extend("/machine: %s" % step for step in steps)
    return reasons, refusals


def banned_line(realtime_cpus):
    """The irqbalance line host_prep writes (roles/host_prep/tasks/irqs.yml), the one line the way back removes."""
    return "IRQBALANCE_BANNED_CPULIST=%s" % realtime_cpus


def check_revert_irqs(online, irqbalance_file, realtime_cpus, proc_root="/proc", sys_root="/sys"):
    """irq_affinity's plan for every online CPU, and host_prep's line still in irqbalance's file."""
    reasons = plan_irqs(online, proc_root, sys_root, exact=True).reasons()
    text = read_or_none(irqbalance_file, errors="surrogateescape")
    if text is not None and banned_line(realtime_cpus) in text.splitlines():
        reasons.append("%s still has host_prep's %s" % (irqbalance_file, banned_line(realtime_cpus)))
    return reasons


def check_revert_sysctl(path, proc_root="/proc"):
    reasons = ["%s exists" % path] if os.path.lexists(path) else []
    current = (read_or_none(os.path.join(proc_root, "sys", "kernel", "sched_rt_runtime_us")) or "").strip()
    if current != str(KERNEL_RT_RUNTIME_US):
        reasons.append("kernel.sched_rt_runtime_us is %s, not the kernel's default %d"
                       % (current or "unreadable", KERNEL_RT_RUNTIME_US))
    return reasons, current


def revert_files(hook_path, layout_path, record_path, legacy_path=None):
    """The files of ours the way back removes, in the order it removes them: the qemu.d hook, the layout, the
    record, and an earlier host_prep's hook at the single-script path.  The operator's hook there, and every other
    file in qemu.d, are never touched."""
    files = [hook_path, layout_path, record_path]
    if legacy_path and legacy_hook(legacy_path) == "ours":
        files.append(legacy_path)
    return files


def check_revert_hook(files):
    return ["%s exists" % path for path in files if os.path.lexists(path)]


def not_undone(systemd, libvirt_installed, kvm_device, starter_path=None, tuning=None):
    """What host_prep may have changed that the way back leaves, in words (the role prints them)."""
    kept = []
    if tuning:
        # check_revert_tuning's answer: host_tuning state=absent takes back the rest; these are what it cannot know.
        kept.extend(tuning.get("notes") or ())
        kept.extend(tuning.get("reboot_reasons") or ())
        if tuning.get("left_to_tuned"):
            kept.append("what TuneD sets stays TuneD's: %s" % ", ".join(tuning["left_to_tuned"]))
    if libvirt_installed:
        kept.append("packages host_prep installed (libvirt, QEMU) stay installed: remove them with the package "
                    "manager if nothing else needs them")
    kept.append("the libvirt-qemu user and group, the kvm group and libvirt-qemu's membership in it stay")
    if kvm_device:
        kept.append("/dev/kvm stays root:kvm 0660 until the next boot")
    if not systemd and starter_path:
        kept.append("%s (the daemon starter) stays: libvirtd may be running through it" % starter_path)
    kept.append("libvirt's qemu.conf is not host_prep's: left as it is")
    kept.append("a GRUB or BLS value host_prep replaced for isolcpus, nohz_full, rcu_nocbs or irqaffinity is "
                "removed, not restored")
    return kept
