#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_plan
short_description: Plan a host's realtime layout and report, in one pass, what host_prep would still change
version_added: "0.2.0"
description:
  - The first task of the P(rtvirt.kvm.host_prep#role) role. It plans the realtime CPUs and the cgroup layout and then
    reads, in the same process, every part of the host the role manages. RV(pending) names each area of the role
    that differs from the plan, with the reasons; the role runs only those areas, through the same modules as always.
  - "The plan: the realtime CPUs in O(cpus) are validated or, when O(cpus) is empty, chosen: the first
    O(housekeeping_cores_per_node) whole SMT cores of every NUMA node stay housekeeping, all other whole cores
    become realtime (deterministic). It fails, before anything on the host is changed by later tasks, when the set
    names CPUs that do not exist or are offline, takes every CPU of a NUMA node, or leaves no housekeeping CPU; a
    split SMT core is a warning. The cgroup layout of docs/LAYOUT.md follows: C(/machine) on the housekeeping
    CPUs, the emulator CPUs, and every realtime partition's CPUs and exclusivity, checked against libvirt's naming
    and the kernel's rules."
  - Why one pass. Every module task costs a new Python process on the target; asking a dozen tasks whether they
    have anything to do costs seconds on a host where nothing changed. A realtime host is re-converged often
    (CI, remediation, fleets in serial), and a converge that reads instead of writes is also what keeps the
    kernel from rebuilding scheduling domains under running guests.
  - An area is reported pending whenever this module cannot prove its tasks would change nothing (an unparsable
    GRUB file, an IRQ outside the housekeeping CPUs whose changeability debugfs does not tell). It never reports
    converged what the area's tasks would change; the unit tests hold it to the same inputs as those tasks.
  - With O(verify=true) it also returns RV(cpu_isolation), the facts of M(rtvirt.kvm.cpu_isolation_facts)
    gathered for the planned realtime CPUs and partitions (as a result, not as facts; only the facts module sets
    facts).
  - The module never changes anything.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  cpus:
    description:
      - The realtime CPUs in the kernel's list syntax (C(2-5,8)). Empty or omitted chooses them automatically.
    type: str
  housekeeping_cores_per_node:
    description:
      - For the automatic choice, how many whole cores of every NUMA node stay housekeeping.
    type: int
    default: 1
  partitions:
    description:
      - Realtime partitions to plan, beside C(/machine).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: libvirt's C(<partition>), such as C(/rt).
        type: str
        required: true
      cpus:
        description:
          - Its CPUs. Default the realtime CPUs plus the emulator CPUs, because libvirt puts a guest's emulator cgroup
            inside its partition, and a cpuset must hold its children's CPUs (see docs/LAYOUT.md).
        type: str
      mems:
        description: Its memory nodes; default its parent's.
        type: str
      exclusive:
        description:
          - Defaults to true with dedicated O(emulator_cpus) and false without; true without them is refused,
            because the partition then overlaps C(/machine) on the housekeeping CPUs.
        type: bool
      cpu_shares:
        description:
          - M(rtvirt.kvm.libvirt_partition)'s O(rtvirt.kvm.libvirt_partition#module:cpu_shares), planned by that
            module's code; a value this kernel cannot take fails the plan, naming the partition and the rule.
        type: int
      memory_hard_limit:
        description: M(rtvirt.kvm.libvirt_partition)'s O(rtvirt.kvm.libvirt_partition#module:memory_hard_limit).
        type: str
      memory_soft_limit:
        description: M(rtvirt.kvm.libvirt_partition)'s O(rtvirt.kvm.libvirt_partition#module:memory_soft_limit).
        type: str
      memory_swap_hard_limit:
        description: M(rtvirt.kvm.libvirt_partition)'s O(rtvirt.kvm.libvirt_partition#module:memory_swap_hard_limit).
        type: str
      blkio_weight:
        description: M(rtvirt.kvm.libvirt_partition)'s O(rtvirt.kvm.libvirt_partition#module:blkio_weight).
        type: int
  emulator_cpus:
    description:
      - CPUs dedicated to the realtime guests' emulator threads, neither realtime nor needed by the host. Empty
        shares the housekeeping CPUs with C(/machine) and the host.
    type: str
    default: ""
  narrow_machine:
    description:
      - Plan C(/machine) on the housekeeping CPUs (minus dedicated emulator CPUs), which rules out realtime
        partitions below C(/machine).
    type: bool
    default: true
  cmdline:
    description:
      - Check the kernel command line where M(rtvirt.kvm.kernel_cmdline) sets it, with its detection and plan (BLS
        entries through grubby on the RHEL family, else GRUB's defaults file). Omit when the role does not manage it.
    type: dict
    suboptions:
      path:
        description: GRUB's defaults file (kernel_cmdline's O(rtvirt.kvm.kernel_cmdline#module:path)).
        type: path
        required: true
      isolcpus_flags:
        description: Flags put before the CPU list in C(isolcpus=).
        type: str
        default: ""
  os_family:
    description:
      - The host's OS family as Ansible's C(os_family) fact names it (V(Debian), V(RedHat)), when the play
        gathered facts. Omitted, it is read from C(/etc/os-release) (C(ID) and C(ID_LIKE)).
    type: str
  os_major_version:
    description:
      - The OS's major version (C(distribution_major_version)), when the play gathered facts. Omitted, it is
        C(VERSION_ID) of C(/etc/os-release).
    type: str
  os_names:
    description:
      - Package and service names per OS family, V(Debian), V(RedHat), and per family and major version such as
        V(RedHat_8), which goes over its family's. A family without an entry gets V(Debian)'s. RV(os) is the
        host's, with what O(libvirt) and O(irqs) set over it.
      - "Each entry may name C(libvirt_packages), C(libvirt_service_packages), C(libvirt_units) (the systemd units
        that must be active and enabled), C(libvirt_reload_unit), C(irqbalance_file) and C(irqbalance_service)."
    type: dict
    default: {}
  libvirt:
    description:
      - Check that libvirt is installed and running.
      - "Also that QEMU can use KVM as on a packaged install: group C(kvm) exists with C(libvirt-qemu) in it, and,
        where no udev manages C(/dev), C(/dev/kvm) is C(root:kvm 0660) (RV(manage_kvm_device))."
    type: dict
    suboptions:
      packages:
        description:
          - Packages to find in dpkg's status, or through C(rpm -q) where rpm and dnf exist. Omitted or null,
            the OS family's C(libvirt_packages) (O(os_names)).
        type: list
        elements: str
      service_packages:
        description:
          - Packages to find as well on systemd hosts (those that bring the service units). Omitted or null, the
            OS family's C(libvirt_service_packages).
        type: list
        elements: str
      units:
        description:
          - The systemd units that must be active and enabled. Omitted or null, the OS family's C(libvirt_units),
            else C(libvirtd.service).
        type: list
        elements: str
      starter:
        description: The content of the daemon starter for hosts without systemd.
        type: str
      starter_path:
        description: Where the starter is installed.
        type: path
  hook:
    description:
      - Check the libvirt qemu hook.
    type: dict
    suboptions:
      path:
        description: The hook script.
        type: path
        required: true
      content:
        description: The rendered script.
        type: str
        required: true
      layout_path:
        description: The JSON file the hook reads the layout from; its content is RV(hook_layout).
        type: path
        required: true
      legacy_path:
        description:
          - The single hook script libvirt runs before C(qemu.d), where earlier versions installed the hook.
          - A hook of ours there (recognised by its marker line) is pending until the role removes it; any other file
            there is never touched and is named in RV(hook_legacy).
        type: path
      starter:
        description: On hosts without systemd, the daemon helper the hook's reload handler uses.
        type: str
      starter_path:
        description: Where that helper is installed.
        type: path
  irqs:
    description:
      - Check IRQ affinities (against RV(irq_cpus)) and irqbalance's banned CPUs.
    type: dict
    suboptions:
      irqbalance_file:
        description: irqbalance's environment file. Omitted or null, the OS family's C(irqbalance_file), else
          C(/etc/default/irqbalance).
        type: path
  sysctl:
    description:
      - Check the RT budget.
    type: dict
    suboptions:
      path:
        description: The sysctl.d file.
        type: path
        required: true
      content:
        description: Its content.
        type: str
        required: true
      value:
        description:
          - kernel.sched_rt_runtime_us.
          - When it is V(-1) and differs from the host's, the module warns that RT throttling goes off host-wide. When
            it is a number, the kernel has RT group scheduling and libvirt's C(cgroup_controllers) include C(cpu),
            it warns that SCHED_FIFO vCPUs cannot start.
        type: int
        required: true
      qemu_conf:
        description: libvirt's C(qemu.conf).
        type: path
        default: /etc/libvirt/qemu.conf
      cgroup_controllers:
        description:
          - The C(cgroup_controllers) C(qemu.conf) should set (host_prep's lineinfile line). Omitted, qemu.conf is
            not checked.
        type: list
        elements: str
        choices: [cpu, cpuacct, cpuset, memory, devices, freezer, blkio, net_cls, perf_event]
  tuning:
    description:
      - Check the run-time tuning M(rtvirt.kvm.host_tuning) does (workqueue cpumask, movable kernel threads, KSM,
        KVM module parameters, PREEMPT_RT kernel thread priorities, sysctls, machine check polling), with its
        planner, for the realtime CPUs and RV(irq_cpus). Its options are host_tuning's, with the same defaults.
      - It also adds the boot-time equivalents to RV(cmdline_params) (C(workqueue.unbound_cpus) on kernels 6.6 and
        later, the KVM parameters when KVM is compiled into the kernel) and the facts' C(workqueue_cpumask) and
        C(kthread_on_isolated) kinds to RV(verify_kinds). What an active TuneD sets is left to it (RV(tuning)).
    type: dict
    suboptions:
      workqueue:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:workqueue).
        type: bool
        default: true
      kthreads:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:kthreads).
        type: bool
        default: true
      ksm:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:ksm).
        type: bool
        default: true
      kvm:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:kvm).
        type: bool
        default: true
      kvm_params:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:kvm_params).
        type: dict
        default: {kvm: {kvmclock_periodic_sync: "N", nx_huge_pages: "N"}, kvm_intel: {ple_gap: "0"}}
      modprobe_file:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:modprobe_file).
        type: path
        default: /etc/modprobe.d/rtvirt-kvm.conf
      rt_priorities:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:rt_priorities).
        type: bool
        default: true
      sysctl:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:sysctl).
        type: dict
        default: {kernel.timer_migration: "0", vm.stat_interval: "10", kernel.hung_task_timeout_secs: "600",
                  kernel.nmi_watchdog: "0", kernel.numa_balancing: "0"}
      sysctl_file:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:sysctl_file).
        type: path
        default: /etc/sysctl.d/91-rtvirt-kvm-tuning.conf
      mce:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:mce).
        type: bool
        default: true
      respect_tuned:
        description: host_tuning's O(rtvirt.kvm.host_tuning#module:respect_tuned).
        type: bool
        default: true
  verify:
    description: Return RV(cpu_isolation) for the planned realtime CPUs and partitions, and the violations of
      O(verify_kinds) host_prep answers for (RV(violations)).
    type: bool
    default: false
  verify_kinds:
    description: Violation kinds RV(violations) selects (the role's C(host_prep_verify_kinds)).
    type: list
    elements: str
    default: [irq_default_affinity, irq_affinity, cgroup_cpuset]
  state:
    description:
      - V(present) plans host_prep's layout. V(absent) plans the way back (the role's C(host_prep_state=absent));
        RV(pending) then names what differs from the host as it was before host_prep, and RV(revert) says what the
        role's revert tasks take from where.
      - With V(absent) the module fails, before the role changes anything, while a defined guest names one of the
        partitions to remove, or guests or tasks still run in one, naming the partition and the guests.
      - O(verify) is not used with V(absent).
    type: str
    choices: [present, absent]
    default: present
  libvirt_config_dir:
    description: Where libvirt keeps the persistent domains' XML (read with O(state=absent) for guests in the partitions).
    type: path
    default: /etc/libvirt/qemu
  partition_record:
    description: libvirt_partition's record of the partitions it manages (removed with O(state=absent)).
    type: path
    default: /etc/libvirt/hooks/rtvirt-kvm-partitions.json
  sys_root:
    description: Where sysfs is mounted (the CPU topology). For tests against a recorded tree.
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
    details: The module never changes anything.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with sysfs and procfs.
seealso:
  - module: rtvirt.kvm.cpu_isolation_facts
"""

EXAMPLES = r"""
- name: Plan, and see what a host_prep run would change
  rtvirt.kvm.host_plan:
    partitions:
      - name: /rt
    sysctl:
      path: /etc/sysctl.d/90-rtvirt-kvm.conf
      content: "kernel.sched_rt_runtime_us = -1\n"
      value: -1
  register: plan

- name: Show the areas with a difference
  ansible.builtin.debug:
    var: plan.pending
"""

RETURN = r"""
realtime_cpus:
  description: The realtime CPUs, normalized.
  returned: success
  type: str
  sample: "2-7"
housekeeping_cpus:
  description: The online CPUs that are not realtime.
  returned: success
  type: str
  sample: "0-1"
source:
  description: V(given) when O(cpus) was set, V(automatic) otherwise.
  returned: success
  type: str
  sample: automatic
online_cpus:
  description: The online CPUs.
  returned: success
  type: str
  sample: "0-7"
numa_nodes:
  description: Every NUMA node with its online CPUs.
  returned: success
  type: list
  elements: dict
  sample: [{node: 0, cpus: "0-7"}]
partitions:
  description: O(partitions) with C(cpus) and C(exclusive) settled.
  returned: success
  type: list
  elements: dict
  sample: [{name: /rt, cpus: "0-7", exclusive: false}]
machine_cpus:
  description: The CPUs planned for libvirt's default partition C(/machine).
  returned: success
  type: str
  sample: "0-1"
emulator_cpus:
  description: The CPUs of the realtime guests' emulator threads (dedicated, or the housekeeping CPUs).
  returned: success
  type: str
  sample: "0-1"
emulator_mode:
  description: V(dedicated) with O(emulator_cpus), V(shared) without.
  returned: success
  type: str
  sample: shared
pending:
  description: Each checked area that differs from the plan, with the reasons in words. Empty when converged.
  returned: success
  type: dict
  sample: {partitions: ["/rt: /sys/fs/cgroup/cpuset/rt.partition is missing"]}
summary:
  description: One line for the operator, the plan and what differs (or that the host matches the plan).
  returned: success
  type: str
  sample: "realtime CPUs 2-7 (automatic), housekeeping CPUs 0-1, /machine on 0-1, emulator threads on 0-1 (shared),
    partitions /rt on 0-7; the host matches the plan"
systemd:
  description: Whether systemd is the service manager (C(/run/systemd/system) exists).
  returned: success
  type: bool
  sample: false
manage_kvm_device:
  description:
    - Whether the role sets C(/dev/kvm) to C(root:kvm 0660) itself, because the device exists and no udev runs
      (C(/run/udev/control) is absent) whose rules would do it.
  returned: success
  type: bool
  sample: true
package_manager:
  description: V(apt) where dpkg keeps its status file, V(dnf) where rpm and dnf exist, else null (the role installs
    no packages).
  returned: success
  type: str
  sample: apt
os_family:
  description: The OS family (O(os_family), or read from C(/etc/os-release)); null for one that is neither.
  returned: success
  type: str
  sample: RedHat
os:
  description:
    - The package and service names the role uses on this host (O(os_names) for its family, with O(libvirt) and
      O(irqs) over them), and C(from), the O(os_names) entries they were taken from.
  returned: success
  type: dict
  sample: {libvirt_packages: [libvirt-daemon-kvm, qemu-kvm, libvirt-client], libvirt_service_packages: [],
    libvirt_units: [virtqemud.socket, virtqemud-ro.socket, virtqemud-admin.socket, virtproxyd.socket,
    virtlogd.socket], libvirt_reload_unit: virtqemud.service, irqbalance_file: /etc/sysconfig/irqbalance,
    irqbalance_service: irqbalance, from: [RedHat]}
reboot_required:
  description: The running kernel lacks kernel parameters the boot loader is asked for (only with O(cmdline)).
  returned: success
  type: bool
  sample: false
tuning:
  description:
    - With O(tuning), C(left_to_tuned) (the items an active TuneD keeps), C(tuned) (what was detected, or null),
      C(notes) (what the plan leaves out, in words) and C(reboot_reasons).
  returned: when O(tuning) is given
  type: dict
  sample: {left_to_tuned: [], tuned: null, notes: [], reboot_reasons: []}
verify_kinds:
  description: The violation kinds the role's verify step checks, O(verify_kinds) and, with O(tuning), the kinds
    of the items it tunes.
  returned: success
  type: list
  elements: str
  sample: [irq_default_affinity, irq_affinity, cgroup_cpuset, workqueue_cpumask, kthread_on_isolated]
cmdline_params:
  description: The kernel parameters for the plan (C(isolcpus), C(nohz_full), C(rcu_nocbs), C(irqaffinity), and
    with O(tuning) C(workqueue.unbound_cpus) and built-in KVM's parameters).
  returned: success
  type: dict
  sample: {isolcpus: "managed_irq,domain,2-7", nohz_full: "2-7", rcu_nocbs: "2-7", irqaffinity: "0-1"}
hook_legacy:
  description:
    - What is at O(hook.legacy_path), C(state) V(absent), V(ours) (an earlier version's hook, which the role removes
      once the new one is installed) or V(foreign) (kept as it is; C(note) says so in words, else C(null)).
  returned: when O(hook.legacy_path) is given
  type: dict
  sample:
    path: /etc/libvirt/hooks/qemu
    state: foreign
    note: "found /etc/libvirt/hooks/qemu, which is not host_prep's: kept as it is (libvirt runs it before
      /etc/libvirt/hooks/qemu.d/)"
hook_layout:
  description: What the qemu hook re-creates, C(partitions) (name to cpus/exclusive) and C(machine).
  returned: success
  type: dict
  sample: {partitions: {"/rt": {name: /rt, cpus: "0-7", exclusive: false}}, machine: {cpus: "0-1"}}
irq_cpus:
  description: Where IRQs and default_smp_affinity go (the housekeeping CPUs; with dedicated emulator CPUs,
    the CPUs of /machine).
  returned: success
  type: str
  sample: "0-1"
violations:
  description: With O(verify=true), the facts' violations of O(verify_kinds) that host_prep answers for, all
    but C(irq_affinity) of IRQs the kernel refuses to move (C(changeable=false)) and C(cgroup_cpuset) of cgroups
    other than C(/machine) (those belong to guests and other roles; the P(rtvirt.kvm.remediation#role) role reports them).
  returned: when verify is true
  type: list
  elements: dict
other_violations:
  description: With O(verify=true), how many of the facts' violations RV(violations) leaves out.
  returned: when verify is true
  type: int
  sample: 34
verdict:
  description:
    - The host_prep role's verify step on the host as it is (nothing converged), as the role prints it.
    - C(ok) is false when O(verify=true) found RV(violations) (in check mode they are what a real run would
      still have to fix, and C(ok) stays true); C(msg) is RV(summary) followed by what the verify step found;
      C(failures) are the violations' messages.
  returned: success
  type: dict
  sample: {ok: true, failures: [], msg: "realtime CPUs 2-7 (automatic), ...; the host matches the plan; no
    irq_default_affinity/irq_affinity/cgroup_cpuset violation host_prep answers for on the realtime CPUs"}
revert:
  description:
    - With O(state=absent), what the role's revert tasks do, each planned here with the writing module's planner.
    - C(partitions), the partitions to remove (host_prep's layout, the hook's layout file, the partition record);
      C(machine_cpus) and C(irq_cpus), every online CPU; C(irqbalance_line), host_prep's line to remove;
      C(files), our hook, layout and record files to remove; C(cmdline_absent), the kernel parameters to remove;
      C(sched_rt_runtime_us), the value now, and C(kernel_default), what it goes back to; C(cmdline_reboot),
      whether the running kernel keeps the removed parameters until a reboot; C(tuning), with
      O(tuning), M(rtvirt.kvm.host_tuning)'s plan for O(rtvirt.kvm.host_tuning#module:state=absent)
      (C(housekeeping_cpus) it tuned to, C(reboot_reasons), C(left_to_tuned), and C(notes), what it cannot take back),
      else null; C(kept), what host_prep may have changed that the way back leaves, in words; C(hook_kept), the
      operator's hook left as it is.
  returned: with O(state=absent)
  type: dict
  sample: {partitions: [/rt], machine_cpus: "0-7", irq_cpus: "0-7", irqbalance_line: "IRQBALANCE_BANNED_CPULIST=2-7",
    files: [/etc/libvirt/hooks/qemu.d/rtvirt-kvm-partitions, /etc/libvirt/hooks/rtvirt-kvm-layout.json,
    /etc/libvirt/hooks/rtvirt-kvm-partitions.json], cmdline_absent: [irqaffinity, isolcpus, nohz_full, rcu_nocbs],
    sched_rt_runtime_us: "-1", kernel_default: 950000, cmdline_reboot: true,
    tuning: {housekeeping_cpus: "0-1", reboot_reasons: [], left_to_tuned: [],
    notes: ["sysctl kernel.nmi_watchdog: left at 0: ..."]},
    kept: ["the libvirt-qemu user and group ... stay"],
    hook_kept: null}
cpu_isolation:
  description: With O(verify=true), the C(cpu_isolation) fact as M(rtvirt.kvm.cpu_isolation_facts) returns it.
  returned: when verify is true
  type: dict
  sample: {isolated_cpus: "2-7", housekeeping_cpus: "0-1", violations: []}
"""

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._bootloader import read_os_release
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._failure import ModuleFailure, finish
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import RealtimeCpusError, plan_argument_spec, plan_host
from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import (
    banned_line,
    check_cmdline,
    check_revert_hook,
    check_revert_irqs,
    check_revert_partitions,
    check_revert_sysctl,
    defined_guest_partitions,
    KERNEL_RT_RUNTIME_US,
    not_undone,
    plan_file,
    revert_files,
    revert_partition_names,
    RevertRefused,
    check_hook,
    check_irqs,
    check_libvirt,
    check_partitions,
    check_sysctl,
    rt_budget_warnings,
    cmdline_params,
    hook_kept_note,
    hook_layout,
    installed_packages,
    legacy_hook,
    OsNamesError,
    running_commands,
    os_release_family,
    resolve_os_names,
    VERIFY_KINDS,
    host_prep_violations,
    partition_targets,
    summary,
    verdict,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._host_tuning import (
    TuningError,
    argument_spec as tuning_argument_spec,
    cmdline_params as tuning_cmdline_params,
    detect_tuned,
    plan_tuning,
    settings_from,
    tuned_note,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._kvm import DEVICE as KVM_DEVICE, udev_manages_devices
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    LIBVIRT_CONTROLLERS, PartitionNameError, TunableError)

SYSTEMD_DIR = "/run/systemd/system"
RPM_TOOLS = ("/usr/bin/rpm", "/usr/bin/dnf")


def get_argument_spec():
    return dict(
        plan_argument_spec(),
        cmdline=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                               isolcpus_flags=dict(type="str", default=""))),
        os_family=dict(type="str"),
        os_major_version=dict(type="str"),
        os_names=dict(type="dict", default={}),
        libvirt=dict(type="dict", options=dict(packages=dict(type="list", elements="str"),
                                               service_packages=dict(type="list", elements="str"),
                                               units=dict(type="list", elements="str"),
                                               starter=dict(type="str"), starter_path=dict(type="path"))),
        hook=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                            content=dict(type="str", required=True),
                                            layout_path=dict(type="path", required=True),
                                            legacy_path=dict(type="path"),
                                            starter=dict(type="str"), starter_path=dict(type="path"))),
        irqs=dict(type="dict", options=dict(irqbalance_file=dict(type="path"))),
        sysctl=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                              content=dict(type="str", required=True),
                                              value=dict(type="int", required=True),
                                              qemu_conf=dict(type="path", default="/etc/libvirt/qemu.conf"),
                                              cgroup_controllers=dict(type="list", elements="str",
                                                                      choices=list(LIBVIRT_CONTROLLERS)))),
        tuning=dict(type="dict", options=tuning_argument_spec()),
        verify=dict(type="bool", default=False),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        libvirt_config_dir=dict(type="path", default="/etc/libvirt/qemu"),
        partition_record=dict(type="path", default="/etc/libvirt/hooks/rtvirt-kvm-partitions.json"),
        verify_kinds=dict(type="list", elements="str", default=list(VERIFY_KINDS)),
    )


def _systemctl_states(units):
    """{unit: {"active": ActiveState, "enabled": UnitFileState}} in one ``systemctl show`` (which, unlike
    is-enabled, answers for a unit that does not exist too, so several units cannot shift each other's answers)."""
    proc = subprocess.run(["systemctl", "show", "--property=ActiveState,UnitFileState"] + list(units),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, check=False)
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in proc.stdout.strip().split("\n\n")] if proc.stdout.strip() else []
    return {unit: {"active": block.get("ActiveState"), "enabled": block.get("UnitFileState") or None}
            for unit, block in zip(units, blocks)}


def _rpm_installed(names):
    """The names of ``names`` rpm lists as installed: one rpm -q for all, a name per line for an installed package,
    "package NAME is not installed" for a missing one (so whole lines are matched, never words)."""
    if not names:
        return set()
    proc = subprocess.run(["rpm", "-q", "--queryformat", "%{NAME}\n"] + list(names), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, universal_newlines=True, check=False,
                          env=dict(os.environ, LC_ALL="C"))
    return {line.strip() for line in proc.stdout.splitlines()} & set(names)


def host_os(params):
    """(family, the names the role uses here): facts when the play gathered them, else /etc/os-release."""
    family, major = params["os_family"], params["os_major_version"]
    if family is None:
        family, release_major = os_release_family(read_os_release())
        major = major or release_major
    lv, irqs = params["libvirt"] or {}, params["irqs"] or {}
    names, used = resolve_os_names(params["os_names"], family, major, overrides={
        "libvirt_packages": lv.get("packages"), "libvirt_service_packages": lv.get("service_packages"),
        "libvirt_units": lv.get("units"), "irqbalance_file": irqs.get("irqbalance_file")})
    return family, dict(names, **{"from": used})


def check(module, params, plan):
    """The areas asked for that differ from ``plan``: {area: [reasons]}, plus what the tasks need."""
    systemd = os.path.isdir(SYSTEMD_DIR)
    pending = {}
    # Dedicated emulator CPUs sit in the exclusive partition (v2: an isolated one), so IRQs stay off them too.
    irq_cpus = plan["machine_cpus"] if plan["emulator_mode"] == "dedicated" else plan["housekeeping_cpus"]
    family, names = host_os(params)
    installed = installed_packages()
    package_manager = "apt" if installed is not None else None
    if installed is None and all(os.path.exists(tool) for tool in RPM_TOOLS):
        package_manager = "dnf"
    extra = dict(systemd=systemd, reboot_required=False, irq_cpus=irq_cpus, os_family=family, os=names,
                 package_manager=package_manager,
                 cmdline_params=cmdline_params(plan["realtime_cpus"], irq_cpus,
                                               (params["cmdline"] or {}).get("isolcpus_flags") or ""),
                 hook_layout=hook_layout(plan, params["narrow_machine"]),
                 # Where udev runs, its rules own /dev/kvm; elsewhere the role sets what those rules would.
                 manage_kvm_device=os.path.exists(KVM_DEVICE) and not udev_manages_devices())
    targets = partition_targets(plan, params["narrow_machine"])
    extra["verify_kinds"] = list(params["verify_kinds"])
    if params["tuning"] is not None:
        tuning = check_tuning(module, params["tuning"], plan["realtime_cpus"], irq_cpus)
        pending["tuning"] = tuning.pop("reasons")
        extra["reboot_required"] = bool(tuning["reboot_reasons"])
        extra["tuning"] = tuning
        if params["cmdline"] is not None:
            extra["cmdline_params"].update(tuning.pop("cmdline_params"))
        else:
            tuning.pop("cmdline_params")
        extra["verify_kinds"] += [kind for kind in tuning.pop("verify_kinds") if kind not in extra["verify_kinds"]]
    if params["cmdline"] is not None:
        reasons, cmdline_reboot = check_cmdline(params["cmdline"]["path"], extra["cmdline_params"])
        extra["reboot_required"] = extra["reboot_required"] or cmdline_reboot
        pending["cmdline"] = reasons
    if params["libvirt"] is not None:
        lv = params["libvirt"]
        units = None
        if systemd:
            states = _systemctl_states(names["libvirt_units"])
            units = {unit: states.get(unit, {}) for unit in names["libvirt_units"]}
        starter = {"path": lv.get("starter_path"), "content": lv.get("starter")} if lv.get("starter") else None
        # The service packages bring the service units; without a service manager the starter runs the daemons.
        packages = names["libvirt_packages"] + (names["libvirt_service_packages"] if systemd else [])
        if package_manager == "dnf":
            installed = _rpm_installed(packages)
        pending["libvirt"] = check_libvirt(packages, installed, units, starter,
                                           manage_kvm_device=extra["manage_kvm_device"])
    if params["hook"] is not None:
        hook = params["hook"]
        pending["hook"] = check_hook(hook["path"], hook["content"], hook["layout_path"], extra["hook_layout"],
                                     hook.get("legacy_path"))
        if hook.get("legacy_path"):
            legacy = legacy_hook(hook["legacy_path"])
            extra["hook_legacy"] = {"path": hook["legacy_path"], "state": legacy,
                                    "note": hook_kept_note(hook["legacy_path"], legacy, hook["path"])}
        if not systemd and hook.get("starter"):
            # The reload handler's helper, installed with the hook on hosts without a service manager.
            pending["hook"].extend(plan_file(hook["starter_path"], hook["starter"], 0o755))
    pending["partitions"] = check_partitions(module, targets)
    if params["irqs"] is not None:
        pending["irqs"] = check_irqs(parse_cpulist(extra["irq_cpus"]), names["irqbalance_file"],
                                     plan["realtime_cpus"])
    if params["sysctl"] is not None:
        sysctl = params["sysctl"]
        pending["sysctl"] = check_sysctl(sysctl["path"], sysctl["content"], sysctl["value"],
                                         qemu_conf=sysctl["qemu_conf"], controllers=sysctl["cgroup_controllers"])
        for warning in rt_budget_warnings(sysctl["value"], bool(pending["sysctl"]), params["sys_root"],
                                          sysctl["qemu_conf"], sysctl["cgroup_controllers"]):
            module.warn(warning)
    extra["pending"] = {area: reasons for area, reasons in pending.items() if reasons}
    extra["summary"] = summary(dict(plan, **extra), params["narrow_machine"])
    return extra


# The facts' kinds that prove each tuning item.
TUNING_KINDS = (("workqueue", "workqueue_cpumask"), ("kthreads", "kthread_on_isolated"))


def check_tuning(module, options, realtime, housekeeping, proc_root="/proc", sys_root="/sys",
                 tuned_dir="/etc/tuned", tuned_profiles_dir="/usr/lib/tuned"):
    """host_tuning's plan for the realtime and housekeeping CPUs, and what the rest of the role takes from it."""
    settings = settings_from(options)
    tuned = detect_tuned(tuned_dir, tuned_profiles_dir, running_commands(proc_root)) \
        if options["respect_tuned"] else None
    owned = set((tuned or {}).get("items") or ())
    plan = plan_tuning(parse_cpulist(realtime), parse_cpulist(housekeeping), settings, proc_root, sys_root, tuned)
    note = tuned_note(tuned)
    for warning in ([note] if note else []) + plan.notes:
        module.warn(warning)
    mine = {key: value for key, value in settings.items() if key not in owned}
    return {"reasons": plan.reasons(), "reboot_reasons": plan.reboot, "left_to_tuned": plan.left_to_tuned,
            "tuned": tuned, "notes": plan.notes,
            "cmdline_params": tuning_cmdline_params(housekeeping, mine, sys_root),
            "verify_kinds": [kind for item, kind in TUNING_KINDS if mine.get(item)]}


def check_revert_tuning(module, options, realtime, housekeeping, online, proc_root="/proc", sys_root="/sys",
                        tuned_dir="/etc/tuned", tuned_profiles_dir="/usr/lib/tuned"):
    """host_tuning's own plan for state=absent: what its task in revert.yml changes, and what it leaves."""
    tuned = detect_tuned(tuned_dir, tuned_profiles_dir, running_commands(proc_root)) \
        if options["respect_tuned"] else None
    plan = plan_tuning(parse_cpulist(realtime), parse_cpulist(housekeeping), settings_from(options), proc_root,
                       sys_root, tuned, state="absent", online=parse_cpulist(online))
    note = tuned_note(tuned)
    for warning in ([note] if note else []) + plan.notes:
        module.warn(warning)
    # Only changes make the area pending: a reboot reason stays after the task ran, and a second run must be one call.
    return {"reasons": [change.words() for change in plan.changes], "reboot_reasons": plan.reboot,
            "left_to_tuned": plan.left_to_tuned, "notes": plan.notes, "housekeeping_cpus": housekeeping}


def check_revert(module, params, plan):
    """The way back: {area: [reasons]} against the host as it was before host_prep, and what the tasks need."""
    systemd = os.path.isdir(SYSTEMD_DIR)
    family, names = host_os(params)
    online = plan["online_cpus"]
    hook = params["hook"] or {}
    layout_path = hook.get("layout_path") or "/etc/libvirt/hooks/rtvirt-kvm-layout.json"
    partitions = revert_partition_names(plan["partitions"], params["partition_record"], layout_path)
    pending = {}
    reasons, refusals = check_revert_partitions(module, partitions,
                                                defined_guest_partitions(params["libvirt_config_dir"]), online)
    if refusals:
        raise RevertRefused("host_prep_state=absent refused, nothing changed: %s" % "; ".join(refusals))
    pending["partitions"] = reasons
    extra = dict(systemd=systemd, reboot_required=False, os_family=family, os=names, irq_cpus=online,
                 cmdline_params=cmdline_params(plan["realtime_cpus"], plan["housekeeping_cpus"],
                                               (params["cmdline"] or {}).get("isolcpus_flags") or ""))
    if params["tuning"] is not None:
        # host_tuning's boot-time parameters went into the same command line: they come off with host_prep's.
        extra["cmdline_params"].update(tuning_cmdline_params(plan["housekeeping_cpus"], settings_from(params["tuning"])))
    if params["cmdline"] is not None:
        pending["cmdline"], extra["reboot_required"] = check_cmdline(params["cmdline"]["path"], {},
                                                                     absent=sorted(extra["cmdline_params"]))
    files = []
    hook_kept = None
    if params["hook"] is not None:
        files = revert_files(hook["path"], layout_path, params["partition_record"], hook.get("legacy_path"))
        if hook.get("legacy_path") and legacy_hook(hook["legacy_path"]) == "foreign":
            hook_kept = "%s is not host_prep's: left as it is" % hook["legacy_path"]
        pending["hook"] = check_revert_hook(files)
    if params["irqs"] is not None:
        pending["irqs"] = check_revert_irqs(parse_cpulist(online), names["irqbalance_file"], plan["realtime_cpus"])
    current = None
    if params["sysctl"] is not None:
        pending["sysctl"], current = check_revert_sysctl(params["sysctl"]["path"])
    cmdline_reboot = extra["reboot_required"]
    tuning = None
    if params["tuning"] is not None:
        # The housekeeping CPUs the forward run gave host_tuning (check's irq_cpus): the kernel threads it moved
        # are the ones on exactly those CPUs.
        tuning_cpus = plan["machine_cpus"] if plan["emulator_mode"] == "dedicated" else plan["housekeeping_cpus"]
        tuning = check_revert_tuning(module, params["tuning"], plan["realtime_cpus"], tuning_cpus, online)
        pending["tuning"] = tuning.pop("reasons")
        extra["reboot_required"] = extra["reboot_required"] or bool(tuning["reboot_reasons"])
    extra["pending"] = {area: reasons for area, reasons in pending.items() if reasons}
    extra["revert"] = dict(
        partitions=partitions, machine_cpus=online, irq_cpus=online, files=files, hook_kept=hook_kept,
        irqbalance_line=banned_line(plan["realtime_cpus"]), cmdline_absent=sorted(extra["cmdline_params"]),
        sched_rt_runtime_us=current, kernel_default=KERNEL_RT_RUNTIME_US, tuning=tuning, cmdline_reboot=cmdline_reboot,
        kept=not_undone(systemd, params["libvirt"] is not None, os.path.exists(KVM_DEVICE) and not udev_manages_devices(),
                        (params["hook"] or {}).get("starter_path"), tuning))
    verdict_line = "; ".join("%s (%s)" % (area, "; ".join(r)) for area, r in extra["pending"].items())
    extra["summary"] = "taking host_prep off: %s" % (
        "differs from the host before host_prep: " + verdict_line if verdict_line
        else "nothing of host_prep's is left (partitions %s gone, /machine and IRQs on %s)"
        % (", ".join(partitions) or "none", online))
    return extra


def run(module):
    params = module.params
    try:
        plan, warnings = plan_host(params)
    except (RealtimeCpusError, CpuListError) as exc:
        raise ModuleFailure("realtime CPUs: %s" % exc) from None
    for warning in warnings:
        module.warn(warning)
    if params["state"] == "absent":
        try:
            plan.update(check_revert(module, params, plan))
        except RevertRefused as exc:
            raise ModuleFailure(str(exc), **plan) from None
        except (CgroupDiscoveryError, CpuListError, PartitionNameError, OSError) as exc:
            raise ModuleFailure("cannot read the host's state: %s" % exc, **plan) from None
        except OsNamesError as exc:
            raise ModuleFailure("os_names: %s" % exc, **plan) from None
        plan["verdict"] = {"ok": True, "msg": plan["summary"], "failures": []}
        return plan
    try:
        plan.update(check(module, params, plan))
    except (CgroupDiscoveryError, CpuListError, PartitionNameError, OSError) as exc:
        raise ModuleFailure("cannot read the host's state: %s" % exc, **plan) from None
    except OsNamesError as exc:
        raise ModuleFailure("os_names: %s" % exc, **plan) from None
    except TuningError as exc:
        raise ModuleFailure("tuning: %s" % exc, **plan) from None
    except TunableError as exc:
        raise ModuleFailure("partitions: %s" % exc, **plan) from None
    if params["verify"]:
        try:
            facts = gather(isolated_cpus=plan["realtime_cpus"],
                           realtime_partitions=[p["name"] for p in plan["partitions"]])
        except (IsolationError, CpuListError) as exc:
            raise ModuleFailure("cannot gather CPU isolation facts: %s" % exc, **plan) from None
        for warning in facts["warnings"]:
            module.warn(warning)
        plan["cpu_isolation"] = facts
        # The verify step's answer, small: a task that reads the whole facts costs the role more than this.
        plan["violations"] = host_prep_violations(facts["violations"], plan["verify_kinds"])
        plan["other_violations"] = len(facts["violations"]) - len(plan["violations"])
    # The role's line and verdict for a converged host, composed here: a task that builds them in Jinja costs a
    # converged run more than this whole function.
    plan["verdict"] = verdict(plan["summary"], plan.get("violations"), plan.get("other_violations", 0),
                              plan["verify_kinds"], check_mode=module.check_mode, verify=params["verify"])
    return plan


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    finish(module, run)


if __name__ == "__main__":
    main()
