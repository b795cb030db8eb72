"""Lets the test suite share a machine with the main job, and puts the machine back afterwards.

The tests need what `hack/site.sh` keeps on purpose: the one realtime CPU (the demo guest holds it, and
the defined domains are the pCPU allocator's books) and `/machine` on every CPU (tests pin guests in it to
the realtime CPU). They also change what the main job owns: IRQ affinities, `kernel.sched_rt_runtime_us`,
the qemu hook and its layout, KVM's group and device mode, qemu.conf. So, around a whole pytest session
(tests/conftest.py) or by hand:

    python tests/support/host_guard.py save      # snapshot, park the main job's guests, widen /machine
    python tests/support/host_guard.py restore   # put every snapshotted thing back, start the guests again
    python tests/support/host_guard.py status

`save` first finishes what an interrupted session left: a snapshot whose holder process is gone is
restored, and cgroups and domains with the tests' names (TEST_NAMES) are removed when empty; a leftover
that cannot be removed (tasks inside) is named with the command that clears it.

The snapshot lives in STATE_DIR on disk (not /run): a parked guest's definition must outlive a crash.
A session started while another live session holds the snapshot leaves it alone (nested runs, e.g.
Molecule from pytest, or two developers) and restores nothing. Standard library only.
"""
import argparse
import base64
import fnmatch
import grp
import json
import os
import pathlib
import shutil
import subprocess
import sys

try:
    from tests.support import libvirt_rig
except ImportError:  # run as a script: tests/support is on sys.path
    import libvirt_rig

STATE_DIR = pathlib.Path("/var/lib/rtvirt-test-guard")
STATE_FILE = STATE_DIR / "snapshot.json"
URI = "qemu:///system"
CPUSET = pathlib.Path("/sys/fs/cgroup/cpuset")
# Files the main job writes and tests write too (the host_prep Molecule scenario, the libvirt rig).
FILES = (
    "/etc/libvirt/qemu.conf",
    "/etc/libvirt/hooks/qemu",
    "/etc/libvirt/hooks/qemu.d/rtvirt-kvm-partitions",
    "/etc/libvirt/hooks/rtvirt-kvm-layout.json",
    "/etc/libvirt/hooks/rtvirt-kvm-partitions.json",
    "/usr/local/sbin/rtvirt-libvirtd",
    "/etc/sysctl.d/90-rtvirt-kvm.conf",
    "/etc/default/irqbalance",
    "/etc/default/grub",
    "/etc/modprobe.d/rtvirt-kvm.conf",
    "/etc/sysctl.d/91-rtvirt-kvm-tuning.conf",
)
# Knobs written back as they were read (host_prep's RT budget, and what its tuning area writes).
SYSCTLS = ("/proc/sys/kernel/sched_rt_runtime_us", "/proc/sys/kernel/timer_migration", "/proc/sys/vm/stat_interval",
           "/proc/sys/kernel/hung_task_timeout_secs", "/proc/sys/kernel/nmi_watchdog",
           "/proc/sys/kernel/numa_balancing", "/sys/kernel/mm/ksm/run")
# Knobs globbed at snapshot time (the workqueues sysfs shows, machine check banks, KVM's writable parameters).
KNOB_GLOBS = ("/sys/devices/virtual/workqueue/cpumask", "/sys/devices/virtual/workqueue/*/cpumask",
              "/sys/devices/system/machinecheck/machinecheck*/ignore_ce", "/sys/module/kvm*/parameters/*")
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000
KVM_DEVICE = "/dev/kvm"
KVM_GROUP = "kvm"
QEMU_USER = "libvirt-qemu"
# Every cgroup and domain a test makes carries one of these names (tests/support/fixtures_libvirt.py,
# tests/integration/**, the Molecule scenarios); nothing of the main job's does.
TEST_NAMES = ("rtvirt-test-*", "rtvirt-t-*", "rtvirt-p-*", "rtvirt-fp-*", "rtvirt-mol-*", "rtvirt-preflight-*",
              "molecule-hp.partition", "molecule-rt.partition", "*-rtvirt-t-*", "*-rtvirt-mol-*")
TEST_DOMAINS = ("rtvirt-t-*", "rtvirt-mol-*")


class GuardError(RuntimeError):
    """A step of save/restore failed; the message says which and what to do."""


# --------------------------------------------------------------------------- small helpers

def _run(argv, check=True, timeout=120):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                            env=dict(os.environ, LC_ALL="C"))
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise GuardError("%s failed (%d): %s" % (" ".join(argv), result.returncode, output))
    return result


def _virsh(*args, check=True):
    return _run(["virsh", "-c", URI, *args], check=check, timeout=60)


def _starttime(pid):
    try:
        text = pathlib.Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def _alive(holder):
    return bool(holder) and _starttime(holder["pid"]) == holder["starttime"]


def _test_name(name):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEST_NAMES)


def _test_domain(name):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEST_DOMAINS)


def _libvirt_answers():
    return shutil.which("virsh") is not None and _virsh("version", check=False).returncode == 0


# --------------------------------------------------------------------------- what is snapshotted

def _file_record(path):
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    info = path.stat()
    return {"content": base64.b64encode(path.read_bytes()).decode(), "mode": info.st_mode & 0o7777,
            "uid": info.st_uid, "gid": info.st_gid}


def _restore_file(path, record, report):
    path = pathlib.Path(path)
    if record is None:
        if path.is_file():
            path.unlink()
            report.append("removed %s (the tests made it)" % path)
        return
    content = base64.b64decode(record["content"])
    if path.is_file() and path.read_bytes() == content and (path.stat().st_mode & 0o7777) == record["mode"]:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".%s.rtvirt-guard" % path.name)
    tmp.write_bytes(content)
    os.chmod(tmp, record["mode"])
    os.chown(tmp, record["uid"], record["gid"])
    os.replace(tmp, path)
    report.append("restored %s" % path)


def _knobs():
    """Every knob of SYSCTLS and KNOB_GLOBS that can be written back: {path: value}."""
    import glob
    paths = [p for p in SYSCTLS if os.path.exists(p)]
    for pattern in KNOB_GLOBS:
        paths.extend(p for p in sorted(glob.glob(pattern)) if os.stat(p).st_mode & 0o200)
    found = {}
    for path in paths:
        try:
            found[path] = pathlib.Path(path).read_text().strip()
        except OSError:
            pass
    return found


def _kthread_affinities():
    """{pid: [starttime, cpus]} of every kernel thread whose affinity can be changed (host_prep's tuning moves them)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = pathlib.Path("/proc/%s/stat" % entry).read_text()
            fields = text[text.rindex(")") + 2:].split()
            flags = int(fields[6])
            if not flags & PF_KTHREAD or flags & PF_NO_SETAFFINITY:
                continue
            found[entry] = [int(fields[19]), sorted(os.sched_getaffinity(int(entry)))]
        except (OSError, ValueError, IndexError):
            continue
    return found


def _restore_kthreads(record, report):
    moved = []
    for pid, (starttime, cpus) in record.items():
        if _starttime(int(pid)) != starttime:
            continue  # ended meanwhile; its pid may be another thread's now
        try:
            if sorted(os.sched_getaffinity(int(pid))) != cpus:
                os.sched_setaffinity(int(pid), cpus)
                moved.append(pid)
        except OSError:
            continue
    if moved:
        report.append("restored the affinity of %d kernel thread(s)" % len(moved))


def _irq_affinities():
    result = {}
    for entry in pathlib.Path("/proc/irq").iterdir():
        if entry.name.isdigit():
            try:
                result[entry.name] = (entry / "smp_affinity_list").read_text().strip()
            except OSError:
                continue
    return result


def _kvm_record():
    try:
        group = grp.getgrnam(KVM_GROUP)
    except KeyError:
        group = None
    try:
        info = os.stat(KVM_DEVICE)
        device = {"uid": info.st_uid, "gid": info.st_gid, "mode": info.st_mode & 0o7777}
    except OSError:
        device = None
    return {"group": group is not None, "member": group is not None and QEMU_USER in group.gr_mem, "device": device}


def _restore_kvm(record, report):
    device = record["device"]
    if device is not None and os.path.exists(KVM_DEVICE):
        info = os.stat(KVM_DEVICE)
        if (info.st_uid, info.st_gid, info.st_mode & 0o7777) != (device["uid"], device["gid"], device["mode"]):
            os.chown(KVM_DEVICE, device["uid"], device["gid"])
            os.chmod(KVM_DEVICE, device["mode"])
            report.append("restored %s to %d:%d %04o" % (KVM_DEVICE, device["uid"], device["gid"], device["mode"]))
    now = _kvm_record()
    if now["member"] and not record["member"]:
        _run(["gpasswd", "-d", QEMU_USER, KVM_GROUP])
        report.append("removed %s from group %s" % (QEMU_USER, KVM_GROUP))
    if now["group"] and not record["group"]:
        _run(["groupdel", KVM_GROUP])
        report.append("removed group %s" % KVM_GROUP)


def _pinned_guests():
    """The defined domains that hold pCPUs and are not the tests' own: {name: {xml, running, autostart}}."""
    guests = {}
    for name in _virsh("list", "--all", "--name").stdout.split():
        if _test_domain(name):
            continue
        xml = _virsh("dumpxml", "--inactive", "--security-info", name).stdout
        if "<vcpupin " in xml:
            running = name in _virsh("list", "--name").stdout.split()
            # undefine drops libvirt's autostart flag, and realtime_vm plans a guest without it as a change.
            autostart = name in _virsh("list", "--all", "--autostart", "--name").stdout.split()
            guests[name] = {"xml": xml, "running": running, "autostart": autostart}
    return guests


def _definitions_on_disk():
    config = pathlib.Path("/etc/libvirt/qemu")
    return sorted(p.stem for p in config.glob("*.xml")) if config.is_dir() else []


# --------------------------------------------------------------------------- leftovers of dead sessions

def _remove_tree(top, report, blocked):
    """rmdir ``top`` bottom-up; a cgroup with tasks stays and is named."""
    for dirpath, dirnames, _files in os.walk(top, topdown=False):
        for name in dirnames:
            _remove_tree_dir(pathlib.Path(dirpath) / name, report, blocked)
    _remove_tree_dir(pathlib.Path(top), report, blocked)


def _remove_tree_dir(path, report, blocked):
    if not path.is_dir():
        return
    try:
        path.rmdir()
        report.append("removed leftover cgroup %s" % path)
    except OSError as exc:
        procs = path / "cgroup.procs"
        tasks = procs.read_text().split() if procs.exists() else []
        blocked.append("%s (%s%s)" % (path, exc.strerror, "; tasks %s: move or stop them, then rmdir it"
                                      % " ".join(tasks) if tasks else ""))


def clear_leftovers(report):
    """Test domains and cgroups an interrupted session left behind. Returns what could not be cleared."""
    blocked = []
    if _libvirt_answers():
        for name in _virsh("list", "--all", "--name").stdout.split():
            if _test_domain(name):
                _virsh("destroy", name, check=False)
                _virsh("undefine", name, check=False)
                report.append("removed leftover test guest %s" % name)
    else:
        for name in _definitions_on_disk():
            if _test_domain(name):
                blocked.append("test guest definition /etc/libvirt/qemu/%s.xml (libvirtd is not running: start it "
                               "and run `virsh -c %s undefine %s`)" % (name, URI, name))
    for mount in libvirt_rig.cgroup_mounts():
        if mount.name == "memory":
            # Never walk the memory hierarchy (process_api lives there): only its top level and libvirt's machine/.
            tops = [mount, mount / "machine"]
            candidates = [c for top in tops if top.is_dir() for c in top.iterdir() if c.is_dir()]
        else:
            candidates = []
            for dirpath, dirnames, _files in os.walk(mount):
                for name in [n for n in dirnames if _test_name(n)]:
                    candidates.append(pathlib.Path(dirpath) / name)
                    dirnames.remove(name)
        for path in candidates:
            if _test_name(path.name):
                _remove_tree(path, report, blocked)
    return blocked


# --------------------------------------------------------------------------- save / restore

def save(holder_pid):
    """Snapshot the host and make room for the tests; returns a report (lines)."""
    report = []
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    previous = _load()
    if previous is not None:
        if _alive(previous.get("holder")):
            report.append("another live session (pid %d) holds the snapshot; leaving the host to it"
                          % previous["holder"]["pid"])
            return report
        report.append("a session that was interrupted left a snapshot; restoring it first")
        report.extend(restore(force=True))
    blocked = clear_leftovers(report)
    if blocked:
        raise GuardError("leftovers of an earlier test run could not be removed:\n  - " + "\n  - ".join(blocked))
    snapshot = {
        "holder": {"pid": holder_pid, "starttime": _starttime(holder_pid)},
        "files": {path: _file_record(path) for path in FILES},
        "sysctls": _knobs(),
        "kthreads": _kthread_affinities(),
        "default_smp_affinity": pathlib.Path("/proc/irq/default_smp_affinity").read_text().strip(),
        "irqs": _irq_affinities(),
        "kvm": _kvm_record(),
        "machine_cpus": None,
        "guests": {},
    }
    machine = CPUSET / "machine" / "cpuset.cpus"
    if machine.exists():
        snapshot["machine_cpus"] = machine.read_text().strip()
    if _libvirt_answers():
        snapshot["guests"] = _pinned_guests()
    elif [n for n in _definitions_on_disk() if not _test_domain(n)]:
        raise GuardError("guests are defined in /etc/libvirt/qemu but libvirtd is not running, so the tests cannot "
                         "park them: start it (hack/site.sh, or /usr/local/sbin/rtvirt-libvirtd ensure) and run again")
    # Saved before anything is changed: from here on, an interruption is undone by the next save.
    _store(snapshot)
    for name, guest in snapshot["guests"].items():
        if guest["running"]:
            _virsh("destroy", name)
        _virsh("undefine", name)
        report.append("parked guest %s (%s)" % (name, "was running" if guest["running"] else "defined"))
    everything = (CPUSET / "cpuset.cpus").read_text().strip() if CPUSET.is_dir() else None
    if snapshot["machine_cpus"] is not None and snapshot["machine_cpus"] != everything:
        machine.write_text(everything)
        report.append("widened /machine from CPUs %s to %s" % (snapshot["machine_cpus"], everything))
    return report


def restore(force=False):
    """Put back what the snapshot holds; a session that does not hold it restores nothing."""
    snapshot = _load()
    if snapshot is None:
        return ["no snapshot: nothing to restore"]
    if not force and snapshot["holder"]["pid"] != os.getpid() and _alive(snapshot["holder"]):
        return ["the snapshot belongs to the live session pid %d: left to it" % snapshot["holder"]["pid"]]
    report, errors = [], []

    def step(what, func, *args):
        try:
            func(*args)
        except (OSError, GuardError) as exc:
            errors.append("%s: %s" % (what, exc))

    for path, record in snapshot["files"].items():
        step("file %s" % path, _restore_file, path, record, report)
    # The workqueue cpumask before each workqueue's own, which must lie within it (the snapshot's keys are sorted).
    global_mask = "/sys/devices/virtual/workqueue/cpumask"
    for path, value in sorted(snapshot["sysctls"].items(), key=lambda item: item[0] != global_mask):
        if pathlib.Path(path).read_text().strip() != value:
            step("sysctl %s" % path, pathlib.Path(path).write_text, value)
            report.append("restored %s = %s" % (path, value))
    step("kernel threads", _restore_kthreads, snapshot.get("kthreads") or {}, report)
    step("KVM", _restore_kvm, snapshot["kvm"], report)
    current = _irq_affinities()
    moved = [irq for irq, cpus in snapshot["irqs"].items() if irq in current and current[irq] != cpus]
    for irq in moved:
        try:
            pathlib.Path("/proc/irq/%s/smp_affinity_list" % irq).write_text(snapshot["irqs"][irq])
        except OSError:
            pass  # managed IRQs refuse, and the kernel moved them itself
    if moved:
        report.append("restored the affinity of IRQ(s) %s" % ", ".join(sorted(moved, key=int)))
    default = pathlib.Path("/proc/irq/default_smp_affinity")
    if default.read_text().strip() != snapshot["default_smp_affinity"]:
        step("default_smp_affinity", default.write_text, snapshot["default_smp_affinity"])
        report.append("restored default_smp_affinity %s" % snapshot["default_smp_affinity"])
    machine = CPUSET / "machine" / "cpuset.cpus"
    if snapshot["machine_cpus"] is not None and machine.exists() \
            and machine.read_text().strip() != snapshot["machine_cpus"]:
        step("/machine cpus", machine.write_text, snapshot["machine_cpus"])
        report.append("narrowed /machine back to CPUs %s" % snapshot["machine_cpus"])
    if snapshot["guests"]:
        step("guests", _unpark, snapshot["guests"], report)
    if errors:
        # Keep the snapshot: the next save tries again, and the message says what failed.
        raise GuardError("the host could not be put back completely (snapshot kept in %s):\n  - %s"
                         % (STATE_FILE, "\n  - ".join(errors)))
    STATE_FILE.unlink()
    return report


def _unpark(guests, report):
    # The rig reuses running daemons and stops only those it started.
    state_dir = STATE_DIR / "rig"
    libvirt_rig.start(state_dir)
    try:
        defined = _virsh("list", "--all", "--name").stdout.split()
        for name, guest in guests.items():
            if name not in defined:
                tmp = STATE_DIR / ("%s.xml" % name)
                tmp.write_text(guest["xml"])
                _virsh("define", str(tmp))
                tmp.unlink()
            if guest["running"] and name not in _virsh("list", "--name").stdout.split():
                _virsh("start", name)
            if guest.get("autostart"):
                _virsh("autostart", name)
            report.append("gave back guest %s%s" % (name, " (running)" if guest["running"] else ""))
    finally:
        libvirt_rig.stop(state_dir)


def _load():
    try:
        return json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None


def _store(snapshot):
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, STATE_FILE)


def status():
    snapshot = _load()
    if snapshot is None:
        return ["no snapshot"]
    return ["snapshot held by pid %d (%s); parked guests: %s; /machine was %s" % (
        snapshot["holder"]["pid"], "alive" if _alive(snapshot["holder"]) else "gone",
        ", ".join(snapshot["guests"]) or "none", snapshot["machine_cpus"])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("action", choices=("save", "restore", "status"))
    args = parser.parse_args(argv)
    try:
        if args.action == "save":
            # Held by the parent (the shell running this): a CLI save lives until an explicit restore.
            lines = save(os.getppid())
        elif args.action == "restore":
            lines = restore(force=True)
        else:
            lines = status()
    except GuardError as exc:
        print("host_guard %s: %s" % (args.action, exc), file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
