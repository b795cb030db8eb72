"""A real libvirtd + QEMU test rig for machines without systemd (CI, developer machines).

Used in-process by the pytest fixtures (tests/support/fixtures_libvirt.py) and as a CLI by the
Molecule create/destroy playbooks:

    python tests/support/libvirt_rig.py start|stop|status --state-dir DIR

Standard library only, so any python3 on the host can run it. See /work/shared/KERNEL-FACTS.md,
"Running a real libvirtd on a machine without systemd", for why each setup step exists.

Ownership: `start` reuses a virtlogd/libvirtd that is already running and records in
`<state_dir>/rig.json` which daemons it started itself. `stop` only ever signals those, by PID
(checked against the process start time, so a recycled PID is never hit). Several rigs may share
the daemons (pytest-xdist workers, a Molecule scenario run from a pytest session): every rig
registers in a machine-wide directory, and a rig that stops while others are still registered
hands its daemons over to one of them instead of killing them; the last one out stops them.
Daemon logs (warnings and errors): /var/log/libvirt/libvirtd.log and virtlogd.log.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

URI = "qemu:///system"
DEBIAN_PACKAGES = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86")
# Without systemd nobody else sets these up; libvirtd 9.0 refuses to start without them.
QEMU_USER = "libvirt-qemu"
KVM_GROUP = "kvm"
LIBVIRT_LOG_DIR = pathlib.Path("/var/log/libvirt")
# libvirt writes the QEMU pid here when it starts a domain.
QEMU_PID_DIR = pathlib.Path("/run/libvirt/qemu")
# Machine-wide: the lock that serialises start/stop, and the registry of rigs sharing the daemons.
MACHINE_DIR = pathlib.Path("/run/rtvirt-libvirt-rig")
DAEMONS = ("virtlogd", "libvirtd")  # start order; stop goes in reverse
STATE_FILE = "rig.json"
# The first connection waits for the QEMU capability probe (about 8 s); leave a wide margin.
DEFAULT_READY_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0
# QEMU names its vCPU threads "CPU <index>/KVM" (or "/TCG" without KVM) when libvirt passes
# debug-threads=on, which it always does.
VCPU_THREAD_NAME = re.compile(r"CPU (\d+)/(?:KVM|TCG)")
# Tasks the kernel adds to the QEMU process (kvm-nx-lpage-recovery) carry PF_USER_WORKER.
PF_USER_WORKER = 0x00004000


class RigError(RuntimeError):
    """A rig step failed; the message carries the command, its exit code and its stderr."""


# --------------------------------------------------------------------------- host setup

def ensure_installed():
    """Install and configure what a bare libvirtd needs on Debian; returns the changes made."""
    if os.geteuid() != 0:
        raise RigError("the libvirt rig needs root (it installs packages and starts libvirtd)")
    changes = []
    missing = [pkg for pkg in DEBIAN_PACKAGES if not _deb_installed(pkg)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
        changes.append("installed %s" % " ".join(missing))
    if _run(["getent", "group", QEMU_USER], check=False).returncode != 0:
        _run(["groupadd", "--system", QEMU_USER])
        changes.append("created group %s" % QEMU_USER)
    if _run(["getent", "passwd", QEMU_USER], check=False).returncode != 0:
        _run(["useradd", "--system", "-g", QEMU_USER, "-M", "-s", "/usr/sbin/nologin", QEMU_USER])
        changes.append("created user %s" % QEMU_USER)
    if not LIBVIRT_LOG_DIR.is_dir():
        LIBVIRT_LOG_DIR.mkdir(parents=True, exist_ok=True)
        changes.append("created %s" % LIBVIRT_LOG_DIR)
    changes.extend(ensure_kvm_usable())
    return changes


def ensure_kvm_usable():
    """What a distribution (and host_prep) does for libvirt's QEMU user, never `user = "root"` in qemu.conf:
    group kvm with libvirt-qemu in it, and /dev/kvm root:kvm 0660 where no udev does it. Returns the changes;
    tests/support/host_guard.py puts them back after the session."""
    changes = []
    if _run(["getent", "group", KVM_GROUP], check=False).returncode != 0:
        _run(["groupadd", "--system", KVM_GROUP])
        changes.append("created group %s" % KVM_GROUP)
    members = _run(["getent", "group", KVM_GROUP]).stdout.strip().split(":")[-1].split(",")
    if QEMU_USER not in members:
        _run(["usermod", "-a", "-G", KVM_GROUP, QEMU_USER])
        changes.append("added %s to group %s" % (QEMU_USER, KVM_GROUP))
    device = pathlib.Path("/dev/kvm")
    if device.exists() and not pathlib.Path("/run/udev/control").exists():
        info = device.stat()
        gid = int(_run(["getent", "group", KVM_GROUP]).stdout.split(":")[2])
        if (info.st_gid, info.st_mode & 0o777) != (gid, 0o660):
            os.chown(device, 0, gid)
            os.chmod(device, 0o660)
            changes.append("made %s root:%s 0660" % (device, KVM_GROUP))
    return changes


# --------------------------------------------------------------------------- daemons

@dataclasses.dataclass
class Rig:
    """A running libvirtd (and its virtlogd) plus the guest helpers the tests use."""

    state_dir: pathlib.Path
    libvirtd_pid: int
    virtlogd_pid: int
    owns_libvirtd: bool
    owns_virtlogd: bool
    timings: dict  # seconds: "daemons_started" (spawn), "ready" (until virsh answers)
    uri: str = URI

    def virsh(self, *args, check=True):
        """Run `virsh -c URI ARGS...` in the C locale; raises RigError when check and it fails."""
        return _run(["virsh", "-c", self.uri, *args], check=check)

    def domains(self, inactive=True):
        """Names of the defined domains (only running ones when inactive is False)."""
        listing = self.virsh("list", "--name", *(["--all"] if inactive else []))
        return [line.strip() for line in listing.stdout.splitlines() if line.strip()]

    def define(self, xml):
        """Define a persistent domain from XML; returns its name."""
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="rtvirt-rig-") as handle:
            handle.write(xml)
            handle.flush()
            self.virsh("define", handle.name)
        return ET.fromstring(xml).findtext("name")

    def start(self, name):
        """Start a defined domain."""
        self.virsh("start", name)

    def destroy(self, name):
        """Power a running domain off (libvirt kills QEMU and removes the domain's cgroups)."""
        self.virsh("destroy", name)

    def undefine(self, name):
        """Remove a domain's persistent definition."""
        self.virsh("undefine", name)

    def qemu_pid(self, name):
        """PID of a running domain's QEMU process, from the pid file libvirt writes."""
        pid_file = QEMU_PID_DIR / ("%s.pid" % name)
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RigError("no QEMU pid for domain %r: %s" % (name, exc)) from exc
        if not process_running(pid):
            raise RigError("QEMU pid %d of domain %r is not running" % (pid, name))
        return pid

    def threads(self, name):
        """The running domain's QEMU threads, sorted into emulator, vCPU and kernel-worker tids."""
        pid = self.qemu_pid(name)
        emulator, vcpus, kernel_workers = [], {}, []
        for task in sorted(pathlib.Path("/proc/%d/task" % pid).iterdir(), key=lambda p: int(p.name)):
            tid = int(task.name)
            try:
                comm = (task / "comm").read_text().rstrip("\n")
                flags = int(_stat_fields(task / "stat")[6])
            except OSError:
                continue  # the thread exited while we looked
            vcpu = VCPU_THREAD_NAME.fullmatch(comm)
            if vcpu:
                vcpus[int(vcpu.group(1))] = tid
            elif flags & PF_USER_WORKER:
                kernel_workers.append(tid)
            else:
                emulator.append(tid)
        return GuestThreads(tuple(emulator), vcpus, tuple(kernel_workers))

    @contextlib.contextmanager
    def guest(self, name, **domain_options):
        """Define and start a tiny_domain_xml guest; always destroys and undefines it on exit.

        Yields a Guest(name, pid). A failed start raises RigError after the cleanup has run.
        """
        try:
            self.define(tiny_domain_xml(name, **domain_options))
            self.start(name)
            yield Guest(name, self.qemu_pid(name))
        finally:
            if name in self.domains(inactive=False):
                self.destroy(name)
            if name in self.domains():
                self.undefine(name)


@dataclasses.dataclass(frozen=True)
class Guest:
    """A running guest from Rig.guest: its domain name and its QEMU pid."""

    name: str
    pid: int


@dataclasses.dataclass(frozen=True)
class GuestThreads:
    """A guest's QEMU threads by role (thread ids, as in /proc/<pid>/task)."""

    emulator: tuple  # QEMU's own threads: main loop, RCU, I/O, workers (the emulator cgroup's)
    vcpus: dict  # vCPU index -> thread id
    kernel_workers: tuple  # kernel tasks inside the QEMU process, e.g. kvm-nx-lpage-recovery


def start(state_dir, ready_timeout=DEFAULT_READY_TIMEOUT, holder_pid=None):
    """Start (or reuse) virtlogd and libvirtd, wait until libvirtd answers, and return a Rig.

    holder_pid: a process whose death means this rig is abandoned (the pytest process), so that
    a later rig does not hand the daemons to it; None for a CLI-driven rig, which lives until
    `stop`.
    """
    state_dir = pathlib.Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _machine_lock():
        state = _load_state(state_dir)
        began = time.monotonic()
        try:
            for daemon in DAEMONS:
                record = state.get(daemon)
                if record and record["owned"] and _same_process(record):
                    continue  # this rig already started it (start called twice)
                running = running_daemon_pid(daemon)
                if running:
                    state[daemon] = _record(running, owned=False)
                    continue
                if daemon == "libvirtd":
                    # libvirtd makes `machine` in every hierarchy at the first guest start and
                    # never removes it; the rig removes the ones that did not exist before, if empty.
                    state["cgroup_dirs_to_remove"] = [
                        str(path) for path in (mount / "machine" for mount in cgroup_mounts())
                        if not path.exists()]
                state[daemon] = _record(_spawn(daemon, state_dir), owned=True)
                _save_state(state_dir, state)  # recorded at once, so a failure below can stop it
            started = time.monotonic()
            _save_state(state_dir, state)
            _register(state_dir, holder_pid)
            # Holding the lock while waiting makes a concurrent rig reuse a ready daemon.
            _wait_until_answering(state, ready_timeout)
        except BaseException:  # also Ctrl-C during the long first wait: leave nothing running
            _stop_locked(state_dir, DEFAULT_STOP_TIMEOUT)
            raise
        state["timings"] = {"daemons_started": round(started - began, 3),
                            "ready": round(time.monotonic() - began, 3)}
        _save_state(state_dir, state)
    return _rig_from_state(state_dir, state)


def stop(state_dir, stop_timeout=DEFAULT_STOP_TIMEOUT):
    """Stop the daemons this rig started (or hand them to another rig still using them).

    Returns a report: which daemons were stopped, handed over or left running (not ours), which
    guests were still running when libvirtd was stopped, and which cgroup dirs were removed or
    had to stay. A rig that was never started (no state) reports nothing to do.
    """
    with _machine_lock():
        return _stop_locked(pathlib.Path(state_dir).resolve(), stop_timeout)


def restart_libvirtd(state_dir, stop_timeout=DEFAULT_STOP_TIMEOUT, ready_timeout=DEFAULT_READY_TIMEOUT):
    """Stop this rig's libvirtd (its own or the one it reuses) by PID and start it again with the same command
    line and environment, as an operator's restart does; running guests stay up (libvirtd reconnects to them).
    Every registered rig that recorded the old daemon records the new one. Returns the Rig after the restart."""
    state_dir = pathlib.Path(state_dir).resolve()
    with _machine_lock():
        state = _load_state(state_dir)
        record = state["libvirtd"]
        if not _same_process(record):
            raise RigError("libvirtd (pid %d) of rig %s is not running" % (record["pid"], state_dir))
        proc = pathlib.Path("/proc/%d" % record["pid"])
        argv = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        env = dict(item.split("=", 1) for item in proc.joinpath("environ").read_bytes().decode().split("\0")
                   if "=" in item)
        pid_file = pathlib.Path(argv[argv.index("--pid-file") + 1]) if "--pid-file" in argv else None
        _terminate(record, stop_timeout)
        _run(argv, env=env, timeout=60)
        deadline = time.monotonic() + 10
        pid = None
        while pid is None and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip()) if pid_file else running_daemon_pid("libvirtd")
            except (OSError, ValueError):
                time.sleep(0.05)
        if pid is None:
            raise RigError("libvirtd restarted as %s but its pid is unknown" % " ".join(argv))
        fresh = _record(pid, owned=record["owned"])
        for entry in [state_dir] + sorted(pathlib.Path(json.loads(path.read_text())["state_dir"])
                                          for path in (MACHINE_DIR / "rigs").glob("*.json")):
            other = _load_state(entry)
            if other.get("libvirtd", {}).get("pid") == record["pid"]:
                other["libvirtd"] = dict(fresh, owned=other["libvirtd"]["owned"])
                _save_state(entry, other)
        state = _load_state(state_dir)
        _wait_until_answering(state, ready_timeout)
    return _rig_from_state(state_dir, state)


def _stop_locked(state_dir, stop_timeout):
    report = {"stopped": [], "handed_over": [], "left_running": [], "guests_left_running": [],
              "removed_cgroup_dirs": [], "kept_cgroup_dirs": []}
    state = _load_state(state_dir)
    _unregister(state_dir)
    owned = [d for d in DAEMONS if d in state and state[d]["owned"] and _same_process(state[d])]
    report["left_running"] = [d for d in DAEMONS if d in state and not state[d]["owned"]]
    heir = _next_registered_rig() if owned else None
    if heir:
        heir_state = _load_state(heir)
        for daemon in owned:
            heir_state[daemon] = state[daemon]
        heir_state["cgroup_dirs_to_remove"] = state.get("cgroup_dirs_to_remove", [])
        _save_state(heir, heir_state)
        report["handed_over"] = ["%s -> %s" % (daemon, heir) for daemon in owned]
    elif owned:
        if "libvirtd" in owned:
            # Guests outlive libvirtd; report them rather than silently leave QEMU behind.
            report["guests_left_running"] = _running_guests_or_why_unknown()
        for daemon in reversed(DAEMONS):
            if daemon in owned:
                _terminate(state[daemon], stop_timeout)
                report["stopped"].append("%s (pid %d)" % (daemon, state[daemon]["pid"]))
        for path in map(pathlib.Path, state.get("cgroup_dirs_to_remove", [])):
            if not path.exists():
                continue
            try:
                path.rmdir()
                report["removed_cgroup_dirs"].append(str(path))
            except OSError as exc:  # EBUSY: children or tasks left, e.g. a guest still runs
                report["kept_cgroup_dirs"].append("%s (%s)" % (path, exc.strerror))
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return report


def _running_guests_or_why_unknown():
    try:
        listing = _run(["virsh", "-c", URI, "list", "--name"], timeout=15)
    except RigError as exc:  # a hung or broken libvirtd must not keep stop() from stopping it
        return ["unknown: %s" % exc]
    return listing.stdout.split()


def status(state_dir):
    """What a rig's state dir records, whether each daemon still runs, and whether virsh answers."""
    state_dir = pathlib.Path(state_dir).resolve()
    state = _load_state(state_dir)
    result = {"state_dir": str(state_dir), "timings": state.get("timings", {})}
    for daemon in DAEMONS:
        if daemon in state:
            result[daemon] = dict(state[daemon], running=_same_process(state[daemon]))
    answer = _run(["virsh", "-c", URI, "version"], check=False, timeout=15)
    result["answering"] = answer.returncode == 0
    return result


# --------------------------------------------------------------------------- guests

def tiny_domain_xml(name, vcpus=2, memory_mib=128, partition=None, cputune=None, emulatorpin=None,
                    vcpupins=None, type=None, console=False, hook_ensures_partition=True):
    """XML for a diskless guest that idles in the BIOS: no disk, no network, no balloon.

    partition: <resource><partition> (e.g. "/machine/rt"); emulatorpin: a CPU list;
    vcpupins: {vcpu index: CPU list}; cputune: extra raw <cputune> children, e.g.
    "<vcpusched vcpus='0' scheduler='fifo' priority='1'/>"; type: "kvm" or "qemu" (default: kvm
    when /dev/kvm can be opened); console: add a pty serial console.
    """
    domain = ET.Element("domain", type=type or ("kvm" if kvm_usable() else "qemu"))
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vcpus)
    if partition:
        ET.SubElement(ET.SubElement(domain, "resource"), "partition").text = partition
    if not hook_ensures_partition:
        # host_prep's qemu hook re-creates missing partitions; tests of libvirt's own behaviour opt out.
        metadata = ET.SubElement(domain, "metadata")
        ET.SubElement(metadata, "{urn:rtvirt:kvm:hook:1}hook", ensure_partition="false")
    if cputune or emulatorpin or vcpupins:
        tune = ET.SubElement(domain, "cputune")
        for vcpu, cpuset in sorted((vcpupins or {}).items()):
            ET.SubElement(tune, "vcpupin", vcpu=str(vcpu), cpuset=cpuset)
        if emulatorpin:
            ET.SubElement(tune, "emulatorpin", cpuset=emulatorpin)
        if cputune:
            tune.extend(ET.fromstring("<cputune>%s</cputune>" % cputune))
    ET.SubElement(ET.SubElement(domain, "os"), "type", arch="x86_64").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    if console:
        ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(devices, "console", type="pty")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def kvm_usable():
    """True when /dev/kvm can be opened read-write (QEMU needs exactly that for type='kvm')."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def running_daemon_pid(name):
    """PID of a live (not zombie) process whose command name is `name`, or None.

    For finding a daemon to reuse; never to kill by (see the module docstring).
    """
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().rstrip("\n") == name and process_running(int(proc.name)):
                return int(proc.name)
        except OSError:
            continue  # exited while we looked
    return None


def process_running(pid):
    """True while pid is a live process (a zombie counts as gone)."""
    try:
        return _stat_fields("/proc/%d/stat" % pid)[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- internals

def _run(argv, check=True, env=None, timeout=120):
    # C locale: tests assert on English messages (the daemons get it too, they translate them).
    env = dict(env or os.environ, LC_ALL="C")
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RigError("%s: no answer within %s s" % (" ".join(argv), timeout)) from exc
    if check and result.returncode != 0:
        raise RigError("%s failed with exit code %d: %s"
                       % (" ".join(argv), result.returncode, (result.stderr or result.stdout).strip()))
    return result


def _deb_installed(package):
    query = _run(["dpkg-query", "-W", "-f=${Status}", package], check=False)
    return query.returncode == 0 and query.stdout.endswith("install ok installed")


def _stat_fields(path):
    """Fields of /proc/<pid>/stat after the command name: [0] state, [6] flags, [19] starttime."""
    text = pathlib.Path(path).read_text()
    return text[text.rindex(")") + 2:].split()


def _identity(pid):
    """PID plus start time: together they name one process, even after the PID is recycled."""
    return {"pid": pid, "starttime": int(_stat_fields("/proc/%d/stat" % pid)[19])}


def _record(pid, owned):
    return dict(_identity(pid), owned=owned)


def _same_process(record):
    """True while the recorded daemon runs: same PID, same start time (so not a recycled PID)."""
    try:
        fields = _stat_fields("/proc/%d/stat" % record["pid"])
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == record["starttime"]


def _spawn(daemon, state_dir):
    """Start `daemon --daemon --pid-file` with its log in the state dir; returns its PID."""
    pid_file = state_dir / ("%s.pid" % daemon)
    pid_file.unlink(missing_ok=True)
    # A daemonised libvirt daemon logs nowhere by default without journald; keep warnings. Not in
    # the state dir: the daemon may outlive it (handed to another rig, pytest pruning its old
    # temp dirs), and libvirtd's forked children reopen this file before exec; if it cannot be
    # opened, QEMU "exits" with status 125 and no guest starts.
    LIBVIRT_LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS="3:file:%s" % _daemon_log(daemon))
    # --daemon returns once the child is initialised; the child writes the pid file itself.
    _run([daemon, "--daemon", "--pid-file", str(pid_file)], env=env, timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RigError("%s started but wrote no pid to %s" % (daemon, pid_file))


def _daemon_log(daemon):
    return LIBVIRT_LOG_DIR / ("%s.log" % daemon)


def _wait_until_answering(state, timeout):
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RigError("libvirtd did not answer `virsh -c %s version` within %s s; see %s"
                           % (URI, timeout, _daemon_log("libvirtd")))
        try:
            answer = _run(["virsh", "-c", URI, "version"], check=False, timeout=remaining)
        except RigError:
            continue  # timed out: the loop reports it
        if answer.returncode == 0:
            return
        if not _same_process(state["libvirtd"]):
            log = _daemon_log("libvirtd")
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise RigError("libvirtd (pid %d) exited before answering; %s:\n%s"
                           % (state["libvirtd"]["pid"], log, tail))
        time.sleep(0.2)


def _terminate(record, timeout):
    """SIGTERM, wait up to timeout, then SIGKILL; only while the PID is still the recorded one."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not _same_process(record):
            return
        os.kill(record["pid"], sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _same_process(record):
                return
            time.sleep(0.05)
    raise RigError("pid %d survived SIGKILL" % record["pid"])


def cgroup_mounts():
    """Mountpoints of every cgroup and cgroup2 hierarchy."""
    mounts = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            fields = line.split()
            if fields[2] in ("cgroup", "cgroup2"):
                mounts.append(pathlib.Path(fields[1]))
    return mounts


def _rig_from_state(state_dir, state):
    return Rig(state_dir=state_dir, libvirtd_pid=state["libvirtd"]["pid"],
               virtlogd_pid=state["virtlogd"]["pid"], owns_libvirtd=state["libvirtd"]["owned"],
               owns_virtlogd=state["virtlogd"]["owned"], timings=state.get("timings", {}))


def _load_state(state_dir):
    try:
        return json.loads((pathlib.Path(state_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def _save_state(state_dir, state):
    path = pathlib.Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _machine_lock():
    MACHINE_DIR.mkdir(parents=True, exist_ok=True)
    with open(MACHINE_DIR / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _registry_entry(state_dir):
    key = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return MACHINE_DIR / "rigs" / ("%s.json" % key)


def _register(state_dir, holder_pid):
    entry = {"state_dir": str(state_dir), "holder": _identity(holder_pid) if holder_pid else None}
    path = _registry_entry(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry) + "\n")


def _unregister(state_dir):
    _registry_entry(state_dir).unlink(missing_ok=True)


def _next_registered_rig():
    """State dir of another live rig to hand daemons to; forgets rigs that were abandoned."""
    for path in sorted((MACHINE_DIR / "rigs").glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            entry = None
        alive = (entry is not None and (pathlib.Path(entry["state_dir"]) / STATE_FILE).exists()
                 and (entry["holder"] is None or _same_process(entry["holder"])))
        if alive:
            return pathlib.Path(entry["state_dir"])
        path.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--state-dir", required=True, help="pid files and ownership record of this rig")
    parser.add_argument("--timeout", type=float, help="seconds to wait for libvirtd (start) or for "
                        "a daemon to exit after SIGTERM (stop)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            changes = ensure_installed()
            rig = start(args.state_dir, ready_timeout=args.timeout or DEFAULT_READY_TIMEOUT)
            result = dict(dataclasses.asdict(rig), state_dir=str(rig.state_dir), host_changes=changes)
        elif args.action == "stop":
            result = stop(args.state_dir, stop_timeout=args.timeout or DEFAULT_STOP_TIMEOUT)
        else:
            result = status(args.state_dir)
    except RigError as exc:
        print("libvirt_rig %s: %s" % (args.action, exc), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    # status: exit 3 ("not running", as LSB init scripts do) when libvirtd does not answer.
    return 3 if args.action == "status" and not result["answering"] else 0


if __name__ == "__main__":
    sys.exit(main())
