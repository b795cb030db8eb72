#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: realtime_domain
short_description: Define, start, stop and remove a pinned SCHED_FIFO libvirt/KVM guest
version_added: "0.1.0"
description:
  - Writes the realtime parts of a libvirt domain definition and leaves everything else alone.
    These parts are C(<vcpu placement='static'>), one C(<vcpupin>) per vCPU, C(<emulatorpin>),
    C(<vcpusched scheduler='fifo'>) for all vCPUs, C(<numatune>), C(<resource><partition>), the memory
    size and the C(<rtvirt:pcpu>) metadata element that M(rtvirt.kvm.pcpu_allocation) returns.
  - The parts are written into the guest's current definition when it exists, so libvirt's uuid, MAC
    addresses and any devices added later are kept. Otherwise they go into O(base_xml), or into a tiny
    diskless guest (no disk, no network, C(<memballoon model='none'/>)) that idles in its BIOS.
  - Only the parts it owns are compared, normalized (CPU lists as sets, memory in KiB). An unchanged guest
    is not redefined and the module reports no change.
  - With O(running=true) it starts the guest when it is not running.
  - "What survives a libvirtd restart (or crash) in the middle of a run: one C(defineXML) carries every owned part, so the
    definition libvirt keeps is the old one or the new one, never one without its pins or partition; nothing is pinned
    live. A start or power-off that fails after the define names what is left: a guest this run defined is undefined
    again (over a fresh connection), any other is fully defined, and the message says to rerun the same call."
  - A running guest is compared by what it runs too, so a rerun after a define whose restart was cut off still reports
    RV(restart_needed), or with O(restart=true) restarts it.
  - V(absent) powers the guest off (C(destroy)) and removes its definition (C(undefine)). It never deletes a file;
    disks stay, and so do the NVRAM of a UEFI guest and its TPM state (the undefine keeps them).
  - The module does not choose pCPUs; use M(rtvirt.kvm.pcpu_allocation) for that, or the
    P(rtvirt.kvm.realtime_vm#role) role that does both and verifies the result.
  - Right before it writes a definition, under a host-wide lock (C(/run/lock/rtvirt-kvm-pcpu.lock)), the module reads
    every defined guest again and refuses to claim a pCPU for a vCPU or a reserved SMT sibling that another guest
    holds, naming that guest. Of two runs that planned the same free pCPU from the same books (two operators, or a
    fleet run beside an ad hoc one) exactly one defines its guest, and the other fails before it writes anything.
    pCPUs the guest already held are not checked again; emulator and I/O thread pins are not checked, since guests
    share the housekeeping CPUs for them.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - The guest's domain name.
      - "Names are checked before anything else. 1-64 characters: letters, digits, C(_ . + : -), starting with a letter or
        digit. libvirt refuses C(/) and newlines, and the name also becomes a file name and a cgroup name."
    type: str
    required: true
  state:
    description:
      - V(present) defines the guest (and starts it with O(running=true)). V(absent) destroys and undefines it.
    type: str
    choices: [present, absent]
    default: present
  vcpus:
    description: Number of vCPUs. Required with O(state=present).
    type: int
  memory_mib:
    description: Memory in MiB (C(<memory>) and C(<currentMemory>)). Required with O(state=present).
    type: int
  vcpupin:
    description:
      - vCPU index to the host CPU list it is pinned to, as RV(rtvirt.kvm.pcpu_allocation#module:vcpupin) returns it.
      - Must name every vCPU from 0 to O(vcpus)-1. Required with O(state=present).
    type: dict
  emulator_cpus:
    description:
      - Host CPUs for the emulator threads (C(<emulatorpin>)), normally the housekeeping CPUs.
      - Required with O(state=present).
    type: str
  fifo_priority:
    description: SCHED_FIFO priority of every vCPU thread (C(<vcpusched>)), 1-99.
    type: int
    default: 1
  partition:
    description:
      - The libvirt resource partition (C(<resource><partition>)). It must exist before the guest starts
        (M(rtvirt.kvm.libvirt_partition)).
    type: str
    default: /rt
  numa_nodes:
    description:
      - NUMA nodes the guest's memory is bound to (C(<numatune><memory mode='strict'>)). Normally the
        RV(rtvirt.kvm.pcpu_allocation#module:numa_nodes) of the pins.
      - Empty leaves out C(<numatune><memory>), for hosts whose kernel shows no NUMA nodes.
    type: list
    elements: int
    default: []
  metadata:
    description:
      - The C(<rtvirt:pcpu>) element that RV(rtvirt.kvm.pcpu_allocation#module:metadata) returns. It is kept in
        C(<metadata>) so that the SMT siblings reserved to the guest stay reserved in later allocations.
    type: str
    default: ""
  base_xml:
    description:
      - The operator's own domain XML (disks, NICs, firmware, C(qemu:commandline), metadata, anything). The module
        owns only C(<name>), the memory size, C(<vcpu>), C(<vcpus>) (removed), C(<iothreads>), C(<iothreadids>)
        (removed), the C(<vcpupin>), C(<emulatorpin>), C(<iothreadpin>) and C(<vcpusched>) children of
        C(<cputune>), C(<numatune><memory>), C(<resource><partition>) and its own C(<metadata>) elements. Everything
        else reaches libvirt byte for byte as given (comments, namespaces, quoting, unknown elements).
      - "Checked before anything is defined: its C(<name>), when given, must be O(name); every disk's
        C(<source file>) (or C(dev) of a block disk) must exist; a device's C(<driver iothread>) must name one of
        the O(iothreads)."
      - The digest of its canonical form is recorded in the definition's C(<metadata>). While it stays the same
        (re-indenting or editing comments counts as the same), the guest's current definition is the base, so what
        libvirt added (uuid, MAC and PCI addresses, controllers) is kept and an unchanged guest is not redefined.
      - When it changes, the guest is redefined from it, with the guest's uuid (a different uuid in it is refused)
        and the owned parts as planned, so the pins stay as they are. A running guest is not restarted; libvirt
        applies the new definition at its next start, so the module returns RV(restart_needed=true) (O(restart)
        restarts it). Give interfaces a C(<mac address>) to keep it across such a redefine.
      - Without it, the guest's current definition is the base, or for a new guest a tiny diskless one.
    type: str
  iothreads:
    description:
      - Number of I/O threads (C(<iothreads>)); each is pinned with C(<iothreadpin>) to O(emulator_cpus), never
        to a vCPU's pCPU. Disks use one with C(<driver iothread='N'>) in O(base_xml).
      - 0 removes the guest's I/O threads.
    type: int
    default: 0
  domain_type:
    description:
      - The C(<domain type>) of the built-in diskless guest. Ignored when O(base_xml) or a current definition is
        used (their own C(type) counts then).
      - Before a V(kvm) guest is started, the module checks that the user libvirt runs QEMU as (qemu.conf C(user),
        else C(libvirt-qemu) or C(qemu)) can open C(/dev/kvm), and fails before anything is defined when it cannot,
        saying why. It never falls back to V(qemu) on its own, since a realtime guest under TCG emulation is not realtime.
      - V(qemu) (TCG emulation) is for test guests only; the module warns when such a guest has SCHED_FIFO vCPUs.
    type: str
    choices: [kvm, qemu]
    default: kvm
  running:
    description: With O(state=present), start the guest when it is not running.
    type: bool
    default: true
  autostart:
    description:
      - With O(state=present), whether libvirt starts the guest when libvirtd starts, at boot (C(virsh autostart)).
      - A realtime guest is meant to come back after a reboot with no Ansible run, so the default is V(true).
    type: bool
    default: true
  restart:
    description:
      - When the definition of a running guest changes, power it off and start it again so the change takes effect.
      - Without it the module warns and returns RV(restart_needed=true).
    type: bool
    default: false
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  lock_timeout:
    description:
      - Seconds to wait for another run that holds the pCPU lock (it holds it only from its re-check to its define).
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    details: Reads the current definitions, checks the pCPUs as a real run does and reports what it would change.
      Writes and locks nothing.
  diff_mode:
    support: full
    details: The owned parts before and after, one per line.
  platform:
    platforms: posix
requirements:
  - libvirt-python (python3-libvirt) on the target.
notes:
  - "SCHED_FIFO vCPUs need RT time on kernels with RT group scheduling, or the start fails with C(Cannot set scheduler
    parameters ... Operation not permitted): C(kernel.sched_rt_runtime_us=-1) (the C(host_prep) role's default, which
    turns RT throttling off host-wide), or throttling kept on with the C(cpu) controller left out of qemu.conf's
    C(cgroup_controllers) (C(host_prep_libvirt_cgroup_controllers))."
seealso:
  - module: rtvirt.kvm.pcpu_allocation
  - module: rtvirt.kvm.libvirt_partition
  - name: libvirt CPU tuning
    description: The C(<cputune>) elements written here.
    link: https://libvirt.org/formatdomain.html#cpu-tuning
"""

EXAMPLES = r"""
- name: Choose pCPUs for rt1
  rtvirt.kvm.pcpu_allocation:
    name: rt1
    vcpus: 2
    pool: "2-7"
  register: rt1_pcpus

- name: Define and start rt1 on them with FIFO priority 10
  rtvirt.kvm.realtime_domain:
    name: rt1
    vcpus: 2
    memory_mib: 1024
    vcpupin: "{{ rt1_pcpus.vcpupin }}"
    emulator_cpus: "0-1"
    fifo_priority: 10
    numa_nodes: "{{ rt1_pcpus.numa_nodes }}"
    metadata: "{{ rt1_pcpus.metadata }}"

- name: Remove rt2
  rtvirt.kvm.realtime_domain:
    name: rt2
    state: absent
"""

RETURN = r"""
xml:
  description: The definition the module wrote (or would write). Empty for O(state=absent).
  returned: always
  type: str
  sample: "<domain type='kvm'><name>rt1</name>...</domain>"
differences:
  description: The owned parts that differ from the current definition (all of them for a new guest).
  returned: always
  type: list
  elements: str
  sample: ["emulatorpin", "vcpupin"]
defined:
  description: Whether the definition was written (or would be, in check mode).
  returned: always
  type: bool
  sample: true
started:
  description: Whether the guest was started (or would be).
  returned: always
  type: bool
  sample: false
destroyed:
  description: Whether a running guest was powered off (or would be).
  returned: always
  type: bool
  sample: false
undefined:
  description: Whether the definition was removed (or would be).
  returned: always
  type: bool
  sample: false
autostart_set:
  description: Whether libvirt's autostart flag of the guest was changed to O(autostart) (or would be).
  returned: always
  type: bool
  sample: false
restart_needed:
  description: The running guest still runs with its old definition (O(restart=false)).
  returned: always
  type: bool
  sample: false
"""

import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import CpuListError
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock, LockTimeout
from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import (
    DomainSpec,
    DomainSpecError,
    check_name,
    check_spec,
    differences,
    owned_view,
    plan_definition,
    view_text,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._kvm import DEVICE, GROUP, MODE, read_access
from ansible_collections.rtvirt.kvm.plugins.module_utils._libvirt import LibvirtError, import_libvirt
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import (
    PCPU_LOCK_PATH,
    PcpuError,
    check_claim,
    guest_pins_from_domain_xml,
    holdings_from_domain_xml,
)


def get_argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        vcpus=dict(type="int"),
        memory_mib=dict(type="int"),
        vcpupin=dict(type="dict"),
        emulator_cpus=dict(type="str"),
        fifo_priority=dict(type="int", default=1),
        partition=dict(type="str", default="/rt"),
        numa_nodes=dict(type="list", elements="int", default=[]),
        metadata=dict(type="str", default=""),
        base_xml=dict(type="str"),
        iothreads=dict(type="int", default=0),
        domain_type=dict(type="str", choices=["kvm", "qemu"], default="kvm"),
        running=dict(type="bool", default=True),
        autostart=dict(type="bool", default=True),
        restart=dict(type="bool", default=False),
        uri=dict(type="str", default="qemu:///system"),
        lock_timeout=dict(type="int", default=60),
    )


class _Libvirt:
    """The few libvirt-python calls the module makes (imported only here)."""

    def __init__(self, uri):
        self.libvirt = import_libvirt()
        self.uri = uri
        self.conn = None

    def call(self, what, func, *args):
        try:
            return func(*args)
        except self.libvirt.libvirtError as exc:
            raise LibvirtError("%s: %s" % (what, exc), exc) from exc

    def open(self):
        self.close()
        self.conn = self.call("cannot connect to %s (is libvirtd running?)" % self.uri, self.libvirt.open, self.uri)

    def lookup(self, name):
        try:
            return self.conn.lookupByName(name)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtError("cannot look up guest %s: %s" % (name, exc), exc) from exc

    def live_xml(self, dom):
        return self.call("cannot read the running definition of %s" % dom.name(), dom.XMLDesc, 0)

    def inactive_xml(self, dom):
        return self.call("cannot read the definition of %s" % dom.name(), dom.XMLDesc,
                         self.libvirt.VIR_DOMAIN_XML_INACTIVE)

    def keep_files_flags(self):
        """undefine flags that keep every file of the guest: its NVRAM (a plain undefine refuses a UEFI guest that
        has one, and removing it would lose the firmware's variables) and its TPM state where libvirt has the flag
        (8.9+).  Disks are never removed by an undefine; only virsh's --remove-all-storage does that, client side."""
        return (getattr(self.libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0)
                | getattr(self.libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_TPM", 0))

    def books(self):
        """What every defined guest holds, read now (the books pcpu_allocation planned from may be stale)."""
        texts = []
        for dom in self.call("cannot list the defined guests", self.conn.listAllDomains, 0):
            try:
                texts.append(dom.XMLDesc(self.libvirt.VIR_DOMAIN_XML_INACTIVE))
            except self.libvirt.libvirtError as exc:
                if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since it was listed: it holds nothing
                raise LibvirtError("cannot read the definition of %s: %s" % (dom.name(), exc), exc) from exc
        return holdings_from_domain_xml(texts)

    def close(self):
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                conn.close()
            except self.libvirt.libvirtError:
                pass  # a connection libvirtd dropped (restarted): nothing left to close


def _spec(params, domain_type):
    return DomainSpec(name=params["name"], vcpus=params["vcpus"], memory_mib=params["memory_mib"],
                      vcpupin=params["vcpupin"] or {}, emulator_cpus=params["emulator_cpus"] or "",
                      fifo_priority=params["fifo_priority"], partition=params["partition"],
                      numa_nodes=tuple(params["numa_nodes"] or ()), metadata=params["metadata"] or "",
                      domain_type=domain_type, iothreads=params["iothreads"])


def _present(module, virt, spec, result):
    params = module.params
    dom = virt.lookup(spec.name)
    current = virt.inactive_xml(dom) if dom is not None else None
    plan = plan_definition(spec, current, params["base_xml"])
    rendered = plan.xml
    result["xml"] = rendered
    result["differences"] = plan.differences
    active = bool(dom is not None and virt.call("cannot query %s" % spec.name, dom.isActive))
    # What runs is compared too: a run that defined and was cut off before its restart (libvirtd restarted,
    # the run killed) leaves a complete new definition and a guest on the old pins, which the next run must see.
    stale = differences(virt.live_xml(dom), rendered) if active else []
    result["defined"] = bool(result["differences"])
    if module._diff:
        result["diff"] = dict(before=view_text(owned_view(current)) if current is not None else "",
                              after=view_text(owned_view(rendered)),
                              before_header="%s %s (defined)" % (params["uri"], spec.name),
                              after_header="%s %s (wanted)" % (params["uri"], spec.name))
    restart = bool(stale)
    if restart and not params["restart"]:
        result["restart_needed"] = True
        module.warn("guest %s is running with its old definition (%s changed); it takes effect at the next start, "
                    "or set restart=true" % (spec.name, ", ".join(stale)))
    result["destroyed"] = restart and params["restart"]
    result["started"] = params["running"] and (not active or result["destroyed"])
    # A guest not defined yet has no flag: libvirt's default for a new definition is off.
    autostart = bool(dom is not None and virt.call("cannot query %s" % spec.name, dom.autostart))
    result["autostart_set"] = autostart != params["autostart"]
    if result["started"]:
        _check_accelerator(module, spec.name, rendered)
    if module.check_mode:
        if result["defined"]:
            _check_claim(virt, spec.name, rendered, result)
        return
    if result["defined"]:
        # The lock spans the re-check and the define, so that no other writer defines in between; it is not held
        # while the guest starts (the qemu hook may wait for the cpuset engine's lock then). One defineXML carries
        # every owned part, so whatever happens to libvirtd, the definition on disk is the old one or the new one.
        with HostLock(PCPU_LOCK_PATH, timeout=params["lock_timeout"], owner="realtime_domain %s" % spec.name):
            _check_claim(virt, spec.name, rendered, result)
            dom = virt.call("libvirt refused the definition of %s; nothing was changed, rerun the same call"
                            % spec.name, virt.conn.defineXML, rendered)
    try:
        if result["destroyed"]:
            virt.call("cannot power off %s" % spec.name, dom.destroy)
        if result["started"]:
            virt.call("cannot start %s (partition %s must exist in every cgroup controller and hold both the vCPU "
                      "and the emulator CPUs; FIFO vCPUs need RT time: kernel.sched_rt_runtime_us=-1, or the cpu "
                      "controller left out of qemu.conf cgroup_controllers)" % (spec.name, spec.partition), dom.create)
    except LibvirtError as exc:
        result["autostart_set"] = False
        raise _settled(virt, spec.name, current is None and result["defined"], exc, result) from exc
    # After the start: a guest libvirt refused to start is not marked to start at boot.
    if result["autostart_set"]:
        virt.call("cannot set the autostart flag of %s" % spec.name, dom.setAutostart, int(params["autostart"]))


def _settled(virt, name, new, exc, result):
    """The failure of a power-off or start after the definition was written, with what it left behind. The
    connection may be the casualty (libvirtd restarted), so a fresh one looks. A guest this run defined is
    undefined again, leaving the host as it was; otherwise the definition is complete and the error says so."""
    try:
        virt.open()
        dom = virt.lookup(name)
        if new and dom is not None and not virt.call("cannot query %s" % name, dom.isActive):
            virt.call("cannot undefine %s after its failed start" % name, dom.undefineFlags, virt.keep_files_flags())
            result.update(defined=False, started=False)
            return LibvirtError("%s; %s is not defined any more, rerun the same call" % (exc, name), exc.exception)
        state = "not defined" if dom is None else (
            "running" if virt.call("cannot query %s" % name, dom.isActive) else "defined but not running")
    except LibvirtError as again:
        state = "in an unknown state (%s)" % again
    result.update(started=False)
    return LibvirtError("%s; %s is %s, its definition is complete (every pin, the partition, the scheduler): rerun "
                        "the same call to finish" % (exc, name, state), exc.exception)


def _check_claim(virt, name, rendered, result):
    """Refuse a pCPU another guest holds now; the guest's own current definition says what it held already.
    A refused guest is neither defined nor started nor powered off, and the result says so."""
    books = virt.books()
    try:
        check_claim(books, guest_pins_from_domain_xml(rendered), books.get(name))
    except PcpuError:
        result.update(defined=False, started=False, destroyed=False, restart_needed=False, autostart_set=False)
        raise


def _check_accelerator(module, name, xml):
    """Refuse to start a kvm guest that QEMU cannot run under KVM (libvirt would fail late, or the user would
    be tempted to switch to TCG); warn about FIFO vCPUs under TCG, which are not realtime."""
    root = ET.fromstring(xml)
    if root.get("type") == "kvm":
        user, problem = read_access()
        if problem is None:
            return
        message = ("guest %s: KVM is not usable by QEMU: %s. A realtime guest is not started under TCG emulation; "
                   "run rtvirt.kvm.host_prep (it makes %s root:%s %04o where no udev does and adds QEMU's user to "
                   "group %s), or set domain_type=qemu for a guest that need not be realtime"
                   % (name, problem, DEVICE, GROUP, MODE, GROUP))
        if module.check_mode:
            module.warn(message + " (check mode: a real run fails here unless host_prep fixes it first)")
            return
        raise DomainSpecError(message)
    if root.find("./cputune/vcpusched[@scheduler='fifo']") is not None:
        module.warn("guest %s runs under TCG emulation (type=%s) with SCHED_FIFO vCPUs: emulated vCPUs are not "
                    "realtime and a FIFO TCG thread can starve its pCPU; use type kvm for a realtime guest"
                    % (name, root.get("type")))


def _absent(module, virt, name, result):
    dom = virt.lookup(name)
    if dom is None:
        return
    result["destroyed"] = bool(virt.call("cannot query %s" % name, dom.isActive))
    result["undefined"] = True
    if module._diff:
        result["diff"] = dict(before=view_text(owned_view(virt.inactive_xml(dom))), after="",
                              before_header="%s %s (defined)" % (module.params["uri"], name),
                              after_header="%s %s (absent)" % (module.params["uri"], name))
    if module.check_mode:
        return
    if result["destroyed"]:
        virt.call("cannot power off %s" % name, dom.destroy)
    virt.call("cannot undefine %s" % name, dom.undefineFlags, virt.keep_files_flags())


def main():
    module = new_module(
        AnsibleModule,
        get_argument_spec(),
        required_if=[("state", "present", ("vcpus", "memory_mib", "vcpupin", "emulator_cpus"))],
        supports_check_mode=True,
    )
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    params = module.params
    result = dict(changed=False, xml="", differences=[], defined=False, started=False, destroyed=False,
                  undefined=False, restart_needed=False, autostart_set=False)
    virt = failure = None
    try:
        check_name(params["name"])
        spec = None
        if params["state"] == "present":
            spec = _spec(params, params["domain_type"])
            check_spec(spec)
        virt = _Libvirt(params["uri"])
        virt.open()
        if spec is not None:
            _present(module, virt, spec, result)
        else:
            _absent(module, virt, params["name"], result)
    except LibvirtError as exc:
        failure = dict(result, msg=str(exc), guest=params["name"], exception=exc.exception)
    except (DomainSpecError, PcpuError, CpuListError, LockTimeout) as exc:
        failure = dict(result, msg=str(exc), guest=params["name"])
    finally:
        if virt is not None:
            virt.close()
    if failure is not None:
        module.fail_json(**failure)
    result["changed"] = any(result[key] for key in ("defined", "started", "destroyed", "undefined", "autostart_set"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
