"""libvirtd restarted while realtime_domain runs, on the real libvirtd: no guest is left half-defined or unpinned.

realtime_domain runs in-process (its real main(), the real libvirt-python); the test wraps the module's one door to
libvirt (``_Libvirt.call``) so that right before the chosen call libvirtd is stopped by PID and started again the way
it was started (tests/support/libvirt_rig.py ``restart_libvirtd``). The module's connection dies with the daemon, as an
operator's ``systemctl restart libvirtd`` or a crash would do it. After each fault the definition libvirt keeps on disk
is either absent or carries every part the module owns, a running guest runs on the pins it is defined with, the
message says to rerun, and the same call afterwards converges (and a further one changes nothing).
"""
import os
import pathlib
import sys

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._domain_xml import differences, owned_view
from ansible_collections.rtvirt.kvm.plugins.modules import realtime_domain
from tests.support import libvirt_rig as rig_lib
from tests.support.ansible_runner import run_module as ansible_module
from tests.support.fixtures_libvirt import online_cpus, wait_for_free_pcpu

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "unit" / "plugins" / "modules"))
from _module_runner import run_module  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.libvirt

DEFINITIONS = pathlib.Path("/etc/libvirt/qemu")


@pytest.fixture
def restart_before(monkeypatch, libvirt_rig):
    """restart_before(prefix): the next module call to libvirt whose description starts with prefix finds libvirtd
    restarted (once). Returns a list that records the restarts done."""
    done = []
    real_call = realtime_domain._Libvirt.call

    def arm(prefix):
        def call(self, what, func, *args):
            if what.startswith(prefix) and not done:
                done.append(rig_lib.restart_libvirtd(libvirt_rig.state_dir).libvirtd_pid)
            return real_call(self, what, func, *args)
        monkeypatch.setattr(realtime_domain._Libvirt, "call", call)
        done.clear()
        return done
    yield arm
    monkeypatch.setattr(realtime_domain._Libvirt, "call", real_call)


def _on_disk(name):
    path = DEFINITIONS / ("%s.xml" % name)
    return path.read_text() if path.exists() else None


def _vcpu_affinities(rig, name):
    return {vcpu: pathlib.Path("/proc/%d/task/%d/status" % (rig.qemu_pid(name), tid)).read_text()
            .split("Cpus_allowed_list:", 1)[1].split()[0] for vcpu, tid in rig.threads(name).vcpus.items()}


def _assert_whole_or_absent(rig, name, args):
    """The definition on disk is absent or has every owned part asked for; a running guest runs on its pins."""
    wanted = run_module(realtime_domain, dict(args, running=False), check_mode=True)["xml"]
    text = _on_disk(name)
    if text is None:
        assert name not in rig.domains()
        return None
    assert differences(text, wanted) == [], (text, wanted)
    if name in rig.domains(inactive=False):
        assert _vcpu_affinities(rig, name) == {int(k): v for k, v in args["vcpupin"].items()}
        assert differences(rig.virsh("dumpxml", name).stdout, wanted) == [], "running on other pins than defined"
    return owned_view(text)


def _converges(rig, name, args):
    again = run_module(realtime_domain, args)
    assert not again.get("failed"), again.get("msg")
    assert name in rig.domains(inactive=False)
    assert _assert_whole_or_absent(rig, name, args) is not None
    assert _vcpu_affinities(rig, name) == {int(k): v for k, v in args["vcpupin"].items()}
    quiet = run_module(realtime_domain, args)
    assert not quiet.get("failed") and not quiet["changed"], quiet
    return again


@pytest.fixture
def guest_args(libvirt_rig, unique_name, fifo_allowed):
    cpus = online_cpus()
    assert len(cpus) >= 2, "needs a housekeeping CPU and a realtime CPU"
    pool, housekeeping = str(cpus[-1]), str(cpus[0])
    partition = "/%s" % unique_name
    wait_for_free_pcpu(unique_name, pool)
    made = ansible_module("rtvirt.kvm.libvirt_partition", {"name": partition})
    assert not made.get("failed"), made.get("msg")
    yield dict(name=unique_name, vcpus=1, memory_mib=128, vcpupin={"0": pool}, emulator_cpus=housekeeping,
               fifo_priority=3, partition=partition, domain_type="kvm" if rig_lib.kvm_usable() else "qemu")
    gone = run_module(realtime_domain, {"name": unique_name, "state": "absent"})
    assert not gone.get("failed"), gone.get("msg")
    removed = ansible_module("rtvirt.kvm.libvirt_partition", {"name": partition, "state": "absent"})
    assert not removed.get("failed"), removed.get("msg")


def test_restart_before_define_leaves_nothing(libvirt_rig, guest_args, restart_before):
    name = guest_args["name"]
    restarts = restart_before("libvirt refused the definition")
    failed = run_module(realtime_domain, guest_args)
    assert restarts and restarts[0] != libvirt_rig.libvirtd_pid, "libvirtd was not restarted"
    assert failed.get("failed") and "rerun the same call" in failed["msg"], failed
    assert _assert_whole_or_absent(libvirt_rig, name, guest_args) is None
    restart_before("never")
    assert _converges(libvirt_rig, name, guest_args)["started"]


def test_restart_before_start_undefines_the_new_guest(libvirt_rig, guest_args, restart_before):
    name = guest_args["name"]
    restarts = restart_before("cannot start")
    failed = run_module(realtime_domain, guest_args)
    assert restarts, "libvirtd was not restarted"
    assert failed.get("failed") and "is not defined any more, rerun the same call" in failed["msg"], failed
    assert not failed["defined"] and not failed["started"]
    assert _assert_whole_or_absent(libvirt_rig, name, guest_args) is None
    restart_before("never")
    _converges(libvirt_rig, name, guest_args)


def test_restart_between_define_and_restart_is_finished_by_the_rerun(libvirt_rig, guest_args, restart_before):
    """A running guest redefined (new FIFO priority) whose power-off is cut off: the new definition is complete
    on disk, the guest still runs the old one, and the rerun sees that and restarts it; it never runs unpinned."""
    name = guest_args["name"]
    restart_before("never")
    assert not run_module(realtime_domain, guest_args).get("failed")
    old_pid = libvirt_rig.qemu_pid(name)
    changed = dict(guest_args, fifo_priority=5, restart=True)
    restarts = restart_before("cannot power off")
    failed = run_module(realtime_domain, changed)
    assert restarts, "libvirtd was not restarted"
    assert failed.get("failed") and "rerun the same call to finish" in failed["msg"], failed
    assert "%s is running" % name in failed["msg"]
    on_disk = owned_view(_on_disk(name))
    assert on_disk["vcpusched"]["0"]["priority"] == 5 and on_disk["vcpupin"] == {"0": guest_args["vcpupin"]["0"]}
    assert libvirt_rig.qemu_pid(name) == old_pid
    assert _vcpu_affinities(libvirt_rig, name) == {0: guest_args["vcpupin"]["0"]}

    told = run_module(realtime_domain, guest_args | {"fifo_priority": 5})
    assert not told.get("failed") and told["restart_needed"] and not told["defined"], told
    restart_before("never")
    finished = _converges(libvirt_rig, name, changed)
    assert finished["destroyed"] and finished["started"] and libvirt_rig.qemu_pid(name) != old_pid
    assert os.path.exists(DEFINITIONS / ("%s.xml" % name))


def test_a_two_vcpu_guest_is_converged_by_the_first_call(libvirt_rig, guest_args):
    """libvirt stores our one <vcpusched vcpus='0-1'> as one element per vCPU: a guest with more than one vCPU must
    still compare equal afterwards, or every run would redefine it (seen on the 8-CPU test host)."""
    pool = guest_args["vcpupin"]["0"]
    args = dict(guest_args, vcpus=2, vcpupin={"0": pool, "1": pool})
    first = run_module(realtime_domain, args)
    assert not first.get("failed") and first["changed"], first
    assert len(_vcpu_affinities(libvirt_rig, args["name"])) == 2
    quiet = run_module(realtime_domain, args)
    assert not quiet.get("failed") and not quiet["changed"], quiet
