# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can the QEMU that libvirt starts open /dev/kvm?

libvirtd runs as root but starts QEMU as the user of qemu.conf (Debian builds default to
``libvirt-qemu``, RHEL's to ``qemu``), with that user's groups.  A distribution makes KVM usable
for it in two places: a udev rule gives ``/dev/kvm`` to ``root:kvm`` with mode 0660, and the
libvirt package's maintainer scripts put the QEMU user into group ``kvm``.  A host without udev
(containers, CI machines) keeps the kernel's ``root:root 0600`` node, and every ``type='kvm'``
guest then dies with "failed to initialize kvm: Permission denied".

A test of root's own access (``open('/dev/kvm')`` in the module) says nothing about this, so the
answer is computed from the device's owner and mode and the QEMU user's groups.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat

DEVICE = "/dev/kvm"
GROUP = "kvm"
MODE = 0o660
QEMU_CONF = "/etc/libvirt/qemu.conf"
# The compiled-in defaults of the distributions' libvirt builds, in the order they are tried when qemu.conf sets none.
DEFAULT_USERS = ("libvirt-qemu", "qemu")
# udevd's control socket: where it exists, udev owns /dev and the role leaves the device to its rules.
UDEV_CONTROL = "/run/udev/control"


def conf_value(text, key):
    """The string value of the last active ``key = "value"`` line of a libvirt config file, or None."""
    value = None
    for line in (text or "").splitlines():
        match = re.match(r'\s*%s\s*=\s*"([^"]*)"' % re.escape(key), line)
        if match:
            value = match.group(1)
    return value


def _lookup_user(name):
    """(name, uid, gid) of ``name`` or of libvirt's ``+N`` numeric form; None when no such user exists."""
    try:
        entry = pwd.getpwuid(int(name[1:])) if name.startswith("+") else pwd.getpwnam(name)
    except (KeyError, ValueError):
        if name.startswith("+") and name[1:].isdigit():
            return (name, int(name[1:]), None)
        return None
    return (entry.pw_name, entry.pw_uid, entry.pw_gid)


def qemu_user(conf_text, lookup=_lookup_user):
    """(name, uid, gid) of the user libvirt runs QEMU as: qemu.conf's ``user``, else the first default that exists.

    None when neither is set nor exists (libvirtd itself would refuse to start then).
    """
    configured = conf_value(conf_text, "user")
    for name in ([configured] if configured else list(DEFAULT_USERS)):
        found = lookup(name)
        if found is not None:
            return found
    return None


def groups_of(name, gid):
    """Every group id ``name`` is in: its primary group and the supplementary ones (as libvirt computes for QEMU)."""
    ids = {gid} if gid is not None else set()
    for group in grp.getgrall():
        if name in group.gr_mem:
            ids.add(group.gr_gid)
    return ids


def access_problem(device_stat, user, group_ids, device=DEVICE):
    """Why ``user`` ((name, uid, gid)) cannot open the device read-write, or None when it can.

    ``device_stat``: os.stat() of the device, None when it does not exist.
    """
    if device_stat is None:
        return "%s does not exist (no KVM: the kvm module is not loaded, or this is a VM without nested virtualisation)" \
            % device
    if not stat.S_ISCHR(device_stat.st_mode):
        return "%s is not a character device" % device
    name, uid, _gid = user
    if uid == 0:
        return None
    mode = stat.S_IMODE(device_stat.st_mode)
    if device_stat.st_uid == uid:
        allowed = mode & 0o600 == 0o600
    elif device_stat.st_gid in group_ids:
        allowed = mode & 0o060 == 0o060
    else:
        allowed = mode & 0o006 == 0o006
    if allowed:
        return None
    return "%s is %s:%s %04o and QEMU's user %s is not allowed to open it (it is not in group %s)" % (
        device, _owner_name(device_stat.st_uid), _group_name(device_stat.st_gid), mode, name,
        _group_name(device_stat.st_gid))


def _owner_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def read_access(device=DEVICE, qemu_conf=QEMU_CONF):
    """(user name or None, problem or None) for this host: can libvirt's QEMU open ``device``?"""
    try:
        with open(qemu_conf) as handle:
            conf = handle.read()
    except OSError:
        conf = ""
    user = qemu_user(conf)
    if user is None:
        return None, "QEMU's user (qemu.conf user, or one of %s) does not exist" % ", ".join(DEFAULT_USERS)
    try:
        device_stat = os.stat(device)
    except OSError:
        device_stat = None
    return user[0], access_problem(device_stat, user, groups_of(user[0], user[2]), device)


def udev_manages_devices(control=UDEV_CONTROL):
    """True where udevd runs (its rules own /dev/kvm's group and mode)."""
    return os.path.exists(control)
