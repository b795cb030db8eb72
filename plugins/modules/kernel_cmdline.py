#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_cmdline
short_description: Set kernel command line parameters through the host's boot loader (GRUB or BLS with grubby)
version_added: 0.1.0
description:
  - Detects the boot loader below O(root), then sets (or removes) the parameters where it keeps them.
    The first match wins.
  - "V(bls), on the RHEL family (RHEL, CentOS Stream, Fedora, Rocky, Alma): BLS entries in
    C(/boot/loader/entries/*.conf) and C(grubby). The current parameters are read from every entry's C(options),
    with C($kernelopts) (RHEL 8) expanded from C(/boot/grub2/grubenv). When an entry lacks one, the module runs
    one C(grubby --update-kernel=ALL --args=... --remove-args=...) with only the parameters some entry lacks.
    It then reads back C(grubby --info=DEFAULT) and fails when the default kernel's C(args) still differ. These
    hosts also have C(/etc/default/grub), but regenerating grub.cfg from it changes no existing entry: BLS wins."
  - "V(grub), on Debian and Ubuntu: C(/etc/default/grub). The module edits one variable in it, by default
    C(GRUB_CMDLINE_LINUX), and regenerates GRUB's configuration with O(update_command) when the file changed."
  - The variable is parsed, not pattern-matched. A line the module cannot parse safely (shell expansions,
    backslashes, a value spread over several lines, several assignments) makes it fail with the line number
    before anything is written.
  - "Recognised but not managed: V(kernelstub) (C(/etc/kernelstub/configuration), Pop!_OS) and V(systemd-boot)
    (C(/etc/kernel/cmdline), or BLS entries with C(bootctl) and no grubby). These are desktop and appliance
    loaders, and systemd-boot has no tool that rewrites every installed kernel's entry. The module warns and
    changes nothing."
  - On a host where nothing is recognised (no GRUB), nothing is done. RV(bootloader) is V(none) and RV(msg) names
    what was looked for; with O(require_bootloader=true) that is a failure instead. BLS entries without grubby
    on a RHEL-family host always fail, and the message names grubby as what to install.
  - RV(reboot_required) compares the wanted parameters with the running kernel's C(/proc/cmdline), so it stays
    true until the host has rebooted into them.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  params:
    description:
      - Parameters to set, name to value (for example C(isolcpus=managed_irq,domain,2-7)). A null value sets a
        bare flag. An existing parameter is changed in place; a new one is appended.
    type: dict
    default: {}
  absent:
    description: Parameter names to remove.
    type: list
    elements: str
    default: []
  path:
    description: GRUB's defaults file (below O(root)).
    type: path
    default: /etc/default/grub
  variable:
    description: The variable to edit (V(grub) only).
    type: str
    default: GRUB_CMDLINE_LINUX
  update_command:
    description:
      - The command (argv) that regenerates GRUB's configuration after a change (V(grub) only). Empty runs nothing.
      - Default is C(update-grub) when it is installed, else C(grub-mkconfig -o /boot/grub/grub.cfg), or
        C(grub2-mkconfig -o /boot/grub2/grub.cfg) where only that exists.
    type: list
    elements: str
  require_bootloader:
    description: Fail, instead of doing nothing, when no boot loader the module manages is recognised.
    type: bool
    default: false
  root:
    description: Where the host's files are for the detection (BLS entries, grubenv, os-release, the tools). For
      tests against a recorded tree; the commands still run on the host itself, not in a chroot below it.
    type: path
    default: /
  proc_cmdline:
    description: The running kernel's command line. For tests.
    type: path
    default: /proc/cmdline
attributes:
  check_mode:
    support: full
    details: Reports the change, the diff and RV(commands); writes and runs nothing.
  diff_mode:
    support: full
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Isolate CPUs 2-7 at the next boot (GRUB on Debian and Ubuntu, grubby on the RHEL family)
  rtvirt.kvm.kernel_cmdline:
    params:
      isolcpus: managed_irq,domain,2-7
      nohz_full: 2-7
      rcu_nocbs: 2-7
      irqaffinity: 0-1
  register: cmdline

- name: Drop rhgb and quiet from every BLS entry; fail on a host without a managed boot loader
  rtvirt.kvm.kernel_cmdline:
    absent: [rhgb, quiet]
    require_bootloader: true
"""

RETURN = r"""
bootloader:
  description: What was detected, V(bls), V(grub), V(kernelstub), V(systemd-boot), or V(none).
  returned: always
  type: str
  sample: grub
cmdline:
  description:
    - After the change (or as planned in check mode), V(grub) the variable's value, V(bls) the default entry's
      options as grub boots them. Null otherwise.
  returned: always
  type: str
  sample: "quiet isolcpus=managed_irq,domain,2-7 nohz_full=2-7"
commands:
  description: The commands (argv) run, or in check mode those a run would run. Empty when nothing changes.
  returned: always
  type: list
  elements: list
  sample: [[grubby, --update-kernel=ALL, "--args=isolcpus=managed_irq,domain,2-7 nohz_full=2-7"],
    [grubby, --info=DEFAULT]]
sources:
  description: The files the current parameters were read from.
  returned: always
  type: list
  elements: str
  sample: [/boot/loader/entries/*.conf, /boot/grub2/grubenv]
reboot_required:
  description: Whether the running kernel's command line differs from what is asked.
  returned: always
  type: bool
  sample: true
pending:
  description: The parameters the running kernel does not have yet.
  returned: always
  type: list
  elements: str
  sample: [isolcpus, nohz_full]
msg:
  description: What was done, in words.
  returned: always
  type: str
  sample: "set isolcpus, nohz_full in GRUB_CMDLINE_LINUX of /etc/default/grub; ran update-grub"
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
from ansible_collections.rtvirt.kvm.plugins.module_utils._bootloader import (
    GRUBBY_INFO,
    BootloaderError,
    NoBootloader,
    apply_bls,
    detect,
    plan_bls_host,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._grub import (
    CmdlineParseError,
    missing_from_running,
    parse,
    plan_edit,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._failure import ModuleFailure, finish


def get_argument_spec():
    return dict(
        params=dict(type="dict", default={}),
        absent=dict(type="list", elements="str", default=[]),
        path=dict(type="path", default="/etc/default/grub"),
        variable=dict(type="str", default="GRUB_CMDLINE_LINUX"),
        update_command=dict(type="list", elements="str"),
        require_bootloader=dict(type="bool", default=False),
        root=dict(type="path", default="/"),
        proc_cmdline=dict(type="path", default="/proc/cmdline"),
    )


def _under(root, path):
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def _replace(path, text):
    """Write ``text`` to ``path`` whole or not at all (a temporary file beside it, renamed over it)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".grub.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise ModuleFailure("cannot write %s, left as it was: %s" % (path, exc)) from None


def run_grub(module, found, wanted, running, pending):
    """/etc/default/grub edited in place, then GRUB's configuration regenerated (Debian, Ubuntu)."""
    p = module.params
    path = _under(p["root"], p["path"])
    try:
        with open(path) as handle:
            old = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModuleFailure("cannot read %s (path): %s" % (path, exc)) from None
    try:
        changed, new, _pending = plan_edit(old, p["variable"], wanted, p["absent"], running)
        _index, new_words = parse(new, p["variable"])
    except CmdlineParseError as exc:
        raise ModuleFailure("cannot edit %s safely, nothing written: %s" % (path, exc)) from None
    command = p["update_command"]
    if command is None:
        command = found.update_command
    result = dict(changed=changed, bootloader="grub", cmdline=" ".join(new_words),
                  reboot_required=bool(pending), pending=pending, sources=[p["path"]],
                  commands=[command] if changed and command else [])
    if module._diff:
        result["diff"] = dict(before=old, after=new, before_header=path, after_header=path)
    msg = "%s of %s already as wanted" % (p["variable"], path)
    if changed and not module.check_mode:
        _replace(path, new)
        msg = "updated %s in %s" % (p["variable"], path)
        if command:
            rc, out, err = module.run_command(command, environ_update={"LC_ALL": "C"})
            if rc != 0:
                raise ModuleFailure("%s changed, but %s failed (rc %d): %s"
                                    % (path, " ".join(command), rc, err.strip() or out.strip()), **result)
            msg += "; ran %s" % " ".join(command)
    elif changed:
        msg = "would update %s in %s" % (p["variable"], path)
    result["msg"] = msg
    return result


def run_bls(module, found, wanted, pending):
    """Every BLS entry brought to the parameters with one grubby call, then read back (RHEL family)."""
    p = module.params
    try:
        plan = plan_bls_host(p["root"], wanted, p["absent"])
    except BootloaderError as exc:
        raise ModuleFailure("cannot change the BLS entries safely, nothing run: %s" % exc) from None
    default = plan.after.get(plan.default) or []
    result = dict(changed=plan.changed, bootloader="bls", cmdline=" ".join(default), reboot_required=bool(pending),
                  pending=pending, sources=found.sources, commands=[plan.argv, GRUBBY_INFO] if plan.changed else [])
    if module._diff:
        header = "%s/*.conf (options as grub boots them)" % _under(p["root"], "/boot/loader/entries")
        result["diff"] = dict(before=plan.render(plan.before), after=plan.render(plan.after),
                              before_header=header, after_header=header)
    if not plan.changed:
        result["msg"] = "every BLS entry already has the parameters as wanted"
        return result
    if module.check_mode:
        result["msg"] = "would run %s" % " ".join(plan.argv)
        return result

    def run_command(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    try:
        result["commands"] = apply_bls(plan, run_command, wanted, p["absent"])
    except BootloaderError as exc:
        raise ModuleFailure(str(exc), **result) from None
    result["msg"] = "ran %s; %s confirms the default kernel's args" % (" ".join(plan.argv), " ".join(GRUBBY_INFO))
    return result


def run(module):
    p = module.params
    wanted = {str(k): (None if v is None else str(v)) for k, v in p["params"].items()}
    try:
        with open(p["proc_cmdline"]) as handle:
            running = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModuleFailure("cannot read %s: %s" % (p["proc_cmdline"], exc)) from None
    pending = missing_from_running(running, wanted, p["absent"])
    unmanaged = dict(changed=False, cmdline=None, reboot_required=False, pending=pending, commands=[], sources=[])
    try:
        found = detect(p["root"], p["path"])
    except NoBootloader as exc:
        if p["require_bootloader"]:
            raise ModuleFailure(str(exc), bootloader="none", **unmanaged) from None
        return dict(unmanaged, bootloader="none",
                    msg="%s: not a GRUB host, the kernel command line is not managed" % exc)
    except BootloaderError as exc:
        raise ModuleFailure("%s; nothing run" % exc, bootloader="bls", **unmanaged) from None
    if found.kind == "grub":
        return run_grub(module, found, wanted, running, pending)
    if found.kind == "bls":
        return run_bls(module, found, wanted, pending)
    msg = ("%s recognised (%s): not managed by this module; set the parameters with its own tool (read them back "
           "with %s)" % (found.kind, found.describe(), found.readback))
    if p["require_bootloader"]:
        raise ModuleFailure(msg, bootloader=found.kind, **unmanaged)
    module.warn(msg)
    return dict(unmanaged, bootloader=found.kind, sources=found.sources, msg=msg)


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    finish(module, run)


if __name__ == "__main__":
    main()
