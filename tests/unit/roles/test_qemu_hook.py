"""host_prep's qemu hook re-creates partitions without the collection (it runs under libvirtd with the
standard library only), so it carries its own copy of libvirt's naming and controller list.  These tests
keep that copy equal to module_utils'."""
import pathlib

import jinja2
import pytest
from hypothesis import given, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    LIBVIRT_CONTROLLERS,
    OPTIONAL_CONTROLLERS,
    PartitionNameError,
    parse_name,
)

TEMPLATE = pathlib.Path(__file__).resolve().parents[3] / "roles" / "host_prep" / "templates" / "qemu-hook.py.j2"
SUBSYSTEMS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event",
              "net_prio", "hugetlb", "pids", "rdma", "misc")


@pytest.fixture(scope="module")
def hook():
    """The rendered hook's functions, as libvirtd would run them (minus main())."""
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text()).render(
        host_prep_hook_python="/usr/bin/python3", ansible_managed="test", host_prep_hook_log="/dev/null",
        host_prep_hook_layout_file="/nonexistent/layout.json")
    namespace = {"__name__": "qemu_hook"}
    exec(compile(text, str(TEMPLATE), "exec"), namespace)  # noqa: S102 -- our own template
    return namespace


def test_controllers_are_libvirts(hook):
    assert hook["CONTROLLERS"] == LIBVIRT_CONTROLLERS
    assert hook["OPTIONAL"] == OPTIONAL_CONTROLLERS


@pytest.mark.parametrize("name", [
    "/machine", "/rt", "/machine/production", "/machine/tenant/rt", "/machine/rt.v2", "/machine/cpu",
    "/machine/cpuset.x", "/machine/_x", "/machine/.x", "/machine/cgroup.x", "/rt/machine", "/tenant/machine/x",
    "/machine/net_cls", "/machine/my-rt:1",
])
def test_levels_match_parse_name(hook, name):
    assert hook["levels"](name, SUBSYSTEMS) == list(parse_name(name, SUBSYSTEMS).dirs)


_LEVEL = st.text(alphabet="abcmpu_.:-0123456789", min_size=1, max_size=12) | st.sampled_from(
    SUBSYSTEMS + ("machine", "system", "user", "cgroup.x", "_a", ".a", "cpu.x", "rt.partition"))


@given(st.lists(_LEVEL, min_size=1, max_size=4))
def test_levels_match_parse_name_for_any_name_it_accepts(hook, parts):
    name = "/" + "/".join(parts)
    try:
        expected = list(parse_name(name, SUBSYSTEMS).dirs)
    except PartitionNameError:
        return      # the module refuses it, so host_prep never hands it to the hook
    assert hook["levels"](name, SUBSYSTEMS) == expected
