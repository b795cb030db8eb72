#!/usr/bin/env python
"""Boot the systemd + cgroup v2 test host (built by build.sh) under QEMU TCG, and reach it over SSH.

Library::

    with V2Host("6.12") as host:          # builds/reuses the image, boots, waits for SSH
        host.ssh("cat /sys/fs/cgroup/cgroup.controllers").stdout
        host.kernel_release                # e.g. "6.12.38+bpo-amd64"
        host.inventory_path                # <state_dir>/inventory.yml, host "v2host"
    # always powered off here: `systemctl poweroff` over SSH, bounded wait, then the QEMU PID

    with V2Host("6.1", init="v1") as host:  # the CI machines' shape: no systemd, cgroup v1 per controller
        host.reboot()                      # a real reboot: same disk, fresh kernel and cgroupfs

CLI (for debugging by hand)::

    boot.py build [--flavour prod]                  # prints the cache dir
    boot.py boot --kernel 6.1|6.12 --state-dir D    # starts QEMU, waits for SSH, writes D/inventory.yml
                 [--init v1]                        # no systemd, cgroup v1 hierarchies (the CI host's shape)
                 [--topology 2x2x2:2]               # 2 sockets x 2 cores x 2 threads on 2 NUMA nodes
                 [--flavour prod --kernel 6.1-rt]   # PREEMPT_RT, libvirt and machined in the image
    boot.py reboot --state-dir D                    # power off and boot again from the same disk
    boot.py ssh --state-dir D -- CMD...             # runs CMD in the guest
    boot.py shutdown --state-dir D                  # powers it off

Only processes this module started are ever signalled: the PID comes from QEMU's -pidfile in the
state dir and is checked against /proc/PID/cmdline (which must name that pidfile) before a signal.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

#: kernel series -> which QEMU boots it under TCG. 6.12 needs QEMU >= 8 (see README.md), so it uses
#: the bookworm-backports QEMU that build.sh unpacks into the cache dir; 6.1 uses the host's QEMU 7.2.
KERNELS = {"6.1": "host", "6.12": "backports"}

#: build.sh's flavours and the kernels each image has. "prod" is the production-shaped host: the base recipe
#: plus Debian's PREEMPT_RT kernel ("6.1-rt") and libvirt with machined; it has no 6.12 and no backports QEMU.
FLAVOURS = {"base": KERNELS, "prod": {"6.1-rt": "host", "6.1": "host"}}

#: How the guest starts. "systemd": systemd as PID 1 on pure cgroup v2. "v1": the CI machines' shape,
#: /usr/local/sbin/rtvirt-init-v1 (build.sh) as PID 1: no systemd, one cgroup v1 hierarchy per controller
#: under /sys/fs/cgroup plus name=systemd, cgroup2 at /sys/fs/cgroup/unified.
INITS = {
    "systemd": {"append": "systemd.unified_cgroup_hierarchy=1", "poweroff": "systemctl --no-block poweroff"},
    "v1": {"append": "init=/usr/local/sbin/rtvirt-init-v1", "poweroff": "kill -TERM 1"},
}

HOST_QEMU = "qemu-system-x86_64"
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "ServerAliveInterval=15",
    "-o", "ServerAliveCountMax=8",
]


class V2HostError(RuntimeError):
    """The test host could not be built, booted or reached."""


class CpuTopology:
    """What QEMU is told about the guest's CPUs: ``sockets x cores x threads``, spread over ``nodes`` NUMA nodes.

    Each node gets whole sockets and an equal share of the memory: QEMU numbers CPUs socket by socket, core by
    core, thread by thread, so node N holds a contiguous range and a core's threads are neighbours. Memory comes
    from one ``memory-backend-ram`` object per node (``-numa node,memdev=``), since QEMU 5.1's machine types
    refuse the older ``mem=``.
    """

    def __init__(self, sockets, cores, threads, nodes=1):
        for name, value in (("sockets", sockets), ("cores", cores), ("threads", threads), ("nodes", nodes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError("%s must be a positive integer, not %r" % (name, value))
        if sockets % nodes:
            raise ValueError("%d NUMA nodes cannot share %d sockets evenly: give each node whole sockets"
                             % (nodes, sockets))
        self.sockets, self.cores, self.threads, self.nodes = sockets, cores, threads, nodes

    @property
    def cpus(self):
        return self.sockets * self.cores * self.threads

    def node_cpus(self, node):
        """The CPU indexes QEMU gives node ``node`` (a range)."""
        per_node = self.cpus // self.nodes
        return range(node * per_node, (node + 1) * per_node)

    def qemu_args(self, memory_mib):
        """``-smp`` and, with more than one node, the memory backends and ``-numa`` options."""
        args = ["-smp", "%d,sockets=%d,cores=%d,threads=%d" % (self.cpus, self.sockets, self.cores, self.threads)]
        if self.nodes == 1:
            return args
        if memory_mib % self.nodes:
            raise ValueError("%d MiB cannot be split evenly over %d NUMA nodes" % (memory_mib, self.nodes))
        for node in range(self.nodes):
            cpus = self.node_cpus(node)
            args += ["-object", "memory-backend-ram,id=mem%d,size=%dM" % (node, memory_mib // self.nodes),
                     "-numa", "node,nodeid=%d,cpus=%d-%d,memdev=mem%d" % (node, cpus[0], cpus[-1], node)]
        return args

    @property
    def cpu_model(self):
        """TCG's ``max`` CPU says AuthenticAMD, and Linux reads an AMD CPU's threads from CPUID 0x8000001E
        (topoext), which TCG does not offer: every thread would be a core of its own. With GenuineIntel the
        kernel reads leaf 0xB, where QEMU reports the threads as given."""
        return "max,vendor=GenuineIntel" if self.threads > 1 else "max"

    def as_dict(self):
        return {"sockets": self.sockets, "cores": self.cores, "threads": self.threads, "nodes": self.nodes}

    def __eq__(self, other):
        return isinstance(other, CpuTopology) and self.as_dict() == other.as_dict()

    def __hash__(self):
        return hash(tuple(sorted(self.as_dict().items())))

    def __repr__(self):
        return "CpuTopology(%d sockets x %d cores x %d threads, %d node(s))" % (
            self.sockets, self.cores, self.threads, self.nodes)


def ensure_built(timeout=1800, flavour="base"):
    """Run build.sh for ``flavour`` (a no-op when the cache is current) and return the cache dir."""
    if flavour not in FLAVOURS:
        raise ValueError("flavour must be one of %s, not %r" % (sorted(FLAVOURS), flavour))
    proc = subprocess.run(["bash", str(BUILD_SH), flavour], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise V2HostError("build.sh failed (rc=%d):\n%s" % (proc.returncode, proc.stderr[-6000:]))
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise V2HostError("build.sh printed no cache dir:\n%s" % proc.stderr[-3000:])
    return pathlib.Path(lines[-1])


def free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_state(pid):
    """'R', 'S', 'Z', ... or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid):
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _is_ours(pid, pidfile):
    """True when PID is the QEMU that was started with this pidfile."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(pidfile).encode() in argv


class V2Host:
    """One booted test host. Use as a context manager, or call boot() and shutdown() yourself."""

    def __init__(self, kernel="6.1", state_dir=None, memory_mib=2048, smp=4, append="",
                 qemu=None, boot_timeout=600, cache_dir=None, init="systemd", topology=None, flavour="base"):
        if flavour not in FLAVOURS:
            raise ValueError("flavour must be one of %s, not %r" % (sorted(FLAVOURS), flavour))
        if kernel not in FLAVOURS[flavour]:
            raise ValueError("kernel must be one of %s, not %r" % (sorted(FLAVOURS[flavour]), kernel))
        if init not in INITS:
            raise ValueError("init must be one of %s, not %r" % (sorted(INITS), init))
        self.kernel = kernel
        self.init = init
        self.flavour = flavour
        self._own_state_dir = state_dir is None
        self.state_dir = pathlib.Path(state_dir or tempfile.mkdtemp(prefix="rtvirt-v2host-")).resolve()
        self.memory_mib = memory_mib
        # A CpuTopology replaces the plain "-smp N" (its CPU count wins over smp); None keeps the default boot.
        self.topology = topology
        self.smp = topology.cpus if topology is not None else smp
        self.append = append
        self.qemu = qemu or FLAVOURS[flavour][kernel]
        self.boot_timeout = boot_timeout
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir else None
        self.port = None
        self.pid = None
        self.boot_seconds = None
        self._kernel_release = None

    # --- paths ---
    @property
    def inventory_path(self):
        return self.state_dir / "inventory.yml"

    @property
    def console_log(self):
        return self.state_dir / "console.log"

    @property
    def pidfile(self):
        return self.state_dir / "qemu.pid"

    @property
    def overlay(self):
        return self.state_dir / "overlay.qcow2"

    @property
    def state_file(self):
        return self.state_dir / "state.json"

    @property
    def key_path(self):
        return self.cache_dir / "id_ed25519"

    @property
    def control_path(self):
        # Short (sun_path is 108 bytes), unique per state dir.
        tag = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:12]
        return pathlib.Path(tempfile.gettempdir()) / ("rtvirt-v2host-%s.ssh" % tag)

    # --- QEMU ---
    def qemu_command(self, port):
        """The QEMU argv and extra environment for this kernel."""
        kdir = self.cache_dir / ("kernel-%s" % self.kernel)
        append = ("root=/dev/vda rw console=ttyS0 %s panic=-1 %s"
                  % (INITS[self.init]["append"], self.append)).strip()
        env = {}
        if self.qemu == "backports":
            qroot = self.cache_dir / "qemu"
            binary = str(qroot / "usr/bin/qemu-system-x86_64")
            firmware = ["-L", str(qroot / "usr/share/qemu"), "-L", str(qroot / "usr/share/seabios")]
            # Its loadable modules must be its own, not the host QEMU 7.2's.
            env["QEMU_MODULE_DIR"] = str(qroot / "usr/lib/x86_64-linux-gnu/qemu")
        elif self.qemu == "host":
            binary = HOST_QEMU
            firmware = []
        else:
            raise ValueError("qemu must be 'host' or 'backports', not %r" % (self.qemu,))
        argv = [
            binary, *firmware,
            "-name", "rtvirt-v2host-%s" % self.kernel,
            "-machine", "pc",
            "-accel", "tcg,thread=multi,tb-size=256",
            "-cpu", "max" if self.topology is None else self.topology.cpu_model,
            *(self.topology.qemu_args(self.memory_mib) if self.topology is not None else ["-smp", str(self.smp)]),
            "-m", str(self.memory_mib),
            "-kernel", str(kdir / "vmlinuz"),
            "-initrd", str(kdir / "initrd.img"),
            "-append", append,
            "-drive", "file=%s,if=virtio,format=qcow2,cache=unsafe,discard=unmap" % self.overlay,
            # Only loopback is forwarded; romfile= skips the iPXE option ROM (not needed with -kernel).
            "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % port,
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-display", "none",
            "-vga", "none",
            "-monitor", "none",
            "-serial", "file:%s" % self.console_log,
            "-no-reboot",
            "-daemonize",
            "-pidfile", str(self.pidfile),
        ]
        return argv, env

    def boot(self, fresh_disk=True):
        """Start QEMU and wait for SSH. ``fresh_disk=False`` keeps the overlay (what reboot() uses)."""
        if self.cache_dir is None:
            self.cache_dir = ensure_built(flavour=self.flavour)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.pidfile.exists():
            old = int(self.pidfile.read_text().strip() or 0)
            if old and _alive(old) and _is_ours(old, self.pidfile):
                raise V2HostError("a test host from %s is still running (pid %d); shut it down first"
                                  % (self.state_dir, old))
            self.pidfile.unlink()
        stale = [self.console_log, self.inventory_path, self.state_file]
        if fresh_disk:
            stale.append(self.overlay)
        elif not self.overlay.exists():
            raise V2HostError("no disk to boot again from: %s is gone" % self.overlay)
        if self.console_log.exists() and not fresh_disk:
            # Keep the previous boot's console: the reboot tests may need it.
            self.console_log.rename(self.state_dir / ("console.%d.log" % time.time_ns()))
        for path in stale:
            if path.exists():
                path.unlink()
        if fresh_disk:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.cache_dir / "base.raw"),
                            "-F", "raw", str(self.overlay)], check=True, capture_output=True, text=True)
        started = time.monotonic()
        last_error = ""
        for _attempt in range(5):
            port = free_loopback_port()
            argv, env = self.qemu_command(port)
            proc = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=120, check=False)
            if proc.returncode == 0:
                break
            last_error = proc.stderr.strip()
            if "host forwarding" not in last_error:   # anything but a port race is fatal
                raise V2HostError("QEMU did not start (rc=%d): %s\n%s"
                                  % (proc.returncode, last_error, shlex.join(argv)))
        else:
            raise V2HostError("QEMU could not forward a loopback port: %s" % last_error)
        self.port = port
        self.pid = int(self.pidfile.read_text().strip())
        self._kernel_release = None
        self._write_state(argv, env)
        try:
            self._wait_for_ssh(started)
        except BaseException:
            self.shutdown()
            raise
        self.boot_seconds = time.monotonic() - started
        self._write_inventory()
        self._write_state(argv, env)
        return self

    def _wait_for_ssh(self, started):
        deadline = started + self.boot_timeout
        while True:
            if not _alive(self.pid):
                raise V2HostError("QEMU (pid %d) exited during boot; console:\n%s"
                                  % (self.pid, self.console_tail()))
            proc = self.ssh("true", timeout=60, control=False, connect_timeout=20)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise V2HostError("no SSH on 127.0.0.1:%d after %d s (last: %s); console:\n%s"
                                  % (self.port, self.boot_timeout, proc.stderr.strip(),
                                     self.console_tail()))
            time.sleep(2)

    def console_tail(self, lines=60):
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def _write_inventory(self):
        common = " ".join(SSH_OPTIONS[:8])   # host key checking off, quiet
        self.inventory_path.write_text(
            "# Written by tests/support/v2host/boot.py; valid while this test host runs.\n"
            "all:\n"
            "  hosts:\n"
            "    v2host:\n"
            "      ansible_host: 127.0.0.1\n"
            "      ansible_port: %d\n"
            "      ansible_user: root\n"
            "      ansible_ssh_private_key_file: %s\n"
            "      ansible_python_interpreter: /usr/bin/python3\n"
            "      ansible_ssh_common_args: %s\n"
            "      rtvirt_v2host_kernel: %s\n"
            "      rtvirt_v2host_init: %s\n"
            % (self.port, json.dumps(str(self.key_path)), json.dumps(common), json.dumps(self.kernel),
               json.dumps(self.init)))

    def _write_state(self, argv, env):
        self.state_file.write_text(json.dumps({
            "kernel": self.kernel, "init": self.init, "flavour": self.flavour, "qemu": self.qemu, "port": self.port, "pid": self.pid,
            "cache_dir": str(self.cache_dir), "argv": argv, "env": env,
            "topology": self.topology.as_dict() if self.topology is not None else None,
            "boot_seconds": self.boot_seconds, "own_state_dir": self._own_state_dir,
        }, indent=2) + "\n")

    @classmethod
    def attach(cls, state_dir):
        """A V2Host for a guest booted earlier (e.g. by the CLI) from its state dir."""
        state_dir = pathlib.Path(state_dir).resolve()
        data = json.loads((state_dir / "state.json").read_text())
        topology = CpuTopology(**data["topology"]) if data.get("topology") else None
        host = cls(data["kernel"], state_dir=state_dir, qemu=data["qemu"], cache_dir=data["cache_dir"],
                   init=data.get("init", "systemd"), topology=topology, flavour=data.get("flavour", "base"))
        host._own_state_dir = data.get("own_state_dir", False)
        host.port, host.pid, host.boot_seconds = data["port"], data["pid"], data["boot_seconds"]
        return host

    # --- guest access ---
    def ssh_argv(self, control=True, connect_timeout=30):
        argv = ["ssh", *SSH_OPTIONS, "-o", "ConnectTimeout=%d" % connect_timeout,
                "-i", str(self.key_path), "-p", str(self.port)]
        if control:
            argv += ["-o", "ControlMaster=auto", "-o", "ControlPath=%s" % self.control_path,
                     "-o", "ControlPersist=300"]
        return argv + ["root@127.0.0.1"]

    def ssh(self, cmd, check=False, timeout=300, input=None, control=True, connect_timeout=30):
        """Run a shell command line in the guest; returns a CompletedProcess (text mode)."""
        if self.port is None:
            raise V2HostError("the test host is not running")
        argv = self.ssh_argv(control=control, connect_timeout=connect_timeout) + ["--", cmd]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              check=check, stdin=None if input is not None else subprocess.DEVNULL)

    @property
    def kernel_release(self):
        if self._kernel_release is None:
            self._kernel_release = self.ssh("uname -r", check=True).stdout.strip()
        return self._kernel_release

    # --- shutdown ---
    def reboot(self, poweroff_timeout=120):
        """A real reboot: power the guest off (its disk is kept), start QEMU again from the same disk and
        wait for SSH. The guest gets a fresh kernel, so cgroupfs and /run start empty. (QEMU runs with
        -no-reboot, so the guest's own reboot would end QEMU; this is the same, done in two steps.)"""
        self._stop(poweroff_timeout=poweroff_timeout)
        return self.boot(fresh_disk=False)

    def _stop(self, poweroff_timeout=120, term_timeout=20):
        """Power off over SSH, wait (bounded), then end our QEMU by PID if it is still there."""
        pid = self.pid
        if pid is None and self.pidfile.exists():
            pid = int(self.pidfile.read_text().strip() or 0) or None
        if pid and _alive(pid) and _is_ours(pid, self.pidfile):
            if self.port is not None:
                try:
                    self.ssh(INITS[self.init]["poweroff"], timeout=30, control=False,
                             connect_timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if not _wait_gone(pid, poweroff_timeout):
                for sig, wait in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 10)):
                    if not (_alive(pid) and _is_ours(pid, self.pidfile)):
                        break
                    os.kill(pid, sig)
                    if _wait_gone(pid, wait):
                        break
        self._close_control()
        if self.pidfile.exists():
            self.pidfile.unlink()
        self.port = None
        self.pid = None

    def shutdown(self, poweroff_timeout=120, term_timeout=20):
        """Power off (see _stop) and remove the disk overlay; the state dir too when it was our own."""
        self._stop(poweroff_timeout=poweroff_timeout, term_timeout=term_timeout)
        for path in (self.overlay, self.pidfile, self.inventory_path):
            if path.exists():
                path.unlink()
        self.port = None
        self.pid = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _close_control(self):
        if self.control_path.exists() and self.port is not None:
            subprocess.run(self.ssh_argv()[:-1] + ["-O", "exit", "root@127.0.0.1"],
                           capture_output=True, timeout=10, check=False)
        if self.control_path.exists():
            self.control_path.unlink()

    def __enter__(self):
        if self.pid is None:
            self.boot()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.5)
    return not _alive(pid)


def parse_topology(text):
    """``SxCxT[:NODES]`` (the CLI's --topology) as a CpuTopology."""
    shape, _colon, nodes = text.partition(":")
    try:
        sockets, cores, threads = (int(part) for part in shape.split("x"))
        return CpuTopology(sockets, cores, threads, int(nodes) if nodes else 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("topology %r: %s (expected e.g. 2x2x2:2)" % (text, exc)) from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build or reuse the image; print the cache dir")
    p_build.add_argument("--flavour", choices=sorted(FLAVOURS), default="base")
    p_boot = sub.add_parser("boot", help="boot a test host and wait for SSH")
    p_boot.add_argument("--kernel", choices=sorted(set().union(*FLAVOURS.values())), required=True)
    p_boot.add_argument("--flavour", choices=sorted(FLAVOURS), default="base",
                        help="prod: the production-shaped image (PREEMPT_RT kernel 6.1-rt, libvirt, machined)")
    p_boot.add_argument("--state-dir", required=True)
    p_boot.add_argument("--memory", type=int, default=2048, help="MiB")
    p_boot.add_argument("--smp", type=int, default=4)
    p_boot.add_argument("--topology", type=parse_topology, metavar="SxCxT[:NODES]",
                        help="sockets x cores x threads, and NUMA nodes (e.g. 2x2x2:2); replaces --smp")
    p_boot.add_argument("--append", default="", help="extra kernel command line")
    p_boot.add_argument("--qemu", choices=["host", "backports"], help="override which QEMU runs it")
    p_boot.add_argument("--timeout", type=int, default=600, help="seconds to wait for SSH")
    p_boot.add_argument("--init", choices=sorted(INITS), default="systemd",
                        help="systemd (cgroup v2) or v1 (no systemd, cgroup v1 per controller: the CI host's shape)")
    p_reboot = sub.add_parser("reboot", help="power a test host off and boot it again from the same disk")
    p_reboot.add_argument("--state-dir", required=True)
    p_cmd = sub.add_parser("cmdline", help="print the QEMU command line for a kernel")
    p_cmd.add_argument("--kernel", choices=sorted(KERNELS), required=True)
    p_cmd.add_argument("--state-dir", required=True)
    p_ssh = sub.add_parser("ssh", help="run a command in a booted test host")
    p_ssh.add_argument("--state-dir", required=True)
    p_ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    p_down = sub.add_parser("shutdown", help="power a test host off")
    p_down.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)

    if args.command == "build":
        print(ensure_built(flavour=args.flavour))
    elif args.command == "boot":
        host = V2Host(args.kernel, state_dir=args.state_dir, memory_mib=args.memory, smp=args.smp,
                      append=args.append, qemu=args.qemu, boot_timeout=args.timeout, init=args.init,
                      topology=args.topology, flavour=args.flavour)
        host.boot()
        print("v2host %s (%s) up in %.1f s: ssh port %d, QEMU pid %d, inventory %s"
              % (args.kernel, host.kernel_release, host.boot_seconds, host.port, host.pid,
                 host.inventory_path))
    elif args.command == "cmdline":
        host = V2Host(args.kernel, state_dir=args.state_dir, cache_dir=ensure_built())
        argv, env = host.qemu_command(port=2222)
        print(" ".join(["%s=%s" % kv for kv in env.items()] + [shlex.join(argv)]))
    elif args.command == "ssh":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        host = V2Host.attach(args.state_dir)
        proc = subprocess.run(host.ssh_argv() + ["--", shlex.join(cmd) if len(cmd) > 1 else " ".join(cmd)],
                              check=False)
        return proc.returncode
    elif args.command == "reboot":
        host = V2Host.attach(args.state_dir)
        host.reboot()
        print("v2host %s (%s) up again in %.1f s: ssh port %d, QEMU pid %d"
              % (host.kernel, host.kernel_release, host.boot_seconds, host.port, host.pid))
    elif args.command == "shutdown":
        host = V2Host.attach(args.state_dir)
        host.shutdown()
        print("v2host in %s is down" % args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
