#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: remediation_findings
short_description: Find what is broken in a libvirt host's cgroup layout and CPU isolation
version_added: 0.1.0
description:
  - Reads the cgroup hierarchies libvirt uses, the defined and running guests (C(virsh)) and the violations of
    M(rtvirt.kvm.cpu_isolation_facts), and returns one finding per problem with the repair the
    P(rtvirt.kvm.remediation#role) role applies.
  - "Kinds: C(empty_cpuset) (empty cpus or mems below C(machine)), C(missing_partition) (a partition a defined
    guest names is missing in a hierarchy), C(leftover_guest_cgroup) (a C(*.libvirt-qemu) cgroup of a guest that
    does not run), C(cgroup_on_isolated), C(pinning_drift), C(irq_affinity), C(irq_default_affinity), and
    report-only C(thread_on_isolated), C(kthread_on_isolated), C(workqueue_cpumask), C(guest_thread_on_isolated)."
  - The module never changes anything.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  violations:
    description:
      - The C(violations) of M(rtvirt.kvm.cpu_isolation_facts).
      - Not together with O(gather_isolation), which gathers them.
    type: list
    elements: dict
    default: []
  gather_isolation:
    description:
      - Gather the CPU isolation facts in this call (what M(rtvirt.kvm.cpu_isolation_facts) returns, with its
        O(isolated_cpus) and O(realtime_partitions)), use their C(violations) and return them as
        RV(cpu_isolation) (a result, not facts). One module call instead of two.
    type: bool
    default: false
  isolated_cpus:
    description:
      - With O(gather_isolation), CPUs to treat as isolated besides what the kernel reports (the
        C(isolated_cpus) option of M(rtvirt.kvm.cpu_isolation_facts)); ignored without it.
    type: str
  kinds:
    description: Only findings of these kinds (default all).
    type: list
    elements: str
  realtime_partitions:
    description: Partitions dedicated to realtime guests (an empty cpuset inside one is refilled from its parent).
    type: list
    elements: str
    default: []
  targets:
    description: Only findings whose target matches this regular expression (C(re.search)); default all.
    type: str
  previous:
    description:
      - The RV(findings) of a run before a repair. When given, RV(report) lists them with C(fixed) true for those that
        had a fix and are gone now.
    type: list
    elements: dict
  uri:
    description:
      - libvirt connection URI. The guests are read through libvirt-python when the module's interpreter has
        it (one connection), else through C(virsh).
    type: str
    default: qemu:///system
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Isolation facts
  rtvirt.kvm.cpu_isolation_facts:
    realtime_partitions: [/machine/rt]

- name: Findings
  rtvirt.kvm.remediation_findings:
    violations: "{{ ansible_facts['cpu_isolation']['violations'] }}"
  register: found

- name: Isolation facts and findings in one call
  rtvirt.kvm.remediation_findings:
    gather_isolation: true
    realtime_partitions: [/machine/rt]
  register: found
"""

RETURN = r"""
cpu_isolation:
  description: With O(gather_isolation), the C(cpu_isolation) fact as M(rtvirt.kvm.cpu_isolation_facts) returns it.
  returned: when O(gather_isolation) is true
  type: dict
  sample: {isolated_cpus: "2-7", housekeeping_cpus: "0-1", violations: []}
findings:
  description: Every problem, with C(kind), C(target), C(message) and C(fix) (null when it is reported only).
  returned: always
  type: list
  elements: dict
  sample: [{kind: empty_cpuset, target: machine/rt.partition, message: "cpuset machine/rt.partition has empty cpus",
            fix: {module: cgroup_cpuset, path: machine/rt.partition}}]
hierarchies:
  description: The hierarchies looked at, by name, with their mountpoint.
  returned: always
  type: dict
  sample: {cpuset: /sys/fs/cgroup/cpuset, unified: /sys/fs/cgroup/unified}
partitions:
  description: Partitions named by defined guests, with the guests.
  returned: always
  type: dict
  sample: {/machine/rt: [rt1]}
report:
  description: The findings (or O(previous)) as C(kind), C(target), C(message), C(fixed).
  returned: always
  type: list
  elements: dict
  sample: [{kind: empty_cpuset, target: machine/rt.partition, message: "...", fixed: true}]
running:
  description: Running guests.
  returned: always
  type: list
  elements: str
  sample: [rt1]
"""

import os
import re
import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import CgroupDiscoveryError, discover_layout
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import IsolationError
from ansible_collections.rtvirt.kvm.plugins.module_utils._libvirt import LibvirtError, import_libvirt
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    PartitionNameError,
    libvirt_hierarchies,
    parse_name,
    parse_proc_cgroups,
    parse_qemu_conf_controllers,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._failure import ModuleFailure, finish
from ansible_collections.rtvirt.kvm.plugins.module_utils._remediation import entries_problem, findings, report


def get_argument_spec():
    return dict(violations=dict(type="list", elements="dict", default=[]), kinds=dict(type="list", elements="str"), targets=dict(type="str"),
                realtime_partitions=dict(type="list", elements="str", default=[]),
                gather_isolation=dict(type="bool", default=False), isolated_cpus=dict(type="str"),
                previous=dict(type="list", elements="dict"), uri=dict(type="str", default="qemu:///system"))


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _walk(root, tops):
    """Every cgroup below ``tops`` (machine and the partitions' top directories), relative to ``root``."""
    result = set()
    for name in tops:
        top = os.path.join(root, name)
        if not os.path.isdir(top):
            continue
        for current, _dirs, _files in os.walk(top):
            result.add(os.path.relpath(current, root))
    return result


def _virsh(module, *args, **kwargs):
    rc, out, err = module.run_command(["virsh", "-c", module.params["uri"]] + list(args), environ_update={"LC_ALL": "C"})
    if rc != 0 and kwargs.get("optional"):
        return None
    if rc != 0:
        raise ModuleFailure("virsh %s failed (rc %d): %s" % (" ".join(args), rc, err.strip()))
    return out


def _domains_libvirt(module):
    """(running names, {defined name: inactive XML}) over one libvirt connection; None without libvirt-python."""
    try:
        libvirt = import_libvirt()
    except LibvirtError:
        return None
    try:
        conn = libvirt.open(module.params["uri"])
    except libvirt.libvirtError as exc:
        raise ModuleFailure("cannot connect to %s: %s" % (module.params["uri"], exc)) from None
    try:
        running = set()
        xmls = {}
        for domain in conn.listAllDomains(0):
            try:
                name = domain.name()
                if domain.isActive():
                    running.add(name)
                xmls[name] = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since it was listed
                raise
        return running, xmls
    except libvirt.libvirtError as exc:
        raise ModuleFailure("reading the guests of %s failed: %s" % (module.params["uri"], exc)) from None
    finally:
        conn.close()


def _domains_virsh(module):
    """The same as _domains_libvirt through virsh: one process per defined guest."""
    running = set(_virsh(module, "list", "--name").split())
    xmls = {}
    for name in _virsh(module, "list", "--all", "--name").split():
        xml = _virsh(module, "dumpxml", "--inactive", name, optional=True)
        if xml is not None:  # else undefined since it was listed
            xmls[name] = xml
    return running, xmls


def run(module):
    if module.params["gather_isolation"] and module.params["violations"]:
        raise ModuleFailure("violations and gather_isolation are mutually exclusive: with gather_isolation the "
                            "module gathers the violations itself")
    problem = entries_problem(module.params["violations"], module.params["previous"])
    if problem is not None:
        raise ModuleFailure(problem)
    targets = None
    if module.params["targets"]:
        try:
            targets = re.compile(module.params["targets"])
        except re.error as exc:
            raise ModuleFailure("targets %r is not a regular expression: %s" % (module.params["targets"], exc)) from None
    facts = None
    if module.params["gather_isolation"]:
        try:
            facts = gather(isolated_cpus=module.params["isolated_cpus"],
                           realtime_partitions=module.params["realtime_partitions"])
        except (IsolationError, CpuListError) as exc:
            raise ModuleFailure("cannot gather CPU isolation facts: %s" % exc) from None
        for warning in facts["warnings"]:
            module.warn(warning)
        module.params["violations"] = facts["violations"]
    try:
        layout = discover_layout()
    except CgroupDiscoveryError as exc:
        raise ModuleFailure(str(exc)) from None
    conf = _read("/etc/libvirt/qemu.conf")
    hierarchies = libvirt_hierarchies(layout.mounts, parse_qemu_conf_controllers(conf) if conf else None)
    subsystems = parse_proc_cgroups(_read("/proc/cgroups") or "")
    domains = _domains_libvirt(module)
    if domains is None:
        domains = _domains_virsh(module)
    running, xmls = domains
    partitions, dirs = {}, {}
    for name in sorted(xmls):
        element = ET.fromstring(xmls[name]).find("./resource/partition")
        if element is None or not (element.text or "").strip() or element.text.strip() == "/machine":
            continue
        try:
            pname = parse_name(element.text.strip(), subsystems)
        except PartitionNameError as exc:
            module.warn("guest %s: %s" % (name, exc))
            continue
        partitions.setdefault(pname.name, []).append(name)
        dirs[pname.name] = pname.cgroup_path
    kinds = module.params["kinds"]
    realtime_dirs = []
    for name in module.params["realtime_partitions"]:
        try:
            realtime_dirs.append(parse_name(name, subsystems).cgroup_path)
        except PartitionNameError as exc:
            raise ModuleFailure("realtime_partitions: %s" % exc) from None
    # libvirt's /machine and the top level of every partition in use or planned (/rt lives beside /machine).
    tops = sorted({"machine"} | {d.split("/")[0] for d in list(dirs.values()) + realtime_dirs})
    present = {h.key: _walk(h.mountpoint, tops) for h in hierarchies if not h.optional}
    cpuset = {}
    cpuset_h = next((h for h in hierarchies if "cpuset" in h.controllers and h.version == 1), None)
    if cpuset_h is not None:
        # cpuset is never optional, so its tree was walked above.
        for path in present.get(cpuset_h.key) or _walk(cpuset_h.mountpoint, tops):
            full = os.path.join(cpuset_h.mountpoint, path)
            cpuset[path] = {"cpus": _read(os.path.join(full, "cpuset.cpus")) or "",
                            "mems": _read(os.path.join(full, "cpuset.mems")) or ""}
    result = [f for f in findings(cpuset, present, partitions, dirs, running, module.params["violations"],
                                  realtime_dirs)
              if (kinds is None or f["kind"] in kinds)
              and (targets is None or targets.search(f["target"]))]
    previous = module.params["previous"]
    summary = report(result, None) if previous is None else report(previous, result)
    extra = {} if facts is None else {"cpu_isolation": facts}
    return dict(changed=False, findings=result, report=summary, hierarchies={h.key: h.mountpoint for h in hierarchies},
                partitions=partitions, running=sorted(running), **extra)


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    finish(module, run)


if __name__ == "__main__":
    main()
