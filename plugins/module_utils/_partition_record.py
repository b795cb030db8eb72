# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record of the partitions rtvirt.kvm manages: what host_prep's qemu hook may re-create.

libvirt_partition is the one writer of partitions (host_prep's partition tasks and realtime_vm call it), so it
keeps the record: a present partition is entered with what it was given (CPUs, memory nodes, exclusivity), an
absent one is dropped.  The hook re-creates exactly the recorded partitions (plus host_prep's layout) and
refuses a guest whose partition is neither recorded nor present, so a typo in a domain XML never becomes a new
cgroup.  JSON beside the layout file: the hook reads it with the standard library at every guest start.

Only hosts without systemd keep a record: there the hook is what brings partitions back after a reboot; on
systemd hosts partitions are slice units systemd keeps, and the hook does nothing.
"""

from __future__ import annotations

import json
import os

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import PartitionError

RECORD_PATH = "/etc/libvirt/hooks/rtvirt-kvm-partitions.json"
VERSION = 1


def read_record(path):
    """{"version", "partitions": {name: entry}}; an empty record when the file does not exist.  A file that is not
    a record is refused rather than replaced: someone edited it, and guessing would drop partitions."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return {"version": VERSION, "partitions": {}}
    except OSError as exc:
        raise PartitionError("cannot read the partition record %s: %s" % (path, exc.strerror)) from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        record = exc
    if not isinstance(record, dict) or not isinstance(record.get("partitions"), dict):
        raise PartitionError("the partition record %s is not a JSON object with a \"partitions\" object (%s); fix it "
                             "or remove it (the next libvirt_partition run for each partition records it again)"
                             % (path, record if isinstance(record, ValueError) else "found %s" % type(record).__name__))
    return record


def entry_for(desired, previous):
    """The record entry of a present partition: what was given now over what was recorded before (a call without
    O(cpus) keeps the partition's CPUs, so it keeps the recorded ones too).  ``exclusive`` is kept only when true:
    false and unset both mean a new directory the hook leaves non-exclusive."""
    entry = dict(previous or {})
    for key, value in (("cpus", desired.cpus), ("mems", desired.mems)):
        if value is not None:
            entry[key] = format_cpulist(value)
    if desired.exclusive is not None:
        entry.pop("exclusive", None)
        if desired.exclusive:
            entry["exclusive"] = True
    return entry


def plan_record(record, desired, keep=True):
    """The record after ``desired`` (a ``_partition.Desired``), or None when it does not change.  ``keep`` false
    drops the entry of a present partition too (one the hook need not re-create)."""
    name = desired.pname.name
    partitions = dict(record["partitions"])
    if desired.state == "absent" or not keep:
        if name not in partitions:
            return None
        del partitions[name]
    else:
        entry = entry_for(desired, partitions.get(name))
        if partitions.get(name) == entry:
            return None
        partitions[name] = entry
    return dict(record, version=VERSION, partitions=partitions)


def describe(path, name, entry):
    """The planned step in words; ``entry`` None: dropped."""
    if entry is None:
        return "drop %s from the partition record %s" % (name, path)
    return "record %s in %s (%s)" % (name, path, json.dumps(entry, sort_keys=True))


def write_record(path, record):
    """Replace the record atomically: the hook may read it at any moment."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, ".%s.tmp" % os.path.basename(path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with open(tmp, "w") as handle:
            handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise PartitionError("cannot write the partition record %s: %s; the partition itself is converged, but the "
                             "qemu hook will not re-create it until the record is written (run again)"
                             % (path, exc.strerror)) from None
