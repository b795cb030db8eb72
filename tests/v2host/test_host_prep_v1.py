"""host_prep's dedicated emulator-CPU mode on a real cgroup v1 kernel with 4 CPUs (issue 4, items 1-3).

The CI machines have 2 CPUs, too few for the dedicated mode (housekeeping, emulator and realtime CPUs each need
one). This module boots the test image in the CI machines' shape instead (``v1host``: Linux 6.1, no systemd as
PID 1, one cgroup v1 hierarchy per controller, cgroup2 at /sys/fs/cgroup/unified; see
tests/support/v2host/README.md) and runs the role there: housekeeping CPU 0, emulator CPU 1, realtime 2-3.

One guest boot (plus one reboot) for the whole module; the fixture runs every step in order and the tests
assert on what it recorded:

1. check mode on the fresh guest writes nothing;
2. converge: ``/rt.partition`` on 1-3 with ``cpuset.cpu_exclusive=1``, ``/machine`` on 0, IRQ defaults on 0;
3. a second converge changes nothing;
4. bad input (an emulator CPU that is realtime) fails in the validation, before any change;
5. the kernel rule that decides the order, by hand: /machine cannot widen onto CPU 1 while /rt is exclusive (EINVAL);
6. dedicated -> shared: exclusivity dropped, /rt on 0-3, /machine on 0-1; shared -> dedicated again;
7. a real reboot (fresh cgroupfs: /machine and /rt are gone), then the installed qemu hook called as libvirt
   calls it at ``prepare``: /machine and /rt come back on their CPUs, /rt exclusive.
"""
import json
import re

import pytest

from tests.v2host.host_prep_runs import DEDICATED, SHARED, changed_tasks, converge
from tests.v2host.test_modules_v2 import sh

pytestmark = pytest.mark.v2host

CG = "/sys/fs/cgroup"
#: The v1 hierarchies libvirt uses on this layout (KERNEL-FACTS.md: cpu, cpuset, memory, freezer, blkio and the
#: unified v2 tree), where the role and the hook create /machine and rt.partition.
PARTITION_TREES = ("cpu", "cpuset", "memory", "freezer", "blkio", "unified")
HOOK = "/etc/libvirt/hooks/qemu.d/rtvirt-kvm-partitions"
DOMAIN_XML = """<domain type='kvm'>
  <name>rtguest</name>
  <resource><partition>/rt</partition></resource>
</domain>
"""

# One shell call: the cgroup layout, IRQ placement, the RT budget and the files the role writes.
_STATE = r"""
cd /sys/fs/cgroup
for t in cpu cpuacct cpuset memory devices freezer blkio pids unified; do
  for d in machine rt.partition; do [ -d $t/$d ] && echo "dir $t/$d"; done
done
for d in . machine rt.partition; do
  [ -d cpuset/$d ] && echo "cpuset $d cpus=$(cat cpuset/$d/cpuset.cpus) mems=$(cat cpuset/$d/cpuset.mems)" \
    "exclusive=$(cat cpuset/$d/cpuset.cpu_exclusive)"
done
echo "irq default $(cat /proc/irq/default_smp_affinity)"
for f in /proc/irq/*/smp_affinity_list; do echo "irq $f $(cat $f)"; done
echo "sysctl $(cat /proc/sys/kernel/sched_rt_runtime_us)"
for f in /etc/libvirt/hooks/qemu.d/rtvirt-kvm-partitions /etc/sysctl.d/90-rtvirt-kvm.conf /usr/local/sbin/rtvirt-libvirtd; do
  if [ -e $f ]; then echo "file $f $(sha256sum < $f | cut -c1-16)"; else echo "file $f absent"; fi
done
"""


def state(host):
    return sh(host, _STATE).splitlines()


def cpuset_line(lines, cgroup):
    found = [line for line in lines if line.startswith("cpuset %s " % cgroup)]
    return found[0] if found else None


def dirs(lines):
    return sorted(line.split()[1] for line in lines if line.startswith("dir "))


def expected_dirs(*names):
    return sorted("%s/%s" % (tree, name) for tree in PARTITION_TREES for name in names)


def expected_dirs_in(trees, names=("machine", "rt.partition")):
    return sorted("%s/%s" % (tree, name) for tree in trees for name in names)


def refused_irqs(result):
    """The IRQs host_prep's "Report IRQs the kernel would not move" lists."""
    for entry in result["debug"]:
        match = re.search(r"refused \(managed or per-CPU:\s*([0-9, ]+|none)", str(entry.get("msg", "")))
        if match:
            return [] if match.group(1) == "none" else [n.strip() for n in match.group(1).split(",") if n.strip()]
    raise AssertionError("no IRQ report in the run's output")


@pytest.fixture(scope="module")
def v1_runs(v1host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host_prep_v1")
    r = {"release": v1host.kernel_release}
    r["mounts"] = sh(v1host, "grep -E ' - cgroup2? ' /proc/self/mountinfo; test -d /run/systemd/system && echo SYSTEMD "
                             "|| echo no-systemd; cat /proc/1/comm; nproc")
    r["fresh"] = state(v1host)
    r["check"] = converge(v1host, tmp, DEDICATED, check=True, name="check")
    r["after_check"] = state(v1host)
    r["first"] = converge(v1host, tmp, DEDICATED, name="first")
    r["dedicated"] = state(v1host)
    r["second"] = converge(v1host, tmp, DEDICATED, name="second")
    r["bad"] = converge(v1host, tmp, dict(DEDICATED, host_prep_emulator_cpus="2"), name="bad")
    r["after_bad"] = state(v1host)
    # The kernel rule behind the order of partitions.yml, by hand: a sibling of an exclusive cpuset may not
    # overlap it (EINVAL), so /machine cannot widen onto the emulator CPU while /rt is still exclusive.
    r["by_hand"] = v1host.ssh("echo 0-1 > %s/cpuset/machine/cpuset.cpus" % CG)
    r["after_by_hand"] = state(v1host)
    r["shared"] = converge(v1host, tmp, SHARED, name="shared")
    r["shared_state"] = state(v1host)
    r["back"] = converge(v1host, tmp, DEDICATED, name="back")
    r["back_state"] = state(v1host)
    # A real reboot: QEMU stops, the disk stays, a fresh kernel boots with empty cgroup hierarchies.
    v1host.reboot()
    r["rebooted"] = state(v1host)
    r["reboot_mounts"] = sh(v1host, "grep -cE ' - cgroup2? ' /proc/self/mountinfo; cat /proc/1/comm")
    r["hook"] = v1host.ssh("%s rtguest prepare begin -" % HOOK, input=DOMAIN_XML)
    r["hooked"] = state(v1host)
    r["hook_again"] = v1host.ssh("%s rtguest prepare begin -" % HOOK, input=DOMAIN_XML)
    r["hooked_again"] = state(v1host)
    r["hook_log"] = sh(v1host, "cat /var/log/rtvirt-qemu-hook.log 2>/dev/null || true")
    print(json.dumps({k: v for k, v in r.items() if isinstance(v, (list, str))}, indent=1))
    return r


def test_the_guest_has_the_ci_hosts_shape(v1_runs):
    mounts = v1_runs["mounts"]
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"):
        assert " %s/%s rw" % (CG, controller) in mounts and "cgroup cgroup rw,%s" % controller in mounts, mounts
    assert " %s/unified rw" % CG in mounts and " - cgroup2 cgroup2 " in mounts
    assert "no-systemd" in mounts and "rtvirt-init-v1" in mounts
    assert mounts.split()[-1] == "4"
    assert v1_runs["release"].startswith("6.1.")


def test_check_mode_on_the_fresh_host_writes_nothing(v1_runs):
    check = v1_runs["check"]
    assert check["rc"] == 0 and check["failed"] == 0, check["stdout"][-4000:]
    assert check["changed"] > 0                       # it reports what a real run would do
    assert v1_runs["after_check"] == v1_runs["fresh"]
    assert "file %s absent" % HOOK in v1_runs["fresh"]
    assert dirs(v1_runs["fresh"]) == []


def test_dedicated_mode_on_the_real_v1_kernel(v1_runs):
    first, lines = v1_runs["first"], v1_runs["dedicated"]
    assert first["rc"] == 0 and first["failed"] == 0, first["stdout"][-4000:]
    assert cpuset_line(lines, "rt.partition") == "cpuset rt.partition cpus=1-3 mems=0 exclusive=1", lines
    assert cpuset_line(lines, "machine") == "cpuset machine cpus=0 mems=0 exclusive=0", lines
    assert cpuset_line(lines, ".") == "cpuset . cpus=0-3 mems=0 exclusive=1", lines
    assert dirs(lines) == expected_dirs("machine", "rt.partition")
    assert "irq default 1" in lines                  # CPU 0 only: not the emulator CPU, not the realtime CPUs
    # IRQs still elsewhere are the ones the kernel refused to move, as the role reported them (on this guest the
    # timer and cascade, and virtio's managed per-queue MSI-X vectors, one per CPU).
    elsewhere = sorted(line.split("/")[3] for line in lines
                       if line.startswith("irq /proc/irq/") and not line.endswith(" 0"))
    assert elsewhere and set(elsewhere) <= set(refused_irqs(first)), (elsewhere, refused_irqs(first))
    assert "sysctl -1" in lines
    # host_prep's own kinds, then those of the tuning items it runs (on by default).
    assert "no irq_default_affinity/irq_affinity/cgroup_cpuset/workqueue_cpumask/kthread_on_isolated violation" in \
        first["stdout"], first["stdout"][-3000:]


def test_second_converge_changes_nothing(v1_runs):
    second = v1_runs["second"]
    assert second["rc"] == 0 and second["failed"] == 0, second["stdout"][-4000:]
    assert second["changed"] == 0, changed_tasks(second)


def test_bad_input_fails_in_validation_before_any_change(v1_runs):
    bad = v1_runs["bad"]
    assert bad["rc"] != 0 and bad["failed"] == 1
    # The role's first task: it plans and reads, and writes nothing.
    assert bad["fatal_task"] == "rtvirt.kvm.host_prep : Plan the realtime CPUs and the layout, and read what the " \
                                "host does not match yet (writes nothing)", bad["fatal_task"]
    assert "emulator CPUs 2 are realtime CPUs too" in bad["fatal"]["msg"], bad["fatal"]
    assert bad["changed"] == 0
    assert v1_runs["after_bad"] == v1_runs["dedicated"]


def test_kernel_refuses_machine_onto_an_exclusive_siblings_cpu(v1_runs):
    """Why partitions.yml drops exclusivity before /machine widens: the kernel says EINVAL otherwise."""
    by_hand = v1_runs["by_hand"]
    assert by_hand.returncode != 0 and "Invalid argument" in by_hand.stderr, by_hand
    assert v1_runs["after_by_hand"] == v1_runs["dedicated"]


def test_dedicated_to_shared_drops_exclusive_before_machine_widens(v1_runs):
    shared, lines = v1_runs["shared"], v1_runs["shared_state"]
    assert shared["rc"] == 0 and shared["failed"] == 0, shared["stdout"][-4000:]
    assert cpuset_line(lines, "rt.partition") == "cpuset rt.partition cpus=0-3 mems=0 exclusive=0", lines
    assert cpuset_line(lines, "machine") == "cpuset machine cpus=0-1 mems=0 exclusive=0", lines
    assert "irq default 3" in lines                  # housekeeping CPUs 0-1 now
    out = shared["stdout"]
    assert out.index("Converge the partitions that are not exclusive") < out.index(
        "Keep libvirt's default partition /machine")


def test_shared_to_dedicated_again(v1_runs):
    back, lines = v1_runs["back"], v1_runs["back_state"]
    assert back["rc"] == 0 and back["failed"] == 0, back["stdout"][-4000:]
    assert cpuset_line(lines, "rt.partition") == "cpuset rt.partition cpus=1-3 mems=0 exclusive=1", lines
    assert cpuset_line(lines, "machine") == "cpuset machine cpus=0 mems=0 exclusive=0", lines
    assert lines == v1_runs["dedicated"]


def test_reboot_leaves_an_empty_cgroupfs(v1_runs):
    lines = v1_runs["rebooted"]
    assert dirs(lines) == [], lines
    assert cpuset_line(lines, "machine") is None and cpuset_line(lines, "rt.partition") is None
    assert "file %s absent" % HOOK not in lines      # the hook survived on disk
    assert v1_runs["reboot_mounts"].split() == ["10", "rtvirt-init-v1"]


def test_qemu_hook_recreates_machine_and_rt_after_reboot(v1_runs):
    hook, lines = v1_runs["hook"], v1_runs["hooked"]
    assert hook.returncode == 0, (hook.returncode, hook.stderr)
    assert cpuset_line(lines, "machine") == "cpuset machine cpus=0 mems=0 exclusive=0", lines
    assert cpuset_line(lines, "rt.partition") == "cpuset rt.partition cpus=1-3 mems=0 exclusive=1", lines
    # Every hierarchy libvirt uses, as the role made them; the hook also makes them in the v1 cpuacct and devices
    # trees (it takes every v1 hierarchy with a controller libvirt knows; libvirt 9.0 manages those two through
    # the unified tree on this layout, and libvirt_partition state=absent removes them there too).
    assert set(dirs(lines)) - set(dirs(v1_runs["dedicated"])) == set(expected_dirs_in(("cpuacct", "devices"))), \
        dirs(lines)
    assert set(dirs(v1_runs["dedicated"])) <= set(dirs(lines))
    assert "guest rtguest: re-created partition /rt:" in v1_runs["hook_log"], v1_runs["hook_log"]
    assert "%s/cpuset/rt.partition" % CG in v1_runs["hook_log"]


def test_qemu_hook_second_call_changes_nothing(v1_runs):
    again = v1_runs["hook_again"]
    assert again.returncode == 0, again.stderr
    assert v1_runs["hooked_again"] == v1_runs["hooked"]
    assert v1_runs["hook_log"].count("re-created partition") == 1, v1_runs["hook_log"]


# --------------------------------------------------------------------------------------------
# The kernel command line through GRUB (issue 4, item 4), on the same guest (after the steps above when the
# whole module runs; on its own with -k grub).
# The image has grub2-common (update-grub) but no boot loader on its disk: QEMU boots the kernel with -kernel.
# /etc/default/grub is the file Debian's grub-pc installs (/usr/share/grub/default/grub).

GRUB = "/etc/default/grub"
GRUB_CFG = "/boot/grub/grub.cfg"
# housekeeping 0, emulator CPU 1 (dedicated: IRQs stay off it as well), realtime 2-3
WANTED = ["isolcpus=managed_irq,domain,2-3", "nohz_full=2-3", "rcu_nocbs=2-3", "irqaffinity=0"]
REBOOT_REQUIRED = {"name": "Report host_prep_reboot_required",
                   "ansible.builtin.debug": {"var": "host_prep_reboot_required"}}
WITH_GRUB = dict(DEDICATED, host_prep_manage_cmdline=True)

_GRUB_STATE = r"""
grep -n '^GRUB_CMDLINE_LINUX=' /etc/default/grub
echo "defaults $(sha256sum < /etc/default/grub | cut -c1-16)"
if [ -e /boot/grub/grub.cfg ]; then
  echo "cfg $(sha256sum < /boot/grub/grub.cfg | cut -c1-16)"
  grep -E '^\s*linux\s' /boot/grub/grub.cfg | sed -E 's/^\s*linux\s+/linux /; s/root=UUID=[^ ]*/root=UUID/'
else
  echo "cfg absent"
fi
echo "running $(cat /proc/cmdline)"
echo "isolated $(cat /sys/devices/system/cpu/isolated) nohz_full $(cat /sys/devices/system/cpu/nohz_full)"
"""


def grub_state(host):
    return sh(host, _GRUB_STATE).splitlines()


def reboot_required(result):
    values = [entry["host_prep_reboot_required"] for entry in result["debug"] if "host_prep_reboot_required" in entry]
    assert len(values) == 1, result["stdout"][-3000:]
    return values[0]


@pytest.fixture(scope="module")
def grub_runs(v1host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host_prep_v1_grub")
    sh(v1host, "cp /usr/share/grub/default/grub %s && rm -f %s" % (GRUB, GRUB_CFG))
    r = {"before": grub_state(v1host)}
    r["check"] = converge(v1host, tmp, WITH_GRUB, check=True, name="grub-check", post_tasks=[REBOOT_REQUIRED])
    r["after_check"] = grub_state(v1host)
    r["first"] = converge(v1host, tmp, WITH_GRUB, name="grub-first", post_tasks=[REBOOT_REQUIRED])
    r["first_state"] = grub_state(v1host)
    r["second"] = converge(v1host, tmp, WITH_GRUB, name="grub-second", post_tasks=[REBOOT_REQUIRED])
    r["second_state"] = grub_state(v1host)
    r["layout_before_bad"] = state(v1host)
    # A value the shell would expand: the module cannot know what it holds, so it must refuse to edit the file.
    sh(v1host, "sed -i 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX=\"$EXTRA_ARGS quiet\"/' %s" % GRUB)
    r["bad_before"] = grub_state(v1host)
    r["bad"] = converge(v1host, tmp, WITH_GRUB, name="grub-bad", post_tasks=[REBOOT_REQUIRED])
    r["bad_after"] = grub_state(v1host)
    r["layout_after_bad"] = state(v1host)
    # The kernel parameters GRUB would now boot with (its first menu entry for this kernel), given to the guest's
    # kernel by QEMU: the running kernel has them, and host_prep stops asking for a reboot.
    entry = [line for line in r["first_state"] if line.startswith("linux /boot/vmlinuz-%s " % v1host.kernel_release)]
    assert entry, r["first_state"]
    v1host.append = " ".join(word for word in entry[0].split()[2:] if word.split("=")[0] in
                             ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity"))
    # Undo the bad line (grub.cfg still has the parameters: update-grub need not run again).
    sh(v1host, "sed -i 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX=\"%s\"/' %s" % (" ".join(WANTED), GRUB))
    v1host.reboot()
    r["grub_entry"] = entry[0]
    r["rebooted"] = converge(v1host, tmp, WITH_GRUB, name="grub-rebooted", post_tasks=[REBOOT_REQUIRED])
    r["rebooted_state"] = grub_state(v1host)
    print(json.dumps({k: v for k, v in r.items() if isinstance(v, (list, str))}, indent=1))
    return r


def _cmdline_line(lines):
    return [line for line in lines if line.split(":", 1)[-1].startswith("GRUB_CMDLINE_LINUX=")]


def test_grub_check_mode_writes_nothing(grub_runs):
    check = grub_runs["check"]
    assert check["rc"] == 0 and check["failed"] == 0, check["stdout"][-4000:]
    assert grub_runs["after_check"] == grub_runs["before"]
    assert "cfg absent" in grub_runs["before"]
    assert reboot_required(check) is True


def test_grub_converge_sets_the_parameters_and_regenerates(grub_runs):
    first, lines = grub_runs["first"], grub_runs["first_state"]
    assert first["rc"] == 0 and first["failed"] == 0, first["stdout"][-4000:]
    assert _cmdline_line(lines) == ['10:GRUB_CMDLINE_LINUX="%s"' % " ".join(WANTED)], lines
    linux = [line for line in lines if line.startswith("linux ")]
    assert linux and all(all(word in line.split() for word in WANTED) for line in linux), linux
    assert "ran update-grub" in first["stdout"]
    assert reboot_required(first) is True           # the running kernel lacks them
    running = [line for line in lines if line.startswith("running ")][0]
    assert not any(word in running.split() for word in WANTED), running


def test_grub_second_converge_changes_nothing(grub_runs):
    second = grub_runs["second"]
    assert second["rc"] == 0 and second["failed"] == 0, second["stdout"][-4000:]
    assert second["changed"] == 0, changed_tasks(second)
    assert grub_runs["second_state"] == grub_runs["first_state"]
    assert reboot_required(second) is True           # still: nothing rebooted


def test_grub_file_it_cannot_parse_fails_untouched(grub_runs):
    bad = grub_runs["bad"]
    assert bad["rc"] != 0 and bad["failed"] == 1 and bad["changed"] == 0
    assert bad["fatal_task"] == "rtvirt.kvm.host_prep : Set isolcpus, nohz_full, rcu_nocbs and irqaffinity in " \
                                "GRUB's defaults", bad["fatal_task"]
    msg = bad["fatal"]["msg"]
    assert msg.startswith("cannot edit %s safely, nothing written: line 10: GRUB_CMDLINE_LINUX contains" % GRUB), msg
    assert "'$'" in msg, msg
    assert grub_runs["bad_after"] == grub_runs["bad_before"]
    assert grub_runs["layout_after_bad"] == grub_runs["layout_before_bad"]


def test_running_kernel_with_the_parameters_needs_no_reboot(grub_runs):
    run, lines = grub_runs["rebooted"], grub_runs["rebooted_state"]
    assert run["rc"] == 0 and run["failed"] == 0, run["stdout"][-4000:]
    assert "ran update-grub" not in run["stdout"]  # the file was already as wanted
    assert reboot_required(run) is False
    assert "isolated 2-3 nohz_full 2-3" in lines, lines
