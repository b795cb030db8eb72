#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_cmdline
short_description: Set kernel command line parameters in GRUB's /etc/default/grub
version_added: 0.1.0
description:
  - Sets (or removes) parameters in one variable of C(/etc/default/grub), by default C(GRUB_CMDLINE_LINUX), and
    regenerates GRUB's configuration with O(update_command) when the file changed.
  - The variable is parsed, not pattern-matched. A line the module cannot parse safely (shell expansions,
    backslashes, a value spread over several lines, several assignments) makes it fail with the line number
    before anything is written.
  - On a host without the file (no GRUB) nothing is done and RV(bootloader) is V(none).
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
    description: GRUB's defaults file.
    type: path
    default: /etc/default/grub
  variable:
    description: The variable to edit.
    type: str
    default: GRUB_CMDLINE_LINUX
  update_command:
    description:
      - The command (argv) that regenerates GRUB's configuration after a change. Empty runs nothing.
      - Default is C(update-grub) when it is installed, else C(grub-mkconfig -o /boot/grub/grub.cfg).
    type: list
    elements: str
  proc_cmdline:
    description: The running kernel's command line. For tests.
    type: path
    default: /proc/cmdline
attributes:
  check_mode:
    support: full
    details: Reports the change and the diff; writes and runs nothing.
  diff_mode:
    support: full
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Isolate CPUs 2-7 at the next boot
  rtvirt.kvm.kernel_cmdline:
    params:
      isolcpus: managed_irq,domain,2-7
      nohz_full: 2-7
      rcu_nocbs: 2-7
      irqaffinity: 0-1
  register: cmdline
"""

RETURN = r"""
bootloader:
  description: V(grub) when O(path) exists, V(none) otherwise.
  returned: always
  type: str
  sample: grub
cmdline:
  description: The variable's value after the change (or as planned in check mode); null without GRUB.
  returned: always
  type: str
  sample: "quiet isolcpus=managed_irq,domain,2-7 nohz_full=2-7"
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
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import new_module, nul_byte_problem
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
        proc_cmdline=dict(type="path", default="/proc/cmdline"),
    )


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


def run(module):
    p = module.params
    wanted = {str(k): (None if v is None else str(v)) for k, v in p["params"].items()}
    try:
        with open(p["proc_cmdline"]) as handle:
            running = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModuleFailure("cannot read %s: %s" % (p["proc_cmdline"], exc)) from None
    pending = missing_from_running(running, wanted, p["absent"])
    if not os.path.exists(p["path"]):
        return dict(changed=False, bootloader="none", cmdline=None, reboot_required=False, pending=pending,
                    msg="%s does not exist: not a GRUB host, the kernel command line is not managed" % p["path"])
    try:
        with open(p["path"]) as handle:
            old = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModuleFailure("cannot read %s (path): %s" % (p["path"], exc)) from None
    try:
        changed, new, _pending = plan_edit(old, p["variable"], wanted, p["absent"], running)
        _index, new_words = parse(new, p["variable"])
    except CmdlineParseError as exc:
        raise ModuleFailure("cannot edit %s safely, nothing written: %s" % (p["path"], exc)) from None
    result = dict(changed=changed, bootloader="grub", cmdline=" ".join(new_words),
                  reboot_required=bool(pending), pending=pending)
    if module._diff:
        result["diff"] = dict(before=old, after=new, before_header=p["path"], after_header=p["path"])
    msg = "%s of %s already as wanted" % (p["variable"], p["path"])
    if changed and not module.check_mode:
        _replace(p["path"], new)
        msg = "updated %s in %s" % (p["variable"], p["path"])
        command = p["update_command"]
        if command is None:
            command = ["update-grub"] if shutil.which("update-grub") else ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]
        if command:
            rc, out, err = module.run_command(command, environ_update={"LC_ALL": "C"})
            if rc != 0:
                raise ModuleFailure("%s changed, but %s failed (rc %d): %s"
                                    % (p["path"], " ".join(command), rc, err.strip() or out.strip()), **result)
            msg += "; ran %s" % " ".join(command)
    elif changed:
        msg = "would update %s in %s" % (p["variable"], p["path"])
    result["msg"] = msg
    return result


def main():
    module = new_module(AnsibleModule, get_argument_spec(), supports_check_mode=True)
    problem = nul_byte_problem(module.params)
    if problem is not None:
        module.fail_json(msg=problem)
    finish(module, run)


if __name__ == "__main__":
    main()
