#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_tuning
short_description: Quiet the realtime CPUs at run time as TuneD's realtime-virtual-host profile does
version_added: "0.3.0"
description:
  - Moves what the kernel lets an administrator move off the realtime CPUs, and persists what survives a reboot
    only in a file. Each item is switchable; the docsite page C(tuned) compares every row with TuneD.
  - "O(workqueue): the unbound workqueue cpumask C(/sys/devices/virtual/workqueue/cpumask) and every sysfs
    workqueue's own C(cpumask) (writeback, ...) on the housekeeping CPUs. At boot, C(workqueue.unbound_cpus=)
    (kernels 6.6 and later) or C(nohz_full=) keeps them there; M(rtvirt.kvm.host_plan) plans that parameter."
  - "O(kthreads): kernel threads that are neither per-CPU nor C(PF_NO_SETAFFINITY) (kthreadd, rcu_preempt,
    kswapd, rcuo*, ...) get the housekeeping CPUs as affinity. Per-CPU threads stay. A thread the kernel refuses
    is listed in RV(refused)."
  - "O(ksm): KSM stopped: C(/sys/kernel/mm/ksm/run) C(1) becomes C(2) (stop and unmerge, TuneD's value); C(0) and
    C(2) are left. The kernel starts with C(0); only a service (ksm, ksmtuned) starts it again."
  - "O(kvm): O(kvm_params) persisted in O(modprobe_file) and written to C(/sys/module/MODULE/parameters/NAME)
    where that file is writable. Where it is read-only the parameter waits for a module reload or a reboot
    (RV(reboot_required)); for a module compiled into the kernel, the kernel command line carries it
    (M(rtvirt.kvm.host_plan) plans it)."
  - "O(rt_priorities): on PREEMPT_RT kernels (C(/sys/kernel/realtime) is C(1)), ksoftirqd and ktimers at
    SCHED_FIFO 2, ktimersoftd at 3, rcuc and rcub at 4, as TuneD's realtime-virtual-host sets them."
  - "O(sysctl): written now and persisted in O(sysctl_file); a setting this kernel lacks is left out with a
    warning."
  - "O(mce): C(ignore_ce=1) on every machine check bank: no corrected-error polling timer on the realtime CPUs
    (corrected memory errors are then not logged)."
  - "Where TuneD is active (C(/etc/tuned/active_profile) names a profile and its daemon runs, or it runs without
    a daemon), the items its active profiles and their parents set are left to it, with a warning naming them
    (O(respect_tuned))."
  - "O(state=absent) is the way back, planned by the same code: the workqueue cpumasks on every online CPU; a
    movable kernel thread whose affinity is exactly the housekeeping CPUs (what this module writes) on every online
    CPU again; O(modprobe_file) and O(sysctl_file) removed; C(kvm.kvmclock_periodic_sync) back to C(Y) and
    C(kvm_intel.ple_gap) to C(128) where sysfs lets them be written (else RV(reboot_required)); C(kernel.timer_migration)
    and C(vm.stat_interval) back to C(1); C(ignore_ce) back to C(0); on PREEMPT_RT a thread at this module's
    priority back to the kernel's (ksoftirqd SCHED_OTHER, ktimers SCHED_FIFO 1, rcuc and rcub
    C(rcutree.kthread_prio))."
  - "What the way back cannot know is left, with a warning naming it: KSM stays stopped (whether it ran before is
    not recorded; the kernel starts it stopped), C(kvm.nx_huge_pages) (its default depends on the CPU),
    C(kernel.hung_task_timeout_secs), C(kernel.nmi_watchdog) and C(kernel.numa_balancing) (their defaults depend on
    the build or the machine) until a reboot."
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  realtime_cpus:
    description: The realtime CPUs, in the kernel's list syntax.
    type: str
    required: true
  housekeeping_cpus:
    description: Where what is moved goes. Default the online CPUs that are not realtime.
    type: str
  workqueue:
    description: Keep unbound workqueues on the housekeeping CPUs.
    type: bool
    default: true
  kthreads:
    description: Move movable kernel threads to the housekeeping CPUs.
    type: bool
    default: true
  ksm:
    description: Stop KSM.
    type: bool
    default: true
  kvm:
    description: Set O(kvm_params).
    type: bool
    default: true
  kvm_params:
    description:
      - Module name to parameter name to value.
      - "The default is what TuneD's realtime-virtual-host sets: C(kvm.kvmclock_periodic_sync=N) (no periodic
        kvmclock update work), C(kvm.nx_huge_pages=N) (the C(kvm-nx-lpage-recovery) thread beside the vCPUs stays
        idle; a security trade-off on CPUs affected by iTLB multihit) and C(kvm_intel.ple_gap=0) (no pause-loop
        exits)."
    type: dict
    default: {kvm: {kvmclock_periodic_sync: "N", nx_huge_pages: "N"}, kvm_intel: {ple_gap: "0"}}
  modprobe_file:
    description: The modprobe.d file for O(kvm_params).
    type: path
    default: /etc/modprobe.d/rtvirt-kvm.conf
  rt_priorities:
    description: Set the kernel threads' SCHED_FIFO priorities on PREEMPT_RT kernels.
    type: bool
    default: true
  sysctl:
    description: Sysctl name to value. Empty sets none.
    type: dict
    default: {kernel.timer_migration: "0", vm.stat_interval: "10", kernel.hung_task_timeout_secs: "600",
              kernel.nmi_watchdog: "0", kernel.numa_balancing: "0"}
  sysctl_file:
    description: The sysctl.d file for O(sysctl).
    type: path
    default: /etc/sysctl.d/91-rtvirt-kvm-tuning.conf
  mce:
    description: Stop corrected-error polling on the machine check banks.
    type: bool
    default: true
  respect_tuned:
    description: Leave to an active TuneD what its profiles set. False tunes everything (and TuneD may undo it).
    type: bool
    default: true
  state:
    description:
      - V(present) tunes; V(absent) takes the tuning back to the kernel's defaults where they are known.
      - The item options say which items are taken back; an item switched off is left as it is.
    type: str
    choices: [present, absent]
    default: present
  proc_root:
    description: Where procfs is mounted. For tests against a fake tree.
    type: path
    default: /proc
  sys_root:
    description: Where sysfs is mounted. For tests against a fake tree.
    type: path
    default: /sys
  tuned_dir:
    description: TuneD's configuration directory. For tests against a fake tree.
    type: path
    default: /etc/tuned
  tuned_profiles_dir:
    description: TuneD's packaged profiles. For tests against a fake tree.
    type: path
    default: /usr/lib/tuned
attributes:
  check_mode:
    support: full
    details: Reports what would change; writes nothing.
  diff_mode:
    support: full
  platform:
    platforms: linux
seealso:
  - module: rtvirt.kvm.host_plan
"""

EXAMPLES = r"""
- name: Quiet CPUs 2-7 as TuneD's realtime-virtual-host would
  rtvirt.kvm.host_tuning:
    realtime_cpus: 2-7

- name: Take the tuning back off (host_prep_state absent does this)
  rtvirt.kvm.host_tuning:
    realtime_cpus: 2-7
    state: absent

- name: Everything but KSM and the machine check banks
  rtvirt.kvm.host_tuning:
    realtime_cpus: 2-7
    ksm: false
    mce: false
"""

RETURN = r"""
changes:
  description: What was changed (in check mode, would be), with C(item), C(kind) (write, file, remove, affinity,
    scheduler), C(target) (a path or a thread id), C(what), C(before) and C(after) (null for a removed file).
  returned: always
  type: list
  elements: dict
  sample: [{item: workqueue, kind: write, target: /sys/devices/virtual/workqueue/cpumask, what: the unbound
    workqueue cpumask, before: "0-7", after: "0-1"}]
refused:
  description: Kernel threads the kernel refused to move or re-prioritise (or that ended meanwhile), with C(error).
  returned: always
  type: list
  elements: dict
  sample: []
reboot_required:
  description: A setting waits for a module reload or a reboot (RV(reboot_reasons)).
  returned: always
  type: bool
  sample: false
reboot_reasons:
  description: Why, in words.
  returned: always
  type: list
  elements: str
  sample: ["kvm parameter kvm.nx_huge_pages is Y, not N, and read-only at run time: it takes reloading kvm (or a
    reboot)"]
left_to_tuned:
  description: The items (and sysctls) left to an active TuneD.
  returned: always
  type: list
  elements: str
  sample: ["ksm", "workqueue", "sysctl kernel.timer_migration"]
tuned:
  description: The active TuneD, C(profiles), C(how) and what its profiles set (C(items), C(sysctls)), or null.
  returned: always
  type: dict
  sample: null
housekeeping_cpus:
  description: The housekeeping CPUs used.
  returned: always
  type: str
  sample: "0-1"
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._failure import ModuleFailure, finish
from ansible_collections.rtvirt.kvm.plugins.module_utils._host_tuning import (
    Gate,
    TuningError,
    apply,
    argument_spec,
    detect_tuned,
    plan_tuning,
    settings_from,
    tuned_note,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import running_commands
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError

# The one write gate; unit tests replace it.
GATE = Gate()


def get_argument_spec():
    return dict(argument_spec(), realtime_cpus=dict(type="str", required=True), housekeeping_cpus=dict(type="str"),
                proc_root=dict(type="path", default="/proc"), sys_root=dict(type="path", default="/sys"),
                tuned_dir=dict(type="path", default="/etc/tuned"),
                tuned_profiles_dir=dict(type="path", default="/usr/lib/tuned"),
                state=dict(type="str", default="present", choices=["present", "absent"]))


def online_cpus(sys_root):
    path = os.path.join(sys_root, "devices", "system", "cpu", "online")
    try:
        with open(path) as handle:
            return parse_cpulist(handle.read(), what=path)
    except OSError as exc:
        raise CpuListError("cannot read the online CPUs from %s: %s" % (path, exc.strerror)) from None


def cpus(params):
    realtime = parse_cpulist(params["realtime_cpus"], what="realtime_cpus")
    if not realtime:
        raise CpuListError("realtime_cpus is empty: name the realtime CPUs")
    if params["housekeeping_cpus"]:
        housekeeping = parse_cpulist(params["housekeeping_cpus"], what="housekeeping_cpus")
    else:
        housekeeping = online_cpus(params["sys_root"]) - realtime
    if not housekeeping:
        raise CpuListError("housekeeping_cpus is empty: realtime_cpus %s leaves the host no CPU"
                           % format_cpulist(realtime))
    if realtime & housekeeping:
        raise CpuListError("housekeeping_cpus %s and realtime_cpus %s overlap on %s"
                           % (format_cpulist(housekeeping), format_cpulist(realtime),
                              format_cpulist(realtime & housekeeping)))
    return realtime, housekeeping


def diff_of(plan):
    diffs = []
    for change in plan.changes:
        if change.kind in ("file", "remove"):
            before = ""
            if change.before is not None:
                with open(change.target) as handle:
                    before = handle.read()
            diffs.append({"before_header": change.target, "after_header": change.target, "before": before,
                          "after": change.after or ""})
        else:
            diffs.append({"before_header": "%s (%s)" % (change.what, change.target), "after_header": str(change.target),
                          "before": "%s\n" % change.before, "after": "%s\n" % change.after})
    return diffs


def run(module):
    params = module.params
    try:
        realtime, housekeeping = cpus(params)
        tuned = detect_tuned(params["tuned_dir"], params["tuned_profiles_dir"],
                             running_commands(params["proc_root"])) if params["respect_tuned"] else None
        online = online_cpus(params["sys_root"]) if params["state"] == "absent" else None
        plan = plan_tuning(realtime, housekeeping, settings_from(params), params["proc_root"], params["sys_root"],
                           tuned, state=params["state"], online=online)
    except (CpuListError, TuningError, IsolationError) as exc:
        raise ModuleFailure(str(exc)) from None
    except OSError as exc:
        raise ModuleFailure("cannot read the host's state: %s" % exc) from None
    note = tuned_note(tuned)
    for warning in ([note] if note else []) + plan.notes:
        module.warn(warning)
    result = dict(changed=bool(plan.changes), housekeeping_cpus=format_cpulist(housekeeping),
                  reboot_required=bool(plan.reboot), reboot_reasons=plan.reboot, left_to_tuned=plan.left_to_tuned,
                  tuned=tuned)
    if module._diff and plan.changes:
        result["diff"] = diff_of(plan)
    if module.check_mode:
        return dict(result, changes=[c.item_dict() for c in plan.changes], refused=[])
    try:
        done, refused = apply(plan, GATE)
    except OSError as exc:
        raise ModuleFailure(str(exc.strerror or exc), **result) from None
    return dict(result, changed=bool(done), changes=done, refused=refused)


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    finish(module, run)


if __name__ == "__main__":
    main()
