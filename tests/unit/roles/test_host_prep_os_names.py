# -*- coding: utf-8 -*-
"""host_prep's package and service names per OS family (roles/host_prep/vars/<family>.yml), as host_plan resolves
them: Debian's exactly as before families existed, the RHEL family's modular daemons, RHEL 8's libvirtd."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from ansible_collections.rtvirt.kvm.plugins.module_utils import _bootloader as bl
from ansible_collections.rtvirt.kvm.plugins.module_utils import _host_plan as hs
from ansible_collections.rtvirt.kvm.plugins.modules import host_plan

REPO = pathlib.Path(__file__).resolve().parents[3]
VARS = REPO / "roles" / "host_prep" / "vars"
FIXTURES = REPO / "tests" / "unit" / "fixtures" / "bootloader"

# What the role installed, started and edited on every host before it knew OS families, plus the libvirt bindings
# for the host's own Python, which the libvirt modules need on a target whose interpreter is /usr/bin/python3.
DEBIAN = {
    "libvirt_packages": ["libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
                         "python3-libvirt"],
    "libvirt_service_packages": ["libvirt-daemon-system"],
    "libvirt_units": ["libvirtd.service"],
    "libvirt_reload_unit": "libvirtd.service",
    "irqbalance_file": "/etc/default/irqbalance",
    "irqbalance_service": "irqbalance",
}
MODULAR = ["virtqemud.socket", "virtqemud-ro.socket", "virtqemud-admin.socket", "virtproxyd.socket", "virtlogd.socket"]


def table():
    """What vars/main.yml's __host_prep_os_names holds: every vars/<family>*.yml file's __host_prep_os."""
    return {path.stem: yaml.safe_load(path.read_text())["__host_prep_os"]
            for path in sorted(VARS.glob("*.yml")) if path.stem != "main"}


def test_vars_main_reads_every_family_file():
    names = yaml.safe_load((VARS / "main.yml").read_text())["__host_prep_os_names"]
    assert sorted(names) == sorted(table()) == ["Debian", "RedHat", "RedHat_8"]
    for family, expression in names.items():
        assert "/vars/%s.yml'" % family in expression


@pytest.mark.parametrize("family, major, expected, used", [
    ("Debian", "12", DEBIAN, ["Debian"]),
    ("Suse", "15", DEBIAN, ["Debian"]),
    (None, None, DEBIAN, ["Debian"]),
    ("RedHat", "9", dict(libvirt_packages=["libvirt-daemon-kvm", "qemu-kvm", "libvirt-client", "python3-libvirt"],
                         libvirt_service_packages=[], libvirt_units=MODULAR, libvirt_reload_unit="virtqemud.service",
                         irqbalance_file="/etc/sysconfig/irqbalance", irqbalance_service="irqbalance"), ["RedHat"]),
    ("RedHat", "8", dict(libvirt_packages=["libvirt-daemon-kvm", "qemu-kvm", "libvirt-client", "python3-libvirt"],
                         libvirt_service_packages=[], libvirt_units=["libvirtd.service"],
                         libvirt_reload_unit="libvirtd.service", irqbalance_file="/etc/sysconfig/irqbalance",
                         irqbalance_service="irqbalance"), ["RedHat", "RedHat_8"]),
])
def test_names_per_family(family, major, expected, used):
    assert hs.resolve_os_names(table(), family, major) == (expected, used)


def test_the_roles_variables_win_and_null_leaves_the_familys():
    names, _used = hs.resolve_os_names(table(), "RedHat", "9", overrides={
        "libvirt_packages": ["libvirt"], "libvirt_service_packages": None, "irqbalance_file": "/srv/irqbalance"})
    assert names["libvirt_packages"] == ["libvirt"] and names["libvirt_service_packages"] == []
    assert names["irqbalance_file"] == "/srv/irqbalance" and names["libvirt_units"] == MODULAR


def test_without_a_table_host_plan_checks_what_it_did_before():
    assert hs.resolve_os_names({}, "RedHat", "9") == (hs.OS_NAME_DEFAULTS, [])
    assert hs.OS_NAME_DEFAULTS["libvirt_units"] == ["libvirtd.service"] and hs.OS_NAME_DEFAULTS["libvirt_packages"] == []


def test_an_unknown_name_is_refused():
    with pytest.raises(hs.OsNamesError, match=r"os_names\['RedHat'\] names libvirt_unit, which host_plan does not"):
        hs.resolve_os_names({"RedHat": {"libvirt_unit": "x"}}, "RedHat")


@pytest.mark.parametrize("tree, family, major", [
    ("rhel9", "RedHat", "9"), ("rhel8", "RedHat", "8"), ("fedora40", "RedHat", "40"), ("bls-no-grubby", "RedHat", "9"),
    ("debian12", "Debian", "12"), ("ubuntu2204", "Debian", "22"), ("unknown", None, "3"),
])
def test_family_from_os_release(tree, family, major):
    assert hs.os_release_family(bl.read_os_release(str(FIXTURES / tree))) == (family, major)


def params(**kwargs):
    base = dict(os_family=None, os_major_version=None, os_names=table(), libvirt=None, irqs=None)
    base.update(kwargs)
    return base


@pytest.mark.parametrize("tree, units", [("rhel9", MODULAR), ("rhel8", ["libvirtd.service"]),
                                         ("fedora40", MODULAR), ("debian12", ["libvirtd.service"])])
def test_host_plan_reads_the_family_from_os_release_without_facts(monkeypatch, tree, units):
    monkeypatch.setattr(host_plan, "read_os_release", lambda: bl.read_os_release(str(FIXTURES / tree)))
    family, names = host_plan.host_os(params(libvirt={"packages": None, "service_packages": None, "units": None}))
    assert names["libvirt_units"] == units and family == ("Debian" if tree == "debian12" else "RedHat")


def test_host_plan_prefers_the_plays_facts(monkeypatch):
    monkeypatch.setattr(host_plan, "read_os_release", lambda: bl.read_os_release(str(FIXTURES / "debian12")))
    family, names = host_plan.host_os(params(os_family="RedHat", os_major_version="8", irqs={"irqbalance_file": None}))
    assert family == "RedHat" and names["libvirt_units"] == ["libvirtd.service"]
    assert names["irqbalance_file"] == "/etc/sysconfig/irqbalance" and names["from"] == ["RedHat", "RedHat_8"]


def test_libvirt_check_names_every_unit_that_is_not_up():
    units = {"virtqemud.socket": {"active": "active", "enabled": "enabled"},
             "virtproxyd.socket": {"active": "inactive", "enabled": "disabled"},
             "libvirtd.service": {"active": "failed", "enabled": "enabled"}}
    reasons = hs.check_libvirt([], None, units, log_dir="/")
    assert "virtproxyd.socket is inactive" in reasons and "virtproxyd.socket is disabled at boot" in reasons
    assert "libvirtd is failed" in reasons and not any(r.startswith("virtqemud.socket") for r in reasons)


def test_rpm_answer_is_read_line_by_line(monkeypatch):
    asked = []

    class Proc:
        stdout = "libvirt-daemon-kvm\npackage qemu-kvm is not installed\nlibvirt-client\n"

    def fake_run(argv, **kwargs):
        asked.append(argv)
        return Proc()

    monkeypatch.setattr(host_plan.subprocess, "run", fake_run)
    names = ["libvirt-daemon-kvm", "qemu-kvm", "libvirt-client"]
    assert host_plan._rpm_installed(names) == {"libvirt-daemon-kvm", "libvirt-client"}
    assert asked == [["rpm", "-q", "--queryformat", "%{NAME}\n"] + names]
    assert host_plan._rpm_installed([]) == set() and len(asked) == 1
