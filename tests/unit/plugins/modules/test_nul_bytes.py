# -*- coding: utf-8 -*-
"""A NUL byte in any argument fails cleanly, naming the argument, before the module reads anything.

Found by test_hostile_arguments: open() raises ValueError ("embedded null byte"), not OSError, so a NUL in
proc_root, a grub path or a cgroup name crashed the readers that expect OSError.
"""
import importlib
import sys

import pytest

from _module_runner import run_module

CALLS = [
    ("cpu_isolation_facts", {"proc_root": "/proc\x00"}, "proc_root"),
    ("irq_affinity", {"cpus": "0", "sys_root": "/sys/\x00"}, "sys_root"),
    ("kernel_cmdline", {"path": "/etc/default/grub\x00", "update_command": []}, "path"),
    ("cgroup_cpuset", {"path": "machine/r\x00t", "mountpoint": "/nonexistent", "hierarchy_version": 2}, "path"),
    ("libvirt_partition", {"name": "/machine/r\x00t"}, "name"),
    ("pcpu_allocation", {"name": "rt1", "vcpus": 1, "pool": "2", "sys_root": "\x00"}, "sys_root"),
    ("realtime_domain", {"name": "rt\x001", "state": "absent"}, "name"),
    ("guest_plan", {"guests": [{"name": "rt1", "partition": "/r\x00t"}]}, "guests[0].partition"),
    ("host_plan", {"cmdline": {"path": "/etc/default/grub\x00"}}, "cmdline.path"),
    ("remediation_findings", {"targets": "\x00"}, "targets"),
]


@pytest.mark.parametrize("name, args, where", CALLS, ids=[c[0] for c in CALLS])
def test_nul_byte_fails_naming_the_argument(name, args, where, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # were the check gone: no libvirtd reached, ImportError
    module = importlib.import_module("ansible_collections.rtvirt.kvm.plugins.modules." + name)
    result = run_module(module, args)
    assert result.get("failed"), result
    assert result["msg"].startswith(where + " is ") and "holds a NUL byte" in result["msg"], result["msg"]
