#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cgroup_cleanup
short_description: Remove a leftover cgroup from every non-cpuset hierarchy, moving stray tasks to its parent first
version_added: 0.1.0
description:
  - "For a cgroup path such as C(machine/qemu-3-rt1.libvirt-qemu), in every mounted hierarchy except the cgroup v1
    cpuset one (use M(rtvirt.kvm.cgroup_cpuset) with C(state=absent) and C(migrate=true) there): moves every task
    of the subtree to the cgroup's parent (threads one by one through C(tasks) on v1, processes through
    C(cgroup.procs) on v2), then removes the directories deepest first."
  - Never touches the memory hierarchy's C(process_api) cgroup.
author:
  - rtvirt.kvm contributors (@rtvirt-kvm)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description:
      - The cgroup, relative to each hierarchy's root. Must lie below C(machine), C(machine.slice) or a top-level
        partition (C(rt.partition), C(rt.slice)).
    type: str
    required: true
attributes:
  check_mode:
    support: full
    details: Reports what would be moved and removed.
  diff_mode:
    support: none
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Remove a dead guest's cgroups
  rtvirt.kvm.cgroup_cleanup:
    path: machine/qemu-3-rt1.libvirt-qemu
"""

RETURN = r"""
removed:
  description: Directories removed (or to be removed), deepest first.
  returned: always
  type: list
  elements: str
  sample: [/sys/fs/cgroup/cpu/machine/qemu-3-rt1.libvirt-qemu/vcpu0]
moved:
  description: Tasks moved to the parent, with C(tid) and C(to).
  returned: always
  type: list
  elements: dict
  sample: [{tid: 4242, to: /sys/fs/cgroup/cpu/machine}]
"""

import errno
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import discover_layout


def _ids(path):
    try:
        with open(path) as handle:
            return [int(x) for x in handle.read().split()]
    except OSError:
        return []


def main():
    module = AnsibleModule(argument_spec=dict(path=dict(type="str", required=True)), supports_check_mode=True)
    path = module.params["path"].strip("/")
    parts = path.split("/")
    # libvirt's trees only: /machine and top-level partitions (rt.partition, rt.slice), never systemd's own slices.
    top_ok = parts[0] in ("machine", "machine.slice") or parts[0].endswith(".partition") or (
        parts[0].endswith(".slice") and parts[0] not in ("-.slice", "system.slice", "user.slice"))
    if not top_ok or len(parts) < 2 or ".." in parts or "" in parts:
        module.fail_json(msg="path %r must lie below machine/, machine.slice/ or a top-level partition (rt.partition/, "
                             "rt.slice/), without '..' or empty levels" % path)
    moved, removed = [], []
    for mount in discover_layout().mounts:
        if mount.version == 1 and "cpuset" in mount.controllers:
            continue
        top = os.path.join(mount.mountpoint, path)
        if not os.path.isdir(top) or "process_api" in top:
            continue
        parent = os.path.dirname(top)
        dirs = [d for d, _s, _f in os.walk(top)]
        dirs.sort(key=lambda d: d.count("/"), reverse=True)
        for directory in dirs:
            knob = "tasks" if mount.version == 1 else "cgroup.procs"
            for tid in _ids(os.path.join(directory, knob)):
                moved.append({"tid": tid, "to": parent})
                if module.check_mode:
                    continue
                try:
                    with open(os.path.join(parent, knob), "w") as handle:
                        handle.write(str(tid))
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        module.fail_json(msg="cannot move task %d from %s to %s: %s" % (tid, directory, parent, exc),
                                         moved=moved, removed=removed)
            removed.append(directory)
            if not module.check_mode:
                try:
                    os.rmdir(directory)
                except OSError as exc:
                    module.fail_json(msg="cannot remove %s: %s" % (directory, exc), moved=moved, removed=removed)
    module.exit_json(changed=bool(removed), moved=moved, removed=removed)


if __name__ == "__main__":
    main()
