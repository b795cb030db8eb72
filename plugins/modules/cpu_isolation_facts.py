#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cpu_isolation_facts
short_description: Report CPU isolation state and everything that leaks onto isolated CPUs
version_added: 0.1.0
description:
  - Returns RV(ansible_facts.cpu_isolation) with the cgroup layout, the CPU topology, what the kernel
    command line asks (C(isolcpus=) with its flags, C(nohz_full=), C(rcu_nocbs=), C(irqaffinity=)), what the
    kernel reports (C(/sys/devices/system/cpu/isolated), C(/sys/devices/system/cpu/nohz_full), the cgroup v2
    root's C(cpuset.cpus.isolated) and v2 partitions), the housekeeping CPUs, C(kernel.sched_rt_runtime_us),
    the IRQ affinities, every libvirt guest's threads and a list of violations; also what the
    P(rtvirt.kvm.realtime_vm#role) role decides its steady state with (the pCPU topology, the persistent domain
    definitions and the state of the O(realtime_partitions)).
  - Everything is read from C(/proc), C(/sys), libvirt's run directory and its configuration directory. No libvirt connection is needed,
    so the facts also work while libvirtd is stopped.
  - "Isolated CPUs are the union of: C(isolcpus=) when it has the C(domain) flag or no flag, C(nohz_full=),
    C(/sys/devices/system/cpu/isolated), C(/sys/devices/system/cpu/nohz_full), the v2 root's
    C(cpuset.cpus.isolated), valid v2 C(isolated) partitions and O(isolated_cpus). Housekeeping CPUs are the
    online CPUs that are not isolated."
  - All other threads are read in one pass over C(/proc/*/task/*) (C(stat) and C(status) once each).
  - "Policy for threads: a userspace thread whose affinity lies entirely within isolated CPUs was placed
    there on purpose (a pinned vCPU, an RT application started with C(taskset) or in a cpuset). It is listed
    in RV(ansible_facts.cpu_isolation.threads_on_isolated) and is not a violation. A userspace thread allowed
    on isolated and housekeeping CPUs is a leak and is reported as C(thread_on_isolated)."
  - "Kernel threads bound to one CPU (ksoftirqd/N, migration/N, cpuhp/N, kworker/N:*) are expected.
    Unbound kernel threads that cannot be moved (C(PF_NO_SETAFFINITY): unbound kworkers and rescuers) follow
    the workqueue cpumask and are covered by the C(workqueue_cpumask) check. Other kernel threads allowed on
    isolated CPUs can be moved and are reported as C(kthread_on_isolated)."
  - "Cgroups: every cpuset cgroup under C(machine) or C(machine.slice) whose effective CPUs include isolated
    CPUs that it was not given is reported as C(cgroup_cpuset). A cgroup is given isolated CPUs when it is a
    declared O(realtime_partitions) entry or lies inside one, when it is a guest's vCPU, emulator or I/O
    thread cgroup and the domain XML pins that thread to them, or when it is an ancestor of such a cgroup
    (an ancestor must hold its descendants' CPUs)."
  - The module never changes anything.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
options:
  isolated_cpus:
    description:
      - CPUs to treat as isolated in addition to what the kernel reports, in the kernel's list syntax
        (for example C(2-5)).
      - Useful on a host booted without C(isolcpus=), for example to check a planned layout or in CI.
    type: str
  realtime_partitions:
    description:
      - libvirt partitions (C(<resource><partition>)) that the operator dedicated to realtime guests, for
        example C(/machine/rt). They map to C(machine/rt.partition) (no systemd) and
        C(machine.slice/machine-rt.slice) (systemd).
      - Such a partition, and everything inside it, may hold isolated CPUs without a violation.
    type: list
    elements: str
    default: []
  gather_threads:
    description:
      - Walk C(/proc/*/task/*). Without it the guests' threads, C(thread_on_isolated),
        C(kthread_on_isolated) and C(pinning_drift) are not reported and cgroups are judged without the
        guests' pinning.
    type: bool
    default: true
  proc_root:
    description:
      - Where procfs is mounted. For tests against a recorded tree.
    type: path
    default: /proc
  sys_root:
    description:
      - Where sysfs is mounted. Cgroup mountpoints below C(/sys) are read below this directory.
        For tests against a recorded tree.
    type: path
    default: /sys
  libvirt_run_dir:
    description:
      - libvirt's QEMU run directory, holding C(<name>.pid) and the live status XML C(<name>.xml)
        of each running guest.
    type: path
    default: /run/libvirt/qemu
  libvirt_config_dir:
    description:
      - libvirt's configuration directory, holding C(qemu.conf) and the persistent domain definitions
        C(qemu/<name>.xml) of C(qemu:///system).
    type: path
    default: /etc/libvirt
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
    details: The module only reads.
  facts:
    support: full
    details: Returns RV(ansible_facts.cpu_isolation).
  platform:
    platforms: posix
    details: Linux only.
notes:
  - Needs root to read every task's C(status) and the IRQ files; as another user tasks that cannot be
    read are skipped.
  - Whether an IRQ's affinity can be changed (managed and per-CPU IRQs refuse writes with EIO) is only known
    when debugfs is mounted at C(/sys/kernel/debug).
seealso:
  - name: Linux kernel parameters (isolcpus, nohz_full, rcu_nocbs, irqaffinity)
    description: The kernel's documentation of the boot parameters read here.
    link: https://docs.kernel.org/admin-guide/kernel-parameters.html
"""

EXAMPLES = r"""
- name: Gather CPU isolation facts
  rtvirt.kvm.cpu_isolation_facts:

- name: Check a planned layout on a host not yet booted with isolcpus
  rtvirt.kvm.cpu_isolation_facts:
    isolated_cpus: 2-5
    realtime_partitions:
      - /machine/rt

- name: Fail when anything leaks onto the isolated CPUs
  ansible.builtin.assert:
    that:
      - ansible_facts['cpu_isolation']['violations'] | length == 0
    fail_msg: "{{ ansible_facts['cpu_isolation']['violations'] | map(attribute='message') | list }}"

- name: Only the host-wide state, without the walk over every thread
  rtvirt.kvm.cpu_isolation_facts:
    gather_threads: false
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    cpu_isolation:
      description: The CPU isolation state of the host. CPU lists are in the kernel's normalized list syntax.
      returned: always
      type: dict
      contains:
        cgroup:
          description:
            - The cgroup layout (C(mode) v1, v2 or hybrid; C(mounts); C(cpuset_mountpoint); C(cpuset_version)),
              or null when no cgroup hierarchy is mounted.
          returned: always
          type: dict
          sample: {"mode": "hybrid", "mounts": [{"mountpoint": "/sys/fs/cgroup/cpuset", "version": 1,
                   "controllers": ["cpuset"], "root": "/", "name": ""}],
                   "cpuset_mountpoint": "/sys/fs/cgroup/cpuset", "cpuset_version": 1}
        cpus:
          description: C(online), C(offline), C(present) and C(possible) CPUs.
          returned: always
          type: dict
          sample: {"online": "0-7", "offline": "", "present": "0-7", "possible": "0-7"}
        numa_nodes:
          description: NUMA nodes with their CPUs (empty when the kernel has no C(/sys/devices/system/node)).
          returned: always
          type: list
          elements: dict
          sample: [{"node": 0, "cpus": "0-3"}, {"node": 1, "cpus": "4-7"}]
        smt_siblings:
          description: The distinct SMT sibling groups (C(thread_siblings_list)).
          returned: always
          type: list
          elements: str
          sample: ["0,4", "1,5", "2,6", "3,7"]
        smt_active:
          description: Whether SMT is active (C(/sys/devices/system/cpu/smt/active)); null if unknown.
          returned: always
          type: bool
          sample: true
        cmdline:
          description:
            - What C(/proc/cmdline) asks. C(isolcpus), C(nohz_full), C(irqaffinity) are null when absent;
              C(rcu_nocbs) is an empty string when given without a list. C(isolcpus_flags) lists the known flags.
          returned: always
          type: dict
          sample: {"isolcpus": "2-5", "isolcpus_flags": ["nohz", "domain", "managed_irq"], "nohz_full": "2-5",
                   "rcu_nocbs": "2-5", "irqaffinity": "0-1,6-7"}
        kernel:
          description:
            - What the kernel reports. C(isolated) and C(nohz_full) from C(/sys/devices/system/cpu) (null when the
              file is absent), C(cpuset_cpus_isolated) from the v2 root (Linux 6.8+, null when absent), and
              C(partitions), every v2 cgroup whose C(cpuset.cpus.partition) is root or isolated, with C(path),
              C(mode), C(valid), C(state) (the file's text, with the kernel's reason when invalid) and C(cpus).
            - C(preempt_rt) is true on a PREEMPT_RT kernel (C(/sys/kernel/realtime) reads C(1)), false where the
              file is missing or says otherwise.
          returned: always
          type: dict
          sample: {"isolated": "2-5", "nohz_full": "2-5", "cpuset_cpus_isolated": null, "partitions": [],
                   "preempt_rt": false}
        isolated_cpus:
          description: The isolated CPUs (the union described above).
          returned: always
          type: str
          sample: "2-5"
        isolated_sources:
          description: Each non-empty source of isolated CPUs with its CPUs (C(isolcpus), C(nohz_full),
            C(kernel_isolated), C(kernel_nohz_full), C(cpuset_cpus_isolated), C(isolated_partitions), C(option)).
          returned: always
          type: dict
          sample: {"isolcpus": "2-5", "kernel_isolated": "2-5", "option": "2-5"}
        housekeeping_cpus:
          description: Online CPUs that are not isolated.
          returned: always
          type: str
          sample: "0-1,6-7"
        sched_rt_runtime_us:
          description: C(kernel.sched_rt_runtime_us); -1 disables RT throttling. Null if unreadable.
          returned: always
          type: int
          sample: -1
        workqueue_cpumask:
          description: CPUs unbound workqueues may use (C(/sys/devices/virtual/workqueue/cpumask)); null if absent.
          returned: always
          type: str
          sample: "0-1,6-7"
        irq_default_affinity:
          description: C(/proc/irq/default_smp_affinity) as a CPU list.
          returned: always
          type: str
          sample: "0-1,6-7"
        irqs:
          description:
            - Every IRQ in C(/proc/irq) with C(irq), C(name) (its actions), C(chip), C(affinity)
              (C(smp_affinity_list)), C(effective) (C(effective_affinity_list)), C(in_use) (a handler is
              registered) and C(changeable) (false for managed or per-CPU IRQs, null when debugfs cannot tell).
          returned: always
          type: list
          elements: dict
          sample: [{"irq": 24, "name": "ahci[0000:00:17.0]", "chip": "IR-PCI-MSI", "affinity": "0-1",
                    "effective": "0", "in_use": true, "changeable": null}]
        guests:
          description:
            - "Every running libvirt guest found through C(<libvirt_run_dir>/*.pid), with C(name), C(pid), C(id),
              C(partition), C(pinning) (from the status XML: C(vcpus) and C(iothreads) by number, C(emulator);
              null values are unpinned), C(threads) and C(iothreads)."
            - C(iothreads) lists the guest's I/O threads, each with C(id), C(tid), C(cgroup) (libvirt's C(iothreadN)
              cgroup), C(cpuset), C(affinity) and C(pinning); a C(pinning_drift) violation names one whose affinity
              or cgroup differs from its C(<iothreadpin>)."
            - Each thread has C(tid), C(comm), C(role) (vcpu, iothread, emulator, or kernel_worker for tasks the kernel adds to the QEMU
              process such as vhost and kvm-nx-lpage-recovery, which the domain XML does not pin), C(id) (vCPU or I/O thread
              number), C(cgroup) (its cpuset cgroup), C(cpuset) (the CPUs in that cgroup's C(cpuset.cpus); the
              effective CPUs when a v2 file is empty), C(affinity) (C(Cpus_allowed_list)), C(pinning) (what the
              XML asks), C(policy) (other, fifo, rr, batch, idle, deadline), C(rt_priority), C(last_cpu), C(state).
          returned: always
          type: list
          elements: dict
          sample: [{"name": "rt1", "pid": 4242, "id": 3, "partition": "/machine",
                    "pinning": {"vcpus": {"0": "2"}, "emulator": "0-1", "iothreads": {}},
                    "threads": [{"tid": 4250, "comm": "CPU 0/KVM", "role": "vcpu", "id": 0,
                                 "cgroup": "/machine/qemu-3-rt1.libvirt-qemu/vcpu0", "cpuset": "2",
                                 "affinity": "2", "pinning": "2", "policy": "fifo", "rt_priority": 1,
                                 "last_cpu": 2, "state": "R"}],
                    "iothreads": [{"id": 1, "tid": 4249, "cgroup": "/machine/qemu-3-rt1.libvirt-qemu/iothread1",
                                   "cpuset": "0-1", "affinity": "0-1", "pinning": "0-1"}]}]
        threads_scanned:
          description: How many tasks the pass over C(/proc) read; null with O(gather_threads=false).
          returned: always
          type: int
          sample: 10105
        threads_on_isolated:
          description:
            - Userspace processes with threads placed entirely on isolated CPUs (deliberate placements, not
              violations), with C(pid), C(comm), C(tids) (at most 64), C(thread_count) and C(cpus).
          returned: always
          type: list
          elements: dict
          sample: [{"pid": 5120, "comm": "cyclictest", "tids": [5120, 5121], "thread_count": 2, "cpus": "3"}]
        violations:
          description:
            - What leaks onto isolated CPUs. Each has C(kind), C(offender) and C(message), plus keys of its kind
              (C(cpus) is the isolated CPUs concerned).
            - "Kinds: C(thread_on_isolated) (a userspace process with threads allowed on isolated and housekeeping
              CPUs; C(pid), C(comm), C(tids) (at most 64), C(thread_count), C(affinity)), C(kthread_on_isolated)
              (a movable kernel thread; C(pid), C(comm), C(affinity)), C(irq_affinity) (C(irq), C(affinity),
              C(effective), C(changeable), C(note)), C(irq_default_affinity), C(workqueue_cpumask),
              C(cgroup_cpuset) (C(path), C(cpuset)), C(pinning_drift) (a guest thread whose domain XML pinning,
              cgroup C(cpuset.cpus) and real affinity differ; C(guest), C(role), C(id), C(tid), C(xml),
              C(cgroup), C(cpuset), C(affinity)), C(guest_thread_on_isolated) (a guest thread other than a vCPU,
              such as KVM's C(kvm-nx-lpage-recovery) worker in a vCPU's cgroup, allowed on isolated CPUs only, with
              the setting that removes it in the message; C(guest), C(role), C(id), C(tid), C(comm), C(cpus),
              C(cgroup)) and C(cmdline_mismatch) (the command line asks what the kernel does not report;
              C(requested), C(reported))."
          returned: always
          type: list
          elements: dict
          sample: [{"kind": "pinning_drift", "offender": "guest rt1 vcpu 1 (tid 4251, CPU 1/KVM)",
                    "message": "guest rt1 vcpu 1: the domain XML pins 3, the cgroup
                                /machine/qemu-3-rt1.libvirt-qemu/vcpu1 holds 3-4, the thread may run on 3-4",
                    "guest": "rt1", "role": "vcpu", "id": 1, "tid": 4251, "xml": "3",
                    "cgroup": "/machine/qemu-3-rt1.libvirt-qemu/vcpu1", "cpuset": "3-4", "affinity": "3-4"}]
        topology:
          description:
            - The CPU topology M(rtvirt.kvm.pcpu_allocation) plans with, as its C(Topology.as_dict()) writes it
              (CPU numbers as strings). Null when it cannot be read.
          returned: always
          type: dict
          sample: {"node_of": {"0": 0, "1": 0}, "siblings": {"0": "0", "1": "1"}, "core_id": {"0": 0, "1": 1},
                   "package_id": {"0": 0, "1": 0}}
        domains:
          description:
            - The persistent definition of every libvirt domain of C(qemu:///system), C(name) and C(xml), read from
              C(<libvirt_config_dir>/qemu/<name>.xml) (no libvirt connection). Empty when the directory does not
              exist; null when it or a file in it cannot be read or parsed.
            - C(xml) holds only the parts the P(rtvirt.kvm.realtime_vm#role) role compares and M(rtvirt.kvm.pcpu_allocation)
              reads (C(name), C(uuid), C(memory), C(currentMemory), C(vcpu), C(vcpus), C(cputune), C(numatune),
              C(resource) and the C(<rtvirt:pcpu>) metadata element); devices, with their passwords, stay out.
          returned: always
          type: list
          elements: dict
          sample: [{"name": "rt1", "xml": "<domain type='kvm'>...</domain>"}]
        realtime_partitions:
          description:
            - Each O(realtime_partitions) entry as it stands in every cgroup hierarchy libvirt uses on this host, with
              C(name), C(cgroup_path), C(cpus) and C(mems) (its C(cpuset.cpus) and C(cpuset.mems) as written) and
              C(missing), what M(rtvirt.kvm.libvirt_partition) would still create or enable (a level's directory,
              a v2 controller not enabled above it, a v1 cpuset level without CPUs or memory nodes), or what makes it
              refuse (a cgroup below the partition holding CPUs outside the partition's).
            - On systemd hosts C(missing) says that the slice is not read.
          returned: always
          type: list
          elements: dict
          sample: [{"name": "/rt", "cgroup_path": "rt.partition", "cpus": "0-1", "mems": "0", "missing": []}]
        warnings:
          description: What could not be read or parsed (also issued as module warnings).
          returned: always
          type: list
          elements: str
          sample: ["guest old: pid 999 from old.pid is not running (stale pid file?)"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError


def get_argument_spec():
    return dict(
        isolated_cpus=dict(type="str"),
        realtime_partitions=dict(type="list", elements="str", default=[]),
        gather_threads=dict(type="bool", default=True),
        proc_root=dict(type="path", default="/proc"),
        sys_root=dict(type="path", default="/sys"),
        libvirt_run_dir=dict(type="path", default="/run/libvirt/qemu"),
        libvirt_config_dir=dict(type="path", default="/etc/libvirt"),
    )


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    params = module.params
    failure = None
    try:
        facts = gather(
            proc_root=params["proc_root"],
            sys_root=params["sys_root"],
            run_root=params["libvirt_run_dir"],
            isolated_cpus=params["isolated_cpus"],
            realtime_partitions=params["realtime_partitions"],
            gather_threads=params["gather_threads"],
            libvirt_config_dir=params["libvirt_config_dir"],
        )
    except (IsolationError, CpuListError) as exc:
        failure = dict(msg="cannot gather CPU isolation facts: %s" % exc)
    if failure is not None:
        module.fail_json(**failure)
    for warning in facts["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"cpu_isolation": facts})


if __name__ == "__main__":
    main()
