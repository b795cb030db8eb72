# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The partition keeper: a oneshot unit that writes ``cpuset.cpus.partition`` on an exclusive slice's cgroup
whenever systemd (re)creates that cgroup, so a partition survives a reboot or ``systemctl restart`` of the slice
without another Ansible run.

systemd has no property for ``cpuset.cpus.partition``; every time it creates a slice's cgroup (boot, a restart
of the slice, the slice stopping once it is empty and starting again) the cgroup is a ``member``.  The keeper is
one unit per slice, ``rtvirt-partition-<slice>.service``, rather than one template: what it writes differs per
slice (the partition kind, and for a remote partition the ``cpuset.cpus.exclusive`` chain with the slice's CPUs),
a template would need a second file per instance to carry that, and a unit per slice is removed with its slice
without counting who else still uses a shared template.

How it is tied to the slice:

- ``Requires=`` + ``After=`` the slice: starting the keeper starts the slice first, so the cgroup exists.
- ``PartOf=`` the slice: ``systemctl stop``/``restart`` of the slice stops/restarts the keeper after it.
- a symlink in ``<slice>.wants/``: whatever starts the slice (a guest's scope, machined) starts the keeper.
- a symlink in ``multi-user.target.wants/`` and ``Before=libvirtd.service virtqemud.service``: at boot the
  slice is made and turned into a partition before libvirt's daemon starts and autostarts guests in it.  A
  keeper that fails does not hold libvirt back (``Before=`` orders, it does not require): the failure is in the
  journal and ``systemctl --failed``, and the next run of the module writes the partition again.

Its ExecStart is one ``/bin/sh -c`` line (no Python at boot), idempotent (the kernel takes the same partition
type again as a no-op), and exits non-zero with a message naming the cgroup, the knob, the value and the rule when
the kernel refuses or marks the partition invalid.

The files are planned here and written by the caller through the run's WriteGate.
"""

from __future__ import annotations

import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._textfile import read_or_none

KEEPER_PREFIX = "rtvirt-partition-"
KEEPER_HEADER = ("# Managed by rtvirt.kvm.libvirt_partition: keeps libvirt partition %s a cpuset partition across "
                 "restarts of %s and reboots; changes are overwritten.")
# Targets whose .wants/ hold a link besides the slice's own: the boot target, so the slice is a partition before
# libvirt starts (and autostarts guests) rather than when the first guest's scope starts the slice.
BOOT_TARGET = "multi-user.target"
# libvirt's daemons, monolithic and modular: ordered after the keeper where present (ordering on a unit that does
# not exist is ignored by systemd, so no detection is needed).
LIBVIRT_DAEMONS = ("libvirtd.service", "virtqemud.service")
SHELL = "/bin/sh"
_UNIT_NAME_MAX = 255


def keeper_unit(pname):
    """``rt.slice`` -> ``rtvirt-partition-rt.service``."""
    return KEEPER_PREFIX + pname.slice[:-len(".slice")] + ".service"


def keeper_fits(pname):
    """Whether the keeper's unit name stays within systemd's limit (a slice name may use all of it)."""
    return len(keeper_unit(pname).encode()) <= _UNIT_NAME_MAX


def keeper_paths(unit_dir, pname):
    """(unit file, [wants symlinks]) of ``pname``'s keeper below ``unit_dir``."""
    unit = keeper_unit(pname)
    links = [os.path.join(unit_dir, pname.slice + ".wants", unit), os.path.join(unit_dir, BOOT_TARGET + ".wants", unit)]
    return os.path.join(unit_dir, unit), links


def exclusive_chain(pname, cpus, remote):
    """[cgroup path below the v2 root] that need ``cpus`` in ``cpuset.cpus.exclusive`` before the partition is
    written: every slice level from the top down to the slice itself for a remote partition (its parent is not a
    partition root), as the cpuset engine writes them (``_cpuset_plan._exclusive_chain``); none for a local one.
    A reboot re-creates every level, so the keeper writes them all, adding the CPUs to what a level holds."""
    if not remote or not cpus:
        return []
    return ["/".join(pname.slices[:index]) for index in range(1, len(pname.slices) + 1)]


def _q(text):
    """A word for the shell line inside systemd's single quotes.  systemd unquotes ExecStart= first: ``$$`` becomes
    ``$`` (a lone ``$`` would be one of its own variables), ``%%`` becomes ``%`` (a specifier otherwise), ``\\\\``
    one backslash (slice names escape ``-`` as ``\\x2d``, which the shell's double quotes keep as it is)."""
    if "'" in text:
        raise ValueError("%r cannot go into the keeper's shell line (a single quote)" % text)
    return text.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")


def keeper_script(pname, mountpoint, kind, cpus=None, remote=False):
    """The shell line: the chain (if any), then the partition, then read back."""
    cgroup = os.path.join(mountpoint, pname.slice_path)
    knob = os.path.join(cgroup, "cpuset.cpus.partition")
    tag = "rtvirt-partition %s:" % pname.slice
    lines = [
        'd="%s"' % cgroup,
        '[ -d "$d" ] || { echo "%s $d does not exist: %s is not running, so there is no cgroup to write '
        'cpuset.cpus.partition=%s on" >&2; exit 1; }' % (tag, pname.slice, kind),
    ]
    for level in exclusive_chain(pname, cpus, remote):
        path = os.path.join(mountpoint, level, "cpuset.cpus.exclusive")
        value = format_cpulist(cpus)
        lines.append(
            'x="%s"; c=$(cat "$x") && echo "${c:+$c,}%s" > "$x" || { echo "%s the kernel refused cpuset.cpus.exclusive'
            '=%s on $x (a remote partition needs its CPUs exclusive on every level from the top down, within the '
            'parent level and on no sibling)" >&2; exit 1; }' % (path, value, tag, value))
    lines.extend([
        'f="%s"' % knob,
        'echo %s > "$f" || { echo "%s the kernel refused cpuset.cpus.partition=%s on $f" >&2; exit 1; }' % (
            kind, tag, kind),
        's=$(cat "$f"); [ "$s" = %s ] || { echo "%s $f reads $s, not %s: the kernel marks a partition invalid when '
        'its CPUs are not exclusive among its siblings, would take the last CPUs of its parent, are empty, or its '
        'parent is not a partition root (the reason is in the parentheses)" >&2; exit 1; }' % (kind, tag, kind),
        'echo "%s $f = $s"' % tag,
    ])
    return "; ".join(_q(line) for line in lines)


def render_keeper(pname, mountpoint, kind, cpus=None, remote=False):
    """The keeper unit's text for partition ``pname`` (a PartitionName) of type ``kind``."""
    slice_unit = pname.slice
    return "\n".join([
        KEEPER_HEADER % (pname.name, slice_unit),
        "[Unit]",
        "Description=cpuset.cpus.partition=%s on %s (libvirt partition %s)" % (kind, slice_unit, pname.name),
        "Documentation=https://docs.kernel.org/admin-guide/cgroup-v2.html#cpuset-interface-files",
        "Requires=%s" % slice_unit,
        "After=%s" % slice_unit,
        "PartOf=%s" % slice_unit,
        "Before=%s" % " ".join(LIBVIRT_DAEMONS),
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=%s -c '%s'" % (SHELL, keeper_script(pname, mountpoint, kind, cpus, remote)),
        "",
        "[Install]",
        "WantedBy=%s %s" % (slice_unit, BOOT_TARGET),
        "",
    ])


# --------------------------------------------------------------------------------------------
# Planning against the files as they are

def _link_target(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def current_keeper(unit_dir, pname):
    """{path: text (unit file) or link target (symlinks), None when absent}."""
    unit_file, links = keeper_paths(unit_dir, pname)
    found = {unit_file: read_or_none(unit_file) if not os.path.islink(unit_file) else _link_target(unit_file)}
    found.update((link, _link_target(link) if os.path.islink(link) else read_or_none(link)) for link in links)
    return found


def plan_keeper(unit_dir, pname, text):
    """File steps turning the keeper's files into ``text`` (None: no keeper) with its two symlinks:
    [("write", path, text) | ("link", path, target) | ("unlink", path, None)], in the order to apply them
    (unit file before the links that name it; links before the unit file when removing)."""
    unit_file, links = keeper_paths(unit_dir, pname)
    current = current_keeper(unit_dir, pname)
    steps = []
    if text is None:
        steps.extend(("unlink", link, None) for link in links if os.path.lexists(link))
        if os.path.lexists(unit_file):
            steps.append(("unlink", unit_file, None))
        return steps
    if current[unit_file] != text or os.path.islink(unit_file):
        steps.append(("write", unit_file, text))
    steps.extend(("link", link, unit_file) for link in links if current[link] != unit_file or not os.path.islink(link))
    return steps


def describe_step(step):
    kind, path, value = step
    if kind == "write":
        return "write %s" % path
    if kind == "link":
        return "link %s -> %s" % (path, value)
    return "remove %s" % path


def apply_steps(gate, steps):
    for kind, path, value in steps:
        if kind == "write":
            if os.path.islink(path):
                gate.unlink(path)
            gate.replace_file(path, value)
        elif kind == "link":
            gate.symlink(path, value)
        else:
            gate.unlink(path)
            directory = os.path.dirname(path)
            # An empty <slice>.wants/ is ours to remove; multi-user.target.wants/ is never empty on a real host.
            if directory.endswith(".slice.wants") and os.path.isdir(directory) and not os.listdir(directory):
                gate.remove_dir(directory)


def diff_of(steps, unit_dir, pname):
    """(before, after) of the keeper's files as text, each file under a ``# path`` line."""
    current = current_keeper(unit_dir, pname)
    before, after = [], []
    for kind, path, value in steps:
        old = current.get(path)
        if os.path.islink(path):
            old = "-> %s\n" % old
        before.append("# %s\n%s" % (path, old or ""))
        if kind == "write":
            after.append("# %s\n%s" % (path, value))
        elif kind == "link":
            after.append("# %s\n-> %s\n" % (path, value))
        else:
            after.append("# %s\n" % path)
    return "".join(before), "".join(after)
