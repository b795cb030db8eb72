"""host_prep's qemu hook re-creates partitions without the collection (it runs under libvirtd with the
standard library only), so it carries its own copy of libvirt's naming and controller list.  These tests
keep that copy equal to module_utils', and run its main() as libvirtd would, against a fake cgroup tree."""
import io
import json
import os
import pathlib
import sys

import jinja2
import pytest
import yaml
from hypothesis import given, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._partition import (
    LIBVIRT_CONTROLLERS,
    OPTIONAL_CONTROLLERS,
    PartitionNameError,
    parse_name,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import LOCK_PATH
from ansible_collections.rtvirt.kvm.plugins.module_utils._host_plan import HOOK_MARKER, legacy_hook
from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_record import RECORD_PATH

ROLE = pathlib.Path(__file__).resolve().parents[3] / "roles" / "host_prep"
TEMPLATE = ROLE / "templates" / "qemu-hook.py.j2"
SUBSYSTEMS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event",
              "net_prio", "hugetlb", "pids", "rdma", "misc")


def render():
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text()).render(
        host_prep_hook_python="/usr/bin/python3", ansible_managed="test", host_prep_hook_log="/dev/null",
        host_prep_hook_layout_file="/nonexistent/layout.json",
        __host_prep_partition_record="/nonexistent/record.json")


@pytest.fixture(scope="module")
def hook():
    """The rendered hook's functions, as libvirtd would run them."""
    namespace = {"__name__": "qemu_hook"}
    exec(compile(render(), str(TEMPLATE), "exec"), namespace)  # noqa: S102 -- our own template
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


def test_paths_are_the_collections():
    """The hook reads libvirt_partition's record and takes the engine's lock; the role installs it in qemu.d and
    recognises an earlier version of it by the marker line the rendered hook carries."""
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert role_vars["__host_prep_partition_record"] == RECORD_PATH
    assert role_vars["__host_prep_hook_path"].startswith(role_vars["__host_prep_legacy_hook_path"] + ".d/")
    namespace = {"__name__": "qemu_hook"}
    exec(compile(render(), str(TEMPLATE), "exec"), namespace)  # noqa: S102 -- our own template
    assert namespace["LOCK"] == LOCK_PATH


def test_the_rendered_hook_is_recognised_as_ours(tmp_path):
    rendered = tmp_path / "qemu"
    rendered.write_text(render())
    assert any(line.startswith(HOOK_MARKER) for line in render().splitlines()[:10])
    assert legacy_hook(str(rendered)) == "ours"
    foreign = tmp_path / "operator"
    foreign.write_text("#!/bin/sh\n# libvirt qemu hook of the operator\nexit 0\n")
    assert legacy_hook(str(foreign)) == "foreign"
    link = tmp_path / "link"
    link.symlink_to(rendered)
    assert legacy_hook(str(link)) == "foreign"       # someone's construction: never removed
    assert legacy_hook(str(tmp_path / "none")) == "absent"


# --------------------------------------------------------------------------- main() against a fake tree

V1 = ("cpuset", "cpu", "memory", "freezer")
KNOBS = ("cpuset.cpus", "cpuset.mems", "cpuset.cpu_exclusive")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A hybrid host of plain directories: v1 cpuset, cpu, memory, freezer and a cgroup2 tree, with the hook's
    inputs pointed at files of the test's own. mkdir in the cpuset tree makes the knob files empty, as the kernel
    does (a new v1 cpuset starts with empty cpus and mems)."""
    namespace = {"__name__": "qemu_hook"}
    exec(compile(render(), str(TEMPLATE), "exec"), namespace)  # noqa: S102 -- our own template
    root = tmp_path / "cg"
    lines = []
    for index, controller in enumerate(V1):
        (root / controller).mkdir(parents=True)
        lines.append("%d 1 0:%d / %s rw - cgroup cgroup rw,%s" % (30 + index, 40 + index, root / controller, controller))
    (root / "unified").mkdir()
    lines.append("60 1 0:60 / %s rw - cgroup2 cgroup2 rw" % (root / "unified"))
    for knob, value in zip(KNOBS, ("0-3", "0", "1")):
        (root / "cpuset" / knob).write_text(value + "\n")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    (tmp_path / "cgroups").write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
        "%s\t%d\t1\t1\n" % (c, i + 1) for i, c in enumerate(V1)))
    namespace.update(MOUNTINFO=str(tmp_path / "mountinfo"), PROC_CGROUPS=str(tmp_path / "cgroups"),
                     SYSTEMD_DIR=str(tmp_path / "no-systemd"), LOCK=str(tmp_path / "lock"),
                     LAYOUT=str(tmp_path / "layout.json"), RECORD=str(tmp_path / "record.json"),
                     LOG=str(tmp_path / "hook.log"))
    real_mkdir = os.mkdir

    def mkdir(path, *args):
        real_mkdir(path, *args)
        if str(path).startswith(str(root / "cpuset") + "/"):
            for knob in KNOBS:
                pathlib.Path(path, knob).write_text("")

    monkeypatch.setattr(os, "mkdir", mkdir)
    namespace["root"] = root
    namespace["tmp"] = tmp_path
    return namespace


def start(fake, monkeypatch, guest, partition=None, opt_out=False):
    """The hook's exit code for a guest's prepare/begin, as libvirtd calls it (domain XML on stdin)."""
    xml = "<domain type='kvm'><name>%s</name>" % guest
    if partition:
        xml += "<resource><partition>%s</partition></resource>" % partition
    if opt_out:
        xml += ("<metadata><rtvirt:hook xmlns:rtvirt='urn:rtvirt:kvm:hook:1' ensure_partition='false'/>"
                "</metadata>")
    monkeypatch.setattr(sys, "stdin", io.StringIO(xml + "</domain>"))
    return fake["main"](["/etc/libvirt/hooks/qemu.d/rtvirt-kvm-partitions", guest, "prepare", "begin", "-"])


def trees(fake, leaf):
    return sorted(p.name for p in fake["root"].iterdir() if (p / leaf).is_dir())


def test_a_recorded_partition_is_recreated_with_its_cpus(fake, monkeypatch):
    (fake["tmp"] / "record.json").write_text(json.dumps(
        {"version": 1, "partitions": {"/machine/tenant": {"cpus": "2-3", "exclusive": True}}}))
    assert start(fake, monkeypatch, "g1", "/machine/tenant") == 0
    assert trees(fake, "machine/tenant.partition") == ["cpu", "cpuset", "freezer", "memory", "unified"]
    leaf = fake["root"] / "cpuset" / "machine" / "tenant.partition"
    assert (leaf / "cpuset.cpus").read_text() == "2-3"
    assert (leaf.parent / "cpuset.cpus").read_text() == "0-3"       # the level above: its parent's
    assert (leaf / "cpuset.cpu_exclusive").read_text() == "1"
    assert "guest g1: re-created partition /machine/tenant" in (fake["tmp"] / "hook.log").read_text()


def test_a_partition_of_host_preps_layout_and_machine_are_recreated(fake, monkeypatch):
    (fake["tmp"] / "layout.json").write_text(json.dumps(
        {"partitions": {"/rt": {"name": "/rt", "cpus": "1-3", "exclusive": False}}, "machine": {"cpus": "0"}}))
    assert start(fake, monkeypatch, "g1", "/rt") == 0
    assert (fake["root"] / "cpuset" / "machine" / "cpuset.cpus").read_text() == "0"
    assert (fake["root"] / "cpuset" / "rt.partition" / "cpuset.cpus").read_text() == "1-3"
    assert trees(fake, "rt.partition") == ["cpu", "cpuset", "freezer", "memory", "unified"]


def test_an_existing_partition_is_never_an_error(fake, monkeypatch):
    (fake["tmp"] / "record.json").write_text(json.dumps({"version": 1, "partitions": {"/rt": {"cpus": "1"}}}))
    assert start(fake, monkeypatch, "g1", "/rt") == 0
    log = (fake["tmp"] / "hook.log").read_text()
    assert start(fake, monkeypatch, "g1", "/rt") == 0
    assert (fake["tmp"] / "hook.log").read_text() == log            # nothing made the second time
    # Not recorded but there (someone made it, in only some hierarchies): libvirt decides, the hook makes nothing.
    for tree in ("cpuset", "cpu"):
        os.mkdir(str(fake["root"] / tree / "theirs.partition"))
    assert start(fake, monkeypatch, "g2", "/theirs") == 0
    assert trees(fake, "theirs.partition") == ["cpu", "cpuset"]
    assert start(fake, monkeypatch, "g3") == 0                     # no <partition>: libvirt's /machine


def test_an_unrecorded_missing_partition_is_refused_and_not_made(fake, monkeypatch, capsys):
    (fake["tmp"] / "record.json").write_text(json.dumps({"version": 1, "partitions": {"/rt": {"cpus": "1"}}}))
    assert start(fake, monkeypatch, "web-1", "/machine/prodution") == 1
    err = capsys.readouterr().err
    assert err.startswith("rtvirt.kvm qemu hook: guest web-1 names partition /machine/prodution, which does not exist")
    assert "rtvirt.kvm does not manage" in err and "rtvirt.kvm.libvirt_partition" in err
    assert "correct <resource><partition> in the domain XML" in err
    assert trees(fake, "machine/prodution.partition") == []
    assert "guest web-1 names partition /machine/prodution" in (fake["tmp"] / "hook.log").read_text()
    # Without a record or layout at all, the same: nothing is the collection's.
    (fake["tmp"] / "record.json").unlink()
    assert start(fake, monkeypatch, "web-1", "/rt") == 1
    assert trees(fake, "rt.partition") == []


def test_a_guest_that_opts_out_is_left_to_libvirt(fake, monkeypatch):
    (fake["tmp"] / "record.json").write_text(json.dumps({"version": 1, "partitions": {"/rt": {"cpus": "1"}}}))
    assert start(fake, monkeypatch, "g1", "/rt", opt_out=True) == 0
    assert start(fake, monkeypatch, "g1", "/nobodys", opt_out=True) == 0
    assert trees(fake, "rt.partition") == [] and trees(fake, "nobodys.partition") == []
