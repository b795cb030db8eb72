# -*- coding: utf-8 -*-
"""_arguments: the NUL byte no argument may hold, found at any depth and named by where it sits."""
import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._arguments import nul_byte_problem


@pytest.mark.parametrize("params, where", [
    ({"proc_root": "/proc\x00"}, "proc_root is '/proc\\x00'"),
    ({"cmdline": {"path": "/etc/default/grub", "isolcpus_flags": "a\x00"}}, "cmdline.isolcpus_flags is 'a\\x00'"),
    ({"guests": [{"name": "rt1"}, {"name": "rt\x002"}]}, "guests[1].name is 'rt\\x002'"),
    ({"vcpupin": {"0\x00": "2"}}, "a key of vcpupin is '0\\x00'"),
    ({"absent": ["quiet", "x" * 100 + "\x00"]}, "absent[1] is '%s'..." % ("x" * 60)),
])
def test_names_the_argument_and_the_rule(params, where):
    problem = nul_byte_problem(dict(params, other="fine", _ansible_check_mode=True))
    assert problem.startswith(where + ": it holds a NUL byte"), problem


def test_clean_arguments_pass():
    assert nul_byte_problem({"name": "rt1", "vcpus": 2, "pcpus": ["2", "3"], "vcpupin": {"0": "2"}, "x": None,
                             "_ansible_tmpdir": "\x00 is ansible's business"}) is None
