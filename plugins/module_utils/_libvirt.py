# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt-python for the modules that talk to libvirtd: imported lazily, errors as one type.

Modules that only read cgroupfs and /proc never import libvirt, so they run on hosts without it.
"""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

LIBVIRT_PYTHON = "libvirt-python (Debian: python3-libvirt)"


class LibvirtError(Exception):
    """A libvirt call failed, or libvirt-python is missing; ``exception`` is the original error."""

    def __init__(self, msg, exception=None):
        super().__init__(msg)
        self.exception = exception


def import_libvirt(reason=None):
    """The libvirt module, or LibvirtError with Ansible's missing-library message."""
    try:
        import libvirt  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise LibvirtError(missing_required_lib(LIBVIRT_PYTHON, reason=reason), exc) from exc
    return libvirt


def read_domains(uri, reason, hint="", running=False):
    """({name: inactive XML} of every domain of ``uri``, the names of the running ones or None), in one connection;
    the running ones are asked for only when ``running`` (one more call).  ``reason`` says what for (Ansible's
    missing-library message), ``hint`` is added to the connection error's advice."""
    definitions, active, _autostart = _read(uri, reason, hint, running, autostart=False)
    return definitions, active


def read_guests(uri, reason):
    """({name: inactive XML}, the running names, the names libvirt starts at boot), in one connection."""
    return _read(uri, reason, "", running=True, autostart=True)


def _read(uri, reason, hint, running, autostart):
    libvirt = import_libvirt(reason=reason)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtError("cannot connect to %s to read the defined domains: %s (is libvirtd running?%s)"
                           % (uri, exc, hint), exc) from exc
    try:
        definitions = {dom.name(): dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for dom in conn.listAllDomains(0)}
        active = frozenset(dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)) \
            if running else None
        starts = frozenset(dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)) \
            if autostart else None
        return definitions, active, starts
    except libvirt.libvirtError as exc:
        raise LibvirtError("cannot read the domain XML from %s: %s" % (uri, exc), exc) from exc
    finally:
        conn.close()
