# -*- coding: utf-8 -*-
"""kernel_cmdline and irq_affinity through main() against fake trees."""
from __future__ import annotations

import os

import pytest

from _module_runner import run_module
from ansible_collections.rtvirt.kvm.plugins.modules import irq_affinity, kernel_cmdline


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text + "\n")


@pytest.fixture
def grub(tmp_path):
    path = tmp_path / "grub"
    path.write_text('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet"\n')
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz quiet\n")
    return {"path": str(path), "proc_cmdline": str(cmdline), "update_command": []}


def test_kernel_cmdline_check_apply_idempotent(grub):
    args = dict(grub, params={"isolcpus": "domain,1", "nohz_full": "1"})
    before = open(grub["path"]).read()
    checked = run_module(kernel_cmdline, args, check_mode=True, diff=True)
    assert checked["changed"] and open(grub["path"]).read() == before
    assert "isolcpus=domain,1" in checked["diff"]["after"]
    applied = run_module(kernel_cmdline, args)
    assert applied["changed"] and applied["reboot_required"]
    assert 'GRUB_CMDLINE_LINUX="quiet isolcpus=domain,1 nohz_full=1"' in open(grub["path"]).read()
    again = run_module(kernel_cmdline, args)
    assert not again["changed"] and again["reboot_required"] and again["pending"] == ["isolcpus", "nohz_full"]


def test_kernel_cmdline_refuses_unparseable(grub):
    with open(grub["path"], "w") as handle:
        handle.write('GRUB_CMDLINE_LINUX="quiet $EXTRA"\n')
    result = run_module(kernel_cmdline, dict(grub, params={"isolcpus": "1"}))
    assert result.get("failed") and "nothing written" in result["msg"]
    assert open(grub["path"]).read() == 'GRUB_CMDLINE_LINUX="quiet $EXTRA"\n'


def test_kernel_cmdline_without_grub(tmp_path, grub):
    result = run_module(kernel_cmdline, dict(grub, path=str(tmp_path / "none"), params={"isolcpus": "1"}))
    assert not result["changed"] and result["bootloader"] == "none" and "not a GRUB host" in result["msg"]


@pytest.fixture
def proc(tmp_path):
    write(str(tmp_path / "irq/default_smp_affinity"), "3")
    write(str(tmp_path / "irq/10/smp_affinity_list"), "0-1")
    write(str(tmp_path / "irq/11/smp_affinity_list"), "0")
    os.makedirs(str(tmp_path / "irq/12"))
    write(str(tmp_path / "irq/12/smp_affinity_list"), "1")
    os.chmod(str(tmp_path / "irq/12/smp_affinity_list"), 0o444)
    return str(tmp_path)


def test_irq_affinity(proc):
    if os.geteuid() == 0:
        # root ignores file modes: make irq 12 refuse by turning its file into a directory
        os.remove(os.path.join(proc, "irq/12/smp_affinity_list"))
        os.makedirs(os.path.join(proc, "irq/12/smp_affinity_list"))
    checked = run_module(irq_affinity, {"cpus": "0", "proc_root": proc}, check_mode=True)
    assert checked["changed"] and open(os.path.join(proc, "irq/default_smp_affinity")).read().strip() == "3"
    result = run_module(irq_affinity, {"cpus": "0", "proc_root": proc})
    assert result["changed"]
    assert [m["irq"] for m in result["moved"]] == [10]
    assert open(os.path.join(proc, "irq/default_smp_affinity")).read().strip() == "1"
    assert open(os.path.join(proc, "irq/10/smp_affinity_list")).read().strip() == "0"
    again = run_module(irq_affinity, {"cpus": "0", "proc_root": proc})
    assert not again["changed"]


def test_irq_affinity_check_mode_on_a_converged_host(tmp_path):
    proc, sys_root = str(tmp_path / "proc"), str(tmp_path / "sys")
    write(proc + "/irq/default_smp_affinity", "1")
    write(proc + "/irq/10/smp_affinity_list", "0")
    write(proc + "/irq/10/smp_affinity", "1")
    # Managed IRQs outside the CPUs, which no run can move: a read-only smp_affinity, and debugfs's flag.
    write(proc + "/irq/11/smp_affinity_list", "1")
    write(proc + "/irq/11/smp_affinity", "2")
    os.chmod(proc + "/irq/11/smp_affinity", 0o444)
    write(proc + "/irq/12/smp_affinity_list", "1")
    write(proc + "/irq/12/smp_affinity", "2")
    write(sys_root + "/kernel/debug/irq/irqs/12", "handler: handle_edge_irq\nflags: 0x0\n IRQD_AFFINITY_MANAGED\n")
    checked = run_module(irq_affinity, {"cpus": "0", "proc_root": proc, "sys_root": sys_root}, check_mode=True)
    assert not checked["changed"] and checked["moved"] == []
    assert [u["irq"] for u in checked["unmovable"]] == [11, 12]
    # Without the flag, IRQ 12 would move: check mode says so.
    write(sys_root + "/kernel/debug/irq/irqs/12", "handler: handle_edge_irq\n")
    checked = run_module(irq_affinity, {"cpus": "0", "proc_root": proc, "sys_root": sys_root}, check_mode=True)
    assert checked["changed"] and [m["irq"] for m in checked["moved"]] == [12]
    assert open(proc + "/irq/12/smp_affinity_list").read().strip() == "1"


@pytest.mark.parametrize("cpus", ["99999999999999999999", "0-99999999999999999999", "4294967296"])
def test_irq_affinity_refuses_a_cpu_no_host_has_without_hanging(proc, cpus):
    # Found by test_hostile_arguments: the mask of CPU 10**20 was built before any write (a hang, then MemoryError).
    result = run_module(irq_affinity, {"cpus": cpus, "proc_root": proc})
    assert result.get("failed") and "beyond any CPU or NUMA node Linux can have" in result["msg"], result
    assert open(os.path.join(proc, "irq/default_smp_affinity")).read().strip() == "3"


def test_kernel_cmdline_grub_file_that_is_not_text_is_no_grub(grub):
    # Found by test_hostile_arguments: a path that is a directory raised IsADirectoryError out of the module; a
    # file that is not text raised UnicodeDecodeError from the boot loader detection. Neither is a GRUB file.
    with open(grub["path"], "wb") as handle:
        handle.write(b'GRUB_CMDLINE_LINUX="\xff\xfe"\n')
    result = run_module(kernel_cmdline, dict(grub, params={"isolcpus": "1"}))
    assert not result.get("failed") and result["bootloader"] == "none", result
    with open(grub["path"], "rb") as handle:
        assert handle.read() == b'GRUB_CMDLINE_LINUX="\xff\xfe"\n'


def test_kernel_cmdline_path_that_is_a_directory_is_no_grub(tmp_path, grub):
    result = run_module(kernel_cmdline, dict(grub, path=str(tmp_path), params={"isolcpus": "1"}))
    assert not result.get("failed") and result["bootloader"] == "none", result


def test_kernel_cmdline_unwritable_directory_fails_and_leaves_the_file(tmp_path, grub, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(kernel_cmdline.tempfile, "mkstemp", refuse)
    before = open(grub["path"]).read()
    result = run_module(kernel_cmdline, dict(grub, params={"isolcpus": "1"}))
    assert result.get("failed") and result["msg"].startswith("cannot write %s, left as it was" % grub["path"]), result
    assert open(grub["path"]).read() == before
