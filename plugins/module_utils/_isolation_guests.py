# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt guests of the isolation facts: running guests with their status XML, the persistent
definitions, what the domain XML pins each QEMU thread to, and where the threads drift from it.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError, format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_parse import PF_USER_WORKER, POLICIES, parse_domain_status
from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation_read import format_cpus, list_dir, read_text

_VCPU_COMM = re.compile(r"^CPU (\d+)/[A-Za-z]+$")
_IOTHREAD_COMM = re.compile(r"^IO iothread(\d+)$")


def read_guests(ctx, run_root, proc_root):
    """The running libvirt guests: ``<name>.pid`` files with their status XML."""
    guests = []
    for entry in sorted(list_dir(run_root)):
        if not entry.endswith(".pid"):
            continue
        name = entry[:-len(".pid")]
        if name == "driver":
            continue  # libvirtd's own lock file for the QEMU driver, not a guest
        pid_text = read_text(os.path.join(run_root, entry))
        if not pid_text or not pid_text.isdigit():
            ctx.warnings.append("guest %s: %s/%s does not hold a pid" % (name, run_root, entry))
            continue
        pid = int(pid_text)
        xml_path = os.path.join(run_root, name + ".xml")
        domain = None
        xml_text = read_text(xml_path)
        if xml_text is None:
            ctx.warnings.append("guest %s: no status XML at %s; pinning from the XML unknown" % (name, xml_path))
        else:
            try:
                domain = parse_domain_status(xml_text)
            except (ET.ParseError, ValueError, CpuListError) as exc:
                ctx.warnings.append("guest %s: cannot parse %s: %s" % (name, xml_path, exc))
        if not os.path.isdir(os.path.join(proc_root, str(pid))):
            ctx.warnings.append("guest %s: pid %d from %s is not running (stale pid file?)" % (name, pid, entry))
            continue
        guests.append({"name": name, "pid": pid, "domain": domain})
    return guests


# The parts of a persistent definition the realtime_vm role compares (_domain_xml.owned_view) and the pCPU planner
# reads (_pcpu.guest_pins_from_domain_xml); the rest (devices, with graphics passwords and the like) stays out of
# the facts.
_DEFINITION_PARTS = ("name", "uuid", "memory", "currentMemory", "vcpu", "vcpus", "iothreads", "iothreadids", "cputune",
                     "numatune", "resource")
_PCPU_METADATA = "{urn:rtvirt:kvm:pcpu:1}pcpu"


def definition_parts(xml_text):
    """A domain XML cut down to the parts in _DEFINITION_PARTS and its ``<rtvirt:pcpu>`` metadata element.

    Raise ``ET.ParseError`` when the text is not XML.
    """
    root = ET.fromstring(xml_text)
    kept = ET.Element(root.tag, {k: v for k, v in root.attrib.items() if k == "type"})
    for child in root:
        if child.tag in _DEFINITION_PARTS:
            kept.append(child)
        elif child.tag == "metadata":
            pcpu = child.find(_PCPU_METADATA)
            if pcpu is not None:
                ET.SubElement(kept, "metadata").append(pcpu)
    return ET.tostring(kept, encoding="unicode")


def read_domain_definitions(config_dir):
    """libvirt's persistent domain definitions, ``[{"name", "xml"}]`` sorted by name, read from the files
    libvirtd keeps them in (``<config_dir>/<name>.xml``, ``/etc/libvirt/qemu`` for qemu:///system); ``xml``
    holds only the parts :func:`definition_parts` keeps.

    A missing directory means no domain is defined (``[]``); an unreadable one, or a file that cannot be read
    or parsed, gives None (unknown).
    """
    try:
        entries = os.listdir(config_dir)
    except FileNotFoundError:
        return []
    except OSError:
        return None
    domains = []
    for entry in sorted(entries):
        if not entry.endswith(".xml"):
            continue
        path = os.path.join(config_dir, entry)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                text = definition_parts(handle.read())
        except (OSError, UnicodeDecodeError, ET.ParseError):
            return None
        domains.append({"name": entry[:-len(".xml")], "xml": text})
    return domains


def expected_pinning(domain, role, number=None):
    """The CPUs the domain XML pins a thread to, or None when the XML leaves it unpinned."""
    if role == "vcpu":
        pin = domain["vcpupin"].get(number)
    elif role == "iothread":
        pin = domain["iothreadpin"].get(number)
    else:
        pin = domain["emulatorpin"]
    return pin if pin is not None else domain["default_cpuset"]


def classify_qemu_thread(comm, tid, vcpu_tids):
    """Return ``(role, number)``: ``("vcpu", N)``, ``("iothread", N)`` or ``("emulator", None)``.

    The status XML's ``<vcpus><vcpu id pid>`` wins; otherwise QEMU's thread names
    ``CPU N/KVM`` (``/TCG``) and ``IO iothreadN`` decide.
    """
    for vcpu, vcpu_tid in vcpu_tids.items():
        if vcpu_tid == tid:
            return "vcpu", vcpu
    match = _VCPU_COMM.match(comm)
    if match:
        return "vcpu", int(match.group(1))
    match = _IOTHREAD_COMM.match(comm)
    if match:
        return "iothread", int(match.group(1))
    return "emulator", None


def idle_workers(sys_root):
    """Names (prefixes) of guest kernel workers that sleep for good on this host: kvm-nx-lpage-recovery while KVM
    does not split huge pages (kvm.nx_huge_pages N, or never) or recovers none (nx_huge_pages_recovery_ratio 0);
    its recovery period is then unbounded. host_prep's tuning sets the first, so a converged host shows none."""
    params = os.path.join(sys_root, "module", "kvm", "parameters")
    nx = read_text(os.path.join(params, "nx_huge_pages"))
    ratio = read_text(os.path.join(params, "nx_huge_pages_recovery_ratio"))
    return ("kvm-nx-lpage",) if nx in ("N", "never") or ratio == "0" else ()


def worker_fix(role, comm):
    """The setting that takes a guest's non-vCPU thread off the realtime CPUs, in words."""
    if comm.startswith("kvm-nx-lpage"):
        return ("KVM starts it from the first vCPU, in that vCPU's cgroup: kvm.nx_huge_pages=N (or "
                "kvm.nx_huge_pages_recovery_ratio=0) leaves it idle there, kvm.nx_huge_pages=never on the kernel "
                "command line (6.3+) keeps KVM from starting it; rtvirt.kvm.host_prep's host_prep_kvm_params set it")
    if role == "kernel_worker":
        return ("a kernel worker of the guest (vhost, ...) runs in the cgroup of the thread that created it: pin the "
                "emulator (<emulatorpin>, realtime_domain's emulator_cpus) on housekeeping CPUs before it starts")
    return ("pin it on housekeeping CPUs (<%spin>, realtime_domain's emulator_cpus)"
            % ("iothread" if role == "iothread" else "emulator"))


def guest_facts(guest, scan, cgroups, isolated, violations, given, idle=()):
    """One guest's facts with its threads; a ``pinning_drift`` violation per thread that differs from the domain
    XML, and in ``given`` the isolated CPUs the XML gives each thread's cgroup."""
    domain = guest["domain"]
    name = guest["name"]
    facts = {
        "name": name,
        "pid": guest["pid"],
        "id": domain["id"] if domain else None,
        "partition": (domain["partition"] or "/machine") if domain else None,
        "pinning": None,
        "threads": [],
        "iothreads": [],
    }
    if domain:
        facts["pinning"] = {
            "vcpus": {str(v): format_cpus(expected_pinning(domain, "vcpu", v)) for v in range(domain["vcpus"])},
            "emulator": format_cpus(expected_pinning(domain, "emulator")),
            "iothreads": {str(i): format_cpus(expected_pinning(domain, "iothread", i)) for i in domain["iothreads"]},
        }
    if scan is None:
        return facts
    vcpu_tids = domain["vcpu_tids"] if domain else {}
    for tid, comm, state, last_cpu, rt_priority, policy, affinity_text, flags in sorted(
            scan.guest_tasks.get(guest["pid"], ())):
        if flags & PF_USER_WORKER:
            role, number = "kernel_worker", None
        else:
            role, number = classify_qemu_thread(comm, tid, vcpu_tids)
        path = cgroups.path_of(guest["pid"], tid)
        cpuset_text, cpuset = (None, None)
        if path is not None:
            cpuset_text, cpuset = cgroups.files(path)
        affinity = parse_cpulist(affinity_text)
        pin = expected_pinning(domain, role, number) if domain and role != "kernel_worker" else None
        facts["threads"].append({
            "tid": tid,
            "comm": comm,
            "role": role,
            "id": number,
            "cgroup": path,
            "cpuset": format_cpus(cpuset),
            "affinity": format_cpulist(affinity),
            "pinning": format_cpus(pin),
            "policy": POLICIES.get(policy, str(policy)),
            "rt_priority": rt_priority,
            "last_cpu": last_cpu,
            "state": state,
        })
        if role == "iothread":
            # Beside the threads, for the operator who asks "where do my I/O threads run": libvirt's iothreadN cgroup.
            facts["iothreads"].append({"id": number, "tid": tid, "cgroup": path, "cpuset": format_cpus(cpuset),
                                       "affinity": format_cpulist(affinity), "pinning": format_cpus(pin)})
        # Allowed on housekeeping CPUs too, the thread is a thread_on_isolated leak already; only here, inside the
        # isolated CPUs, does it look placed on purpose.
        if role != "vcpu" and affinity and affinity <= isolated and not (role == "kernel_worker" and comm.startswith(
                tuple(idle))):
            label = "%s %s" % (role.replace("_", " "), number) if number is not None else role.replace("_", " ")
            violations.append({
                "kind": "guest_thread_on_isolated",
                "offender": "guest %s %s (tid %d, %s)" % (name, label, tid, comm),
                "message": "guest %s: %s thread %d (%s, policy %s, priority %d) may run on isolated CPUs %s (cgroup %s); %s"
                           % (name, label, tid, comm, POLICIES.get(policy, str(policy)), rt_priority,
                              format_cpulist(affinity & isolated), path, worker_fix(role, comm)),
                "guest": name,
                "role": role,
                "id": number,
                "tid": tid,
                "comm": comm,
                "cpus": format_cpulist(affinity & isolated),
                "cgroup": path,
            })
        if pin is None:
            continue
        if path is not None and pin & isolated:
            given[path] = given.get(path, frozenset()) | (pin & isolated)
        if pin != affinity or (cpuset is not None and cpuset != pin):
            label = "vcpu %d" % number if role == "vcpu" else (
                "iothread %d" % number if role == "iothread" else "emulator")
            violations.append({
                "kind": "pinning_drift",
                "offender": "guest %s %s (tid %d, %s)" % (name, label, tid, comm),
                "message": "guest %s %s: the domain XML pins %s, the cgroup %s holds %s, the thread may run on %s"
                           % (name, label, format_cpulist(pin), path, format_cpus(cpuset), format_cpulist(affinity)),
                "guest": name,
                "role": role,
                "id": number,
                "tid": tid,
                "xml": format_cpulist(pin),
                "cgroup": path,
                "cpuset": format_cpus(cpuset),
                "affinity": format_cpulist(affinity),
            })
    return facts
