"""host_prep switching dedicated -> shared -> dedicated on the systemd + cgroup v2 guest, Linux 6.12 (issue 4, item 2).

Before: the role only ever turned exclusivity on, so after a switch to the shared mode ``rt.slice`` stayed an
isolated partition on 1-3 while systemd was told to give machine.slice 0-1 and rt.slice 0-3 (the kernel cannot
honour both). Now partitions that are not exclusive are converged first (``cpuset.cpus.partition`` back to
``member``, written before systemd gets the new ``AllowedCPUs=``), then /machine, then the exclusive ones.

Three converges and the way back (host_prep_state: absent) on one guest (each takes minutes under TCG); the guest is shared with the other v2host
modules, so everything the role made is removed afterwards and the IRQ defaults and RT budget are put back.
"""
import json

import pytest

from tests.v2host.host_prep_runs import DEDICATED, SHARED, converge
from tests.v2host.test_modules_v2 import ABSENT, CG, UNIT_DIR, read_files, root_subtree, sh

pytestmark = pytest.mark.v2host

# No libvirt in the guest: no hook either (its reload handler would restart a libvirtd unit that is not there).
V2_DEDICATED = dict(DEDICATED, host_prep_install_hook=False)
V2_SHARED = dict(SHARED, host_prep_install_hook=False)
DROPIN = "%s/machine.slice.d/50-rtvirt-kvm.conf" % UNIT_DIR
FILES = ["%s/rt.slice/cpuset.cpus.partition" % CG, "%s/rt.slice/cpuset.cpus" % CG,
         "%s/rt.slice/cpuset.cpus.effective" % CG, "%s/machine.slice/cpuset.cpus" % CG,
         "%s/machine.slice/cpuset.cpus.effective" % CG, "%s/cpuset.cpus.isolated" % CG,
         "%s/rt.slice" % UNIT_DIR, DROPIN, "/proc/irq/default_smp_affinity"]


def layout(files):
    """The parts of FILES the tests compare: partition, CPUs, AllowedCPUs= lines, IRQ default."""
    def allowed(text):
        return [word for word in text.split() if word.startswith("AllowedCPUs=")]
    return {
        "rt_partition": files[FILES[0]], "rt_cpus": files[FILES[1]], "rt_effective": files[FILES[2]],
        "machine_cpus": files[FILES[3]], "machine_effective": files[FILES[4]], "isolated": files[FILES[5]],
        "rt_unit": allowed(files[FILES[6]]), "machine_dropin": allowed(files[FILES[7]]), "irq_default": files[FILES[8]],
    }


@pytest.fixture(scope="module")
def v2_modes(v2host_612, tmp_path_factory):
    host = v2host_612
    tmp = tmp_path_factory.mktemp("host_prep_modes_v2")
    subtree_before = root_subtree(host)
    irq_default = sh(host, "cat /proc/irq/default_smp_affinity").strip()
    rt_budget = sh(host, "cat /proc/sys/kernel/sched_rt_runtime_us").strip()
    r = {}
    try:
        r["dedicated"] = converge(host, tmp, V2_DEDICATED, name="dedicated")
        r["dedicated_files"] = layout(read_files(host, FILES))
        r["shared"] = converge(host, tmp, V2_SHARED, name="shared")
        r["shared_files"] = layout(read_files(host, FILES))
        r["back"] = converge(host, tmp, V2_DEDICATED, name="back")
        r["back_files"] = layout(read_files(host, FILES))
        # The way back (issue 20) on systemd: the slice unit goes, machine.slice gets every CPU.
        r["absent"] = converge(host, tmp, dict(V2_DEDICATED, host_prep_state="absent"), name="absent")
        r["absent_files"] = read_files(host, FILES + ["/etc/sysctl.d/90-rtvirt-kvm.conf",
                                                      "/proc/sys/kernel/sched_rt_runtime_us"])
    finally:
        host.ssh("if [ -e %s/rt.slice/cpuset.cpus.partition ]; then echo member > %s/rt.slice/cpuset.cpus.partition; fi; "
                 "systemctl stop rt.slice; rm -f %s/rt.slice %s /etc/sysctl.d/90-rtvirt-kvm.conf; "
                 # The dedicated layout's keeper (libvirt_partition's unit that re-applies the partition).
                 "rm -rf /etc/systemd/system/rtvirt-partition-rt.service /etc/systemd/system/rt.slice.wants "
                 "/etc/systemd/system/multi-user.target.wants/rtvirt-partition-rt.service; "
                 "rmdir %s/machine.slice.d 2>/dev/null; systemctl daemon-reload; "
                 "echo %s > /proc/irq/default_smp_affinity; echo %s > /proc/sys/kernel/sched_rt_runtime_us"
                 % (CG, CG, UNIT_DIR, DROPIN, UNIT_DIR, irq_default, rt_budget))
        # systemd re-applies machine.slice's AllowedCPUs= (none now) on the reload; +cpuset as it was.
        if "cpuset" not in subtree_before and "cpuset" in root_subtree(host):
            host.ssh("echo -cpuset > %s/cgroup.subtree_control" % CG)
    r["cleaned"] = read_files(host, [FILES[5], "%s/rt.slice" % CG, DROPIN])
    print(json.dumps({k: v for k, v in r.items() if k.endswith("files")}, indent=1))
    return r


def test_dedicated_rt_slice_is_an_isolated_partition(v2_modes):
    run, files = v2_modes["dedicated"], v2_modes["dedicated_files"]
    assert run["rc"] == 0 and run["failed"] == 0, run["stdout"][-4000:]
    assert files == {"rt_partition": "isolated", "rt_cpus": "1-3", "rt_effective": "1-3", "machine_cpus": "0",
                     "machine_effective": "0", "isolated": "1-3", "rt_unit": ["AllowedCPUs=1-3"],
                     "machine_dropin": ["AllowedCPUs=0"], "irq_default": "1"}, files


def test_dedicated_to_shared_dissolves_the_partition(v2_modes):
    run, files = v2_modes["shared"], v2_modes["shared_files"]
    assert run["rc"] == 0 and run["failed"] == 0, run["stdout"][-4000:]
    assert files == {"rt_partition": "member", "rt_cpus": "0-3", "rt_effective": "0-3", "machine_cpus": "0-1",
                     "machine_effective": "0-1", "isolated": "", "rt_unit": ["AllowedCPUs=0-3"],
                     "machine_dropin": ["AllowedCPUs=0-1"], "irq_default": "3"}, files
    out = run["stdout"]
    assert out.index("Converge the partitions that are not exclusive") < out.index(
        "Keep libvirt's default partition /machine")


def test_shared_to_dedicated_again(v2_modes):
    run, files = v2_modes["back"], v2_modes["back_files"]
    assert run["rc"] == 0 and run["failed"] == 0, run["stdout"][-4000:]
    assert files == v2_modes["dedicated_files"]


def test_absent_removes_the_slice_and_gives_machine_slice_every_cpu(v2_modes):
    run, files = v2_modes["absent"], v2_modes["absent_files"]
    assert run["rc"] == 0 and run["failed"] == 0 and run["changed"] > 0, run["stdout"][-4000:]
    assert files["%s/rt.slice" % UNIT_DIR] == ABSENT and files[FILES[1]] == ABSENT, files
    assert files[FILES[4]] == "0-3" and files[FILES[5]] == "" and files[FILES[8]] == "f", files
    assert files["/etc/sysctl.d/90-rtvirt-kvm.conf"] == ABSENT
    assert files["/proc/sys/kernel/sched_rt_runtime_us"] == "950000"


def test_the_shared_guest_is_left_as_found(v2_modes):
    cleaned = v2_modes["cleaned"]
    assert cleaned[FILES[5]] == "" and cleaned["%s/rt.slice" % CG] == ABSENT and cleaned[DROPIN] == ABSENT, cleaned
