#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: latency_check
short_description: Measure the latency of the realtime CPUs with oslat and judge it against a threshold
version_added: 0.1.0
description:
  - Runs C(oslat) (Debian's and RHEL's C(rt-tests)) on the realtime CPUs for O(duration_s) seconds, one busy-loop
    thread per CPU, the main thread on a housekeeping CPU, and reports per CPU the minimum, average, maximum and
    the 99th, 99.9th and 99.99th percentiles (from oslat's 1 us histogram, as the upper edge of the bucket, never
    above the maximum).
  - The realtime CPUs are O(cpus); without it the kernel's isolated CPUs (as M(rtvirt.kvm.cpu_isolation_facts)
    reports them); without those the automatic choice of P(rtvirt.kvm.host_prep#role) (the first
    O(housekeeping_cores_per_node) whole cores of every NUMA node stay housekeeping).
  - A CPU that a running guest's SCHED_FIFO or SCHED_RR vCPU may run on is not measured (a busy loop there would
    measure the guest's load, or be starved by it); RV(skipped_cpus) names the guest and vCPU. When no CPU is left to
    measure, the verdict fails.
  - The module does not fail on a latency above O(max_latency_us); it returns RV(passed) and RV(msg) (the role
    P(rtvirt.kvm.validate#role) writes the report, then fails). It fails when oslat cannot run or its output
    cannot be read.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  cpus:
    description: The realtime CPUs to measure, in the kernel's list syntax. Default, see above.
    type: str
  housekeeping_cores_per_node:
    description: For the automatic choice of the realtime CPUs, as P(rtvirt.kvm.host_prep#role)'s variable of that name.
    type: int
    default: 1
  duration_s:
    description: How long oslat runs, in seconds (1 to 86400).
    type: int
    default: 10
  max_latency_us:
    description: The largest maximum latency, in microseconds, a measured CPU may show (0 to 60000000, a minute).
    type: int
    default: 40
  rtprio:
    description:
      - SCHED_FIFO priority of oslat's threads (1-99); V(0) runs them at normal priority, oslat's own default.
      - With a priority and C(kernel.sched_rt_runtime_us=-1) the busy loops starve every other task of the measured
        CPUs for the whole run, per-CPU kernel threads included.
    type: int
    default: 0
  oslat:
    description: The oslat program.
    type: path
    default: /usr/bin/oslat
  proc_root:
    description: Where procfs is mounted. For tests against a fake tree.
    type: path
    default: /proc
  sys_root:
    description: Where sysfs is mounted. For tests against a fake tree.
    type: path
    default: /sys
  libvirt_run_dir:
    description: libvirt's QEMU run directory (running guests and their vCPU threads).
    type: path
    default: /run/libvirt/qemu
attributes:
  check_mode:
    support: full
    details:
      - Measures in check mode too (oslat changes nothing on the host).
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Timings of a virtual machine's CPUs include the hypervisor's preemptions; a host that is itself a guest can
    rarely pass a threshold meant for bare metal.
"""

EXAMPLES = r"""
- name: Measure the realtime CPUs for a minute, at most 40 us
  rtvirt.kvm.latency_check:
    duration_s: 60
    max_latency_us: 40
  register: latency

- name: Fail on a CPU above the threshold
  ansible.builtin.assert:
    that: latency.passed
    fail_msg: "{{ latency.msg }}"
"""

RETURN = r"""
passed:
  description: Whether every measured CPU stayed within O(max_latency_us) and at least one CPU was measured.
  returned: always
  type: bool
  sample: false
msg:
  description: The verdict, naming each CPU above the threshold with its maximum and the threshold, and each CPU skipped.
  returned: always
  type: str
  sample: "latency validation failed: CPU 1: oslat maximum 374 us exceeds max_latency_us 40 us (99.9th percentile 3 us, 4000000 samples)"
failures:
  description: One message per CPU above the threshold (or that nothing was measured).
  returned: always
  type: list
  elements: str
  sample: ["CPU 1: oslat maximum 374 us exceeds max_latency_us 40 us (99.9th percentile 3 us, 4000000 samples)"]
tool:
  description: The measuring program.
  returned: always
  type: str
  sample: oslat
cpus:
  description: The realtime CPUs.
  returned: always
  type: str
  sample: "2-3"
cpus_source:
  description: Where RV(cpus) came from, V(given), V(isolated) (the kernel's isolated CPUs) or V(automatic).
  returned: always
  type: str
  sample: isolated
measured_cpus:
  description: The CPUs measured (RV(cpus) without the skipped ones).
  returned: always
  type: str
  sample: "3"
skipped_cpus:
  description: CPUs not measured, each with C(cpu), C(owners) (C(guest), C(vcpu), C(tid), C(policy), C(rt_priority)) and C(reason).
  returned: always
  type: list
  elements: dict
  sample: [{"cpu": 2, "owners": [{"guest": "rt1", "vcpu": 0, "tid": 4250, "policy": "fifo", "rt_priority": 1}],
            "reason": "CPU 2 is not measured: it belongs to guest rt1 vCPU 0 (fifo, priority 1); measuring it would measure the guest"}]
max_latency_us:
  description: The threshold.
  returned: always
  type: int
  sample: 40
max_us:
  description: The largest maximum of all measured CPUs, in microseconds; null when nothing was measured.
  returned: always
  type: int
  sample: 12
p99_9_us:
  description: The 99.9th percentile over all measured CPUs' samples; null when nothing was measured.
  returned: always
  type: int
  sample: 2
p99_99_us:
  description: The 99.99th percentile over all measured CPUs' samples; null when nothing was measured.
  returned: always
  type: int
  sample: 4
per_cpu:
  description: Per measured CPU C(cpu), C(samples), C(min_us), C(avg_us), C(max_us), C(p99_us), C(p99_9_us), C(p99_99_us),
    C(duration_s) and C(passed).
  returned: always
  type: list
  elements: dict
  sample: [{"cpu": 3, "samples": 40000000, "min_us": 1, "avg_us": 1.03, "max_us": 12, "p99_us": 1, "p99_9_us": 2,
            "p99_99_us": 4, "duration_s": 10.0, "passed": true}]
report:
  description: Every other key above (RV(passed) and RV(msg) included) in one dict, what P(rtvirt.kvm.validate#role)
    writes as JSON.
  returned: always
  type: dict
  sample: {"passed": true, "tool": "oslat", "cpus": "3", "max_us": 12, "per_cpu": []}
command:
  description: The oslat command that ran; empty when nothing was measured.
  returned: always
  type: list
  elements: str
  sample: ["/usr/bin/oslat", "--cpu-list", "3", "--duration", "10", "--bucket-size", "1024", "--quiet",
           "--json=/tmp/x/oslat.json", "--cpu-main-thread", "0"]
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._latency import (
    LatencyError, oslat_argv, parse_oslat_json, plan, resolve_cpus, verdict)
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import RealtimeCpusError, choose
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import TopologyError, read_topology

MAX_DURATION_S = 86400
MAX_THRESHOLD_US = 60000000
# Where oslat writes its JSON (a fresh directory below it); None: the system temporary directory.
WORK_DIR = None


def get_argument_spec():
    return dict(
        cpus=dict(type="str"),
        housekeeping_cores_per_node=dict(type="int", default=1),
        duration_s=dict(type="int", default=10),
        max_latency_us=dict(type="int", default=40),
        rtprio=dict(type="int", default=0),
        oslat=dict(type="path", default="/usr/bin/oslat"),
        proc_root=dict(type="path", default="/proc"),
        sys_root=dict(type="path", default="/sys"),
        libvirt_run_dir=dict(type="path", default="/run/libvirt/qemu"),
    )


def _range_problem(params):
    for key, low, high in (("duration_s", 1, MAX_DURATION_S), ("max_latency_us", 0, MAX_THRESHOLD_US),
                           ("rtprio", 0, 99), ("housekeeping_cores_per_node", 1, 4096)):
        if not low <= params[key] <= high:
            return "%s=%s is out of range: it must be between %d and %d" % (key, params[key], low, high)
    return None


def run_oslat(module, argv, json_path):
    """Run oslat and return its JSON file's text (the seam the tests replace)."""
    rc, out, err = module.run_command(argv, environ_update=dict(LC_ALL="C"))
    if rc != 0:
        raise LatencyError("%s exited with %d: %s" % (argv[0], rc, (err or out).strip()[-800:]))
    try:
        with open(json_path) as handle:
            return handle.read()
    except OSError as exc:
        raise LatencyError("%s wrote no JSON to %s: %s" % (argv[0], json_path, exc)) from exc


def measure(module, params):
    facts = gather(proc_root=params["proc_root"], sys_root=params["sys_root"], run_root=params["libvirt_run_dir"],
                   gather_threads=True)
    online = parse_cpulist(facts["cpus"]["online"], what="online CPUs")
    given = parse_cpulist(params["cpus"], what="cpus") if params["cpus"] else None
    automatic = frozenset()
    if given is None and not facts["isolated_cpus"]:
        topology = read_topology(params["sys_root"])
        automatic, _hk = choose(topology.cpus, {n: topology.node_cpus(n) for n in topology.nodes},
                                {c: topology.siblings_of(c) for c in topology.cpus},
                                params["housekeeping_cores_per_node"])
    isolated = parse_cpulist(facts["isolated_cpus"], what="isolated CPUs") if facts["isolated_cpus"] else frozenset()
    cpus, source = resolve_cpus(given, isolated, automatic)
    if not cpus <= online:
        raise LatencyError("cpus %s: CPU(s) %s are not online (online: %s)" % (
            params["cpus"], ",".join(str(c) for c in sorted(cpus - online)), facts["cpus"]["online"]))
    todo = plan(cpus, online, facts["guests"])
    figures, argv = [], []
    if todo["measure"]:
        if not os.path.exists(params["oslat"]):
            raise LatencyError("oslat=%s does not exist: install rt-tests (the role rtvirt.kvm.validate does)"
                               % params["oslat"])
        workdir = tempfile.mkdtemp(prefix="rtvirt-oslat-", dir=WORK_DIR)
        try:
            json_path = os.path.join(workdir, "oslat.json")
            argv = oslat_argv(params["oslat"], todo["measure"], todo["main_cpu"], params["duration_s"], json_path,
                              rtprio=params["rtprio"])
            figures = parse_oslat_json(run_oslat(module, argv, json_path))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        unexpected = sorted(frozenset(f["cpu"] for f in figures) - todo["measure"])
        if unexpected:
            raise LatencyError("oslat reported CPU(s) %s it was not asked to measure" % unexpected)
    report = verdict(figures, params["max_latency_us"], cpus, todo["skipped"], source)
    report["command"] = argv
    return report, facts["warnings"]


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params) or _range_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    failure = None
    try:
        report, warnings = measure(module, module.params)
    except (LatencyError, IsolationError, CpuListError, RealtimeCpusError, TopologyError) as exc:
        failure = dict(msg="cannot validate latency: %s" % exc)
    if failure is not None:
        module.fail_json(**failure)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(changed=False, report=dict(report), **report)


if __name__ == "__main__":
    main()
