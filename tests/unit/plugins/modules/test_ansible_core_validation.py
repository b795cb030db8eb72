# -*- coding: utf-8 -*-
"""Where ansible-core's argument validation crashes instead of failing, the modules still fail with a message.

Found by test_hostile_arguments (ansible-core 2.19): an int option given a three-item list holding a huge number
raised OverflowError from ``check_type_int`` (``decimal.Decimal`` reads the list as a sign/digits/exponent tuple),
and a dict option with suboptions given a scalar raised TypeError (see test_host_plan for that one).
"""
import importlib
import sys

import pytest

from _module_runner import run_module

HUGE = [2 ** 63, None, None]
CALLS = [
    ("realtime_domain", {"name": "rt1", "vcpus": HUGE, "memory_mib": 1, "vcpupin": {}, "emulator_cpus": "0"},
     "argument 'vcpus' is of type list"),
    ("cgroup_cpuset", {"path": "rt", "procs": [HUGE]}, "argument 'procs[0]' is of type list"),
    ("pcpu_allocation", {"pool": "1", "guests": [{"name": "a", "vcpus": [0, [1], 2 ** 70]}]},
     "argument 'guests[0].vcpus' is of type list"),
    ("libvirt_partition", {"name": "/machine/rt", "cpu_shares": HUGE}, "argument 'cpu_shares' is of type list"),
]


@pytest.mark.parametrize("name, args, message", CALLS, ids=[c[0] for c in CALLS])
def test_an_int_option_ansible_core_cannot_convert_fails_with_a_message(name, args, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # were the workaround gone: no libvirtd reached
    module = importlib.import_module("ansible_collections.rtvirt.kvm.plugins.modules." + name)
    result = run_module(module, args)
    assert result.get("failed") and result["msg"] == message + " and we were unable to convert to int: give a number"
