"""libvirt_partition on this machine's v1 hierarchies: a write the kernel refuses half-way is rolled back everywhere.

The module plans against the kernel's rules before it writes, so a refusal comes from the host changing under a
run (another tool, an operator). The test makes exactly that happen: libvirt_partition runs in-process (its real
main() and the real kernel), and right before one chosen write reaches the kernel the test changes the host so
that the kernel refuses that write for real. Every hierarchy written before must then be back as it was, and the
message must name the cgroup, the knob, the value and the rule.
"""
import os
import pathlib
import sys
import uuid

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils import _cpuset_fs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cgroupfs import discover_layout
from ansible_collections.rtvirt.kvm.plugins.modules import libvirt_partition

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "unit" / "plugins" / "modules"))
from _module_runner import run_module  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.real

CGROUP = pathlib.Path("/sys/fs/cgroup")


def _v1_mounts():
    layout = discover_layout()
    if layout.cpuset is None or layout.cpuset.version != 1 or os.geteuid() != 0:
        pytest.skip("needs root and cgroup v1 controllers (this machine has %s)" % layout.mode)
    return layout


@pytest.fixture
def parent():
    """A top-level test partition on CPUs 0-1 the test owns; everything below it is removed afterwards."""
    _v1_mounts()
    name = "/rtvirt-fp-%s" % uuid.uuid4().hex[:8]
    made = run_module(libvirt_partition, {"name": name})
    assert not made.get("failed"), made.get("msg")
    yield name, made["paths"]
    gone = run_module(libvirt_partition, {"name": name + "/rt", "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    gone = run_module(libvirt_partition, {"name": name, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")


@pytest.fixture
def before_write(monkeypatch):
    """before_write(path, action): run action() once, right before the module's write to path reaches the kernel."""
    real_write = _cpuset_fs.KernelFiles.write
    armed = {}

    def write(self, target, data):
        action = armed.pop(target, None)
        if action is not None:
            action()
        return real_write(self, target, data)
    monkeypatch.setattr(_cpuset_fs.KernelFiles, "write", write)

    def arm(path, action):
        armed[str(path)] = action
        return armed
    return arm


def _tree(paths):
    """Every file's value (readable knobs) and every directory under the given cgroup paths."""
    seen = {}
    for path in paths:
        path = pathlib.Path(path)
        if not path.is_dir():
            seen[str(path)] = None
            continue
        for entry in sorted(path.rglob("*")):
            if entry.is_dir():
                seen[str(entry)] = "<dir>"
            elif entry.name.startswith(("cpu.", "cpuset.", "memory.limit", "memory.soft", "memory.memsw.limit",
                                        "freezer.state", "blkio.bfq.weight")) and not entry.name.endswith("stat"):
                try:
                    seen[str(entry)] = entry.read_text()
                except OSError:
                    continue
    return seen


def test_new_partition_refused_in_cpuset_leaves_no_directory_anywhere(parent, before_write):
    """The child is made in every hierarchy but cpuset first; the kernel then refuses its cpuset.cpus (the
    parent lost the CPU in between): every directory the run made, in every hierarchy, is gone again."""
    name, parent_paths = parent
    parent_cpuset = pathlib.Path(parent_paths["cpuset"])
    child = name + "/rt"
    leaf = pathlib.Path(parent_cpuset.name) / "rt.partition"
    target = parent_cpuset / "rt.partition" / "cpuset.cpus"
    before = _tree(parent_paths.values())

    def narrow_parent():
        (parent_cpuset / "cpuset.cpus").write_text("0")
    before_write(target, narrow_parent)
    failed = run_module(libvirt_partition, {"name": child, "cpus": "1", "cpu_shares": 512})
    assert failed.get("failed"), failed
    message = failed["msg"]
    # The cgroup, the knob, the value, the kernel's words and the rule.
    assert "write '1' to %s/cpuset.cpus failed: Permission denied (EACCES)" % leaf in message, message
    assert "a child may only hold CPUs and nodes its parent has" in message, message
    assert "rolled back" in message, message
    made_before = [w["file"] for w in failed["writes"] if w["value"] == "<mkdir>" and "/cpuset/" not in w["file"]]
    assert len(made_before) >= 3, failed["writes"]  # cpu, memory, freezer, ... were written before cpuset
    for directory in made_before:
        assert not os.path.exists(directory), directory
    (parent_cpuset / "cpuset.cpus").write_text("0-1")
    assert _tree(parent_paths.values()) == before

    again = run_module(libvirt_partition, {"name": child, "cpus": "1", "cpu_shares": 512})
    assert not again.get("failed") and again["changed"], again
    assert not run_module(libvirt_partition, {"name": child, "cpus": "1", "cpu_shares": 512})["changed"]


def test_change_refused_by_the_last_controller_puts_every_hierarchy_back(parent, before_write):
    """An existing partition changed in cpuset, cpu and memory; memory, written last, refuses its limit (its
    memory+swap limit was lowered in between): cpuset.cpus and cpu.shares are back at their old values."""
    name = parent[0]
    child = name + "/rt"
    made = run_module(libvirt_partition, {"name": child, "cpus": "0-1", "cpu_shares": 512})
    assert not made.get("failed"), made.get("msg")
    paths = made["paths"]
    memory = pathlib.Path(paths["memory"])
    before = _tree(paths.values())

    def lower_memsw():
        (memory / "memory.memsw.limit_in_bytes").write_text(str(32 << 20))
    before_write(memory / "memory.limit_in_bytes", lower_memsw)
    asked = {"name": child, "cpus": "1", "cpu_shares": 2048, "memory_hard_limit": "64M"}
    failed = run_module(libvirt_partition, asked)
    assert failed.get("failed"), failed
    message = failed["msg"]
    assert str(memory / "memory.limit_in_bytes") in message or "memory.limit_in_bytes" in message, message
    assert str(64 << 20) in message and "Invalid argument" in message and "EINVAL" in message, message
    assert "memory.memsw.limit_in_bytes" in message, message  # the rule the kernel applied
    written = [w["file"] for w in failed["writes"]]
    assert str(pathlib.Path(paths["cpuset"]) / "cpuset.cpus") in written, written
    assert str(pathlib.Path(paths["cpu"]) / "cpu.shares") in written, written
    (memory / "memory.memsw.limit_in_bytes").write_text("-1")
    assert _tree(paths.values()) == before
    assert (pathlib.Path(paths["cpuset"]) / "cpuset.cpus").read_text().strip() == "0-1"
    assert (pathlib.Path(paths["cpu"]) / "cpu.shares").read_text().strip() == "512"

    again = run_module(libvirt_partition, asked)
    assert not again.get("failed") and again["changed"], again
    assert not run_module(libvirt_partition, asked)["changed"]
