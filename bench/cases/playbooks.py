"""Case 2: site.yml re-converge and remediate.yml (report mode) on localhost carrying 1, 8, 32 guests.

Guests are tiny diskless KVM guests from tests/support/libvirt_rig.py, each in its own libvirt
partition (``/machine/<name>``, created by the benchmark in every cgroup hierarchy and removed
afterwards).  The floor is an Ansible no-op playbook (``ansible.builtin.ping``) on the same inventory.
Each playbook is run once untimed to converge, then timed re-runs alternate with the floor; one more
untimed re-run under strace counts the kernel writes (write(2) to /sys or /proc, mkdir, rmdir).

The playbooks get ``-e ansible_python_interpreter=$RTVIRT_PYTHON_INTERPRETER``, ``-e @guests.json``
(``rtvirt_bench_guests``: name, partition, qemu pid) and whatever ``--site-args`` /
``--remediate-args`` add.  When playbooks/site.yml or playbooks/remediate.yml does not exist the case
records "not run" for it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import tempfile
import uuid

from . import common
from .common import REPO, log

SITE = REPO / "playbooks" / "site.yml"
REMEDIATE = REPO / "playbooks" / "remediate.yml"
INVENTORY = REPO / "inventories" / "localhost" / "hosts.yml"

NOOP = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: no-op
      ansible.builtin.ping:
"""

_RECAP = re.compile(r"^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def cgroup_mounts():
    mounts = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            fields = line.split()
            if fields[2] == "cgroup2" or (fields[2] == "cgroup" and "name=" not in fields[3]):
                mounts.append(fields[1])
    return mounts


class HostState:
    """What site.yml changes on this machine besides the benchmark's own guests: /machine's CPUs, the realtime
    partitions and the inventory's realtime guests. Recorded before the case; given back afterwards (only what
    the case created is removed)."""

    def __init__(self):
        self.machine_cpus = _read_cpus("machine")
        self.partitions = {name for name in os.listdir(common.CPUSET_ROOT) if name.endswith(".partition")}
        self.domains = set(_virsh("list", "--all", "--name").split())

    def restore(self):
        notes = []
        for name in sorted(set(_virsh("list", "--all", "--name").split()) - self.domains):
            if name.startswith("rtvb-"):
                continue    # the benchmark's own guests: its ExitStack stops them
            _virsh("destroy", name)
            _virsh("undefine", name)
            notes.append("undefined %s (site.yml's realtime_vm defined it)" % name)
        for entry in sorted(set(os.listdir(common.CPUSET_ROOT)) - self.partitions):
            if entry.endswith(".partition"):
                name = "/" + entry[:-len(".partition")]
                _module("rtvirt.kvm.libvirt_partition", {"name": name, "state": "absent"})
                notes.append("removed partition %s" % name)
        if self.machine_cpus and _read_cpus("machine") != self.machine_cpus:
            _module("rtvirt.kvm.libvirt_partition", {"name": "/machine", "cpus": self.machine_cpus})
            notes.append("gave /machine its CPUs %s back" % self.machine_cpus)
        return notes


def _read_cpus(cgroup):
    try:
        with open(os.path.join(common.CPUSET_ROOT, cgroup, "cpuset.cpus")) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _virsh(*args):
    proc = common.run(["virsh", "-c", "qemu:///system"] + list(args), check=False, timeout=300)
    return proc.stdout if proc.returncode == 0 else ""


def _module(name, args):
    common.run([str(common.VENV / "bin" / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                "-e", "ansible_python_interpreter=%s" % common.PYTHON, "-m", name, "-a", json.dumps(args)],
               env=common.ansible_env(), check=False, timeout=600)


class Partitions:
    """machine/<name>.partition in every cgroup hierarchy; removes only what it created."""

    def __init__(self):
        self.created = []

    def _mkdir(self, path, cpuset):
        if os.path.isdir(path):
            return
        os.mkdir(path)
        self.created.append(path)
        if cpuset:
            parent = os.path.dirname(path)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(parent, knob)) as src:
                    value = src.read().strip()
                with open(os.path.join(path, knob), "w") as dst:
                    dst.write(value)

    def add(self, name):
        for mount in cgroup_mounts():
            cpuset = os.path.exists(os.path.join(mount, "cpuset.mems")) and not os.path.exists(
                os.path.join(mount, "cgroup.controllers"))
            self._mkdir(os.path.join(mount, "machine"), cpuset)
            self._mkdir(os.path.join(mount, "machine", name + ".partition"), cpuset)

    def remove(self):
        left = []
        for path in reversed(self.created):
            try:
                os.rmdir(path)
            except OSError as exc:
                left.append("%s (%s)" % (path, exc.strerror))
        self.created = []
        return left


def recap(stdout):
    match = None
    for match in _RECAP.finditer(stdout):
        pass
    if not match:
        return None
    return {"ok": int(match.group(1)), "changed": int(match.group(2)), "failed": int(match.group(4))}


def playbook_argv(playbook, extra):
    argv = [str(common.VENV / "bin" / "ansible-playbook")]
    if INVENTORY.exists():
        argv += ["-i", str(INVENTORY)]
    else:
        argv += ["-i", "localhost,", "-c", "local"]
    return argv + ["-e", "ansible_python_interpreter=%s" % common.PYTHON] + extra + [str(playbook)]


def run_playbook(argv):
    proc = common.run(argv, env=common.ansible_env(), check=False, timeout=1800)
    counts = recap(proc.stdout)
    if proc.returncode != 0 or counts is None:
        lines = proc.stdout.splitlines()
        fatal = [i for i, line in enumerate(lines) if line.startswith(("fatal:", "failed:", "ERROR!"))
                 or "FAILED!" in line]
        where = ""
        if fatal:
            first = fatal[0]
            task = next((lines[i] for i in range(first, -1, -1) if lines[i].startswith("TASK [")), "")
            where = "%s %s" % (task.rstrip("* "), " ".join(l.strip() for l in lines[first:first + 6]))
        # The module's own message, not only the task header (the recap cuts it off otherwise).
        msgs = [line.strip() for line in lines if line.strip().startswith(("msg:", "\"msg\":"))]
        fd, log_path = tempfile.mkstemp(prefix="rtvirt-bench-failed-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write("$ %s\n%s\n--- stderr\n%s" % (" ".join(argv), proc.stdout, proc.stderr))
        text = "%s failed (rc=%d): %s %s %s (full output: %s)" % (
            os.path.basename(argv[-1]), proc.returncode, where[:600] or proc.stdout[-1200:], " ".join(msgs)[:900],
            proc.stderr[-300:], log_path)
        raise PlaybookFailed(" ".join(text.split()))  # one line: it lands in a Markdown table cell
    return counts


class PlaybookFailed(RuntimeError):
    pass


_WRITE = re.compile(r'(write\(\d+<(?P<file>[^>]*)>|(?:mkdir|rmdir|mkdirat|unlinkat)\((?:[^,]*, )?"(?P<dir>[^"]*)")')


def kernel_writes(argv):
    """Successful write(2)s to files under /sys or /proc and mkdir/rmdir under /sys/fs/cgroup."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        common.run(["strace", "-f", "-qq", "-y", "-e", "trace=write,mkdir,mkdirat,rmdir", "-e", "signal=none",
                    "-o", out.name] + argv, env=common.ansible_env(), timeout=1800)
        hits = []
        for line in out:
            match = _WRITE.search(line)
            if not match or "= -1" in line:
                continue
            target = match.group("file") or match.group("dir") or ""
            if target.startswith(("/sys/", "/proc/")) and not target.startswith("/proc/self/fd"):
                if "/proc/" in target and ("/fd/" in target or target.endswith(("/attr/current", "/comm"))):
                    continue
                hits.append(target)
        return hits


def run(ctx):
    section = {"sizes": ctx.guest_counts, "results": {}, "not_run": [], "notes": []}
    have = {"site": SITE.exists(), "remediate": REMEDIATE.exists()}
    for name, path in (("site", SITE), ("remediate", REMEDIATE)):
        if not have[name]:
            section["not_run"].append("%s: not run: playbooks/%s does not exist yet" % (name, path.name))
    sys.path.insert(0, str(REPO))
    from tests.support import libvirt_rig as rig_lib
    if not rig_lib.kvm_usable():
        section["notes"].append("guests run under TCG: /dev/kvm cannot be opened")
    workdir = tempfile.mkdtemp(prefix="rtvirt-bench-pb-")
    noop = os.path.join(workdir, "noop.yml")
    with open(noop, "w") as handle:
        handle.write(NOOP)
    guests_file = os.path.join(workdir, "guests.json")
    state_dir = os.path.join(workdir, "rig")
    partitions = Partitions()
    tag = uuid.uuid4().hex[:6]
    rig = None
    failed = {}
    host_state = None
    try:
        rig_lib.ensure_installed()
        rig = rig_lib.start(state_dir, holder_pid=os.getpid())
        host_state = HostState()
        with contextlib.ExitStack() as guests_stack:
            guests = []
            for size in ctx.guest_counts:
                while len(guests) < size:
                    index = len(guests)
                    name = "rtvb-%s-%02d" % (tag, index)
                    partitions.add(name)
                    guest = guests_stack.enter_context(rig.guest(name, vcpus=2, memory_mib=64,
                                                                 partition="/machine/%s" % name))
                    guests.append({"name": name, "partition": "/machine/%s" % name, "pid": guest.pid})
                log("playbooks: %d guests running" % len(guests))
                with open(guests_file, "w") as handle:
                    json.dump({"rtvirt_bench_guests": guests}, handle)
                extra = ["-e", "@" + guests_file]
                sides = {"noop": playbook_argv(noop, extra)}
                if have["site"]:
                    sides["site"] = playbook_argv(SITE, extra + shlex.split(ctx.site_args))
                if have["remediate"]:
                    sides["remediate"] = playbook_argv(REMEDIATE, extra + shlex.split(ctx.remediate_args))
                for side in list(sides):
                    if side in failed:
                        del sides[side]
                        continue
                    if side != "noop":
                        try:
                            counts = run_playbook(sides[side])         # converge (untimed)
                        except PlaybookFailed as exc:
                            failed[side] = "%d guest(s): %s" % (size, exc)
                            log("playbooks: %s" % exc)
                            del sides[side]
                            continue
                        section["results"].setdefault((side, size), {})["first_changed"] = counts["changed"]
                for rep, side in common.alternate(list(sides), ctx.reps):
                    if side in failed:
                        continue
                    try:
                        t, counts = common.timed(run_playbook, sides[side])
                    except PlaybookFailed as exc:
                        failed[side] = "%d guest(s), re-run: %s" % (size, exc)
                        continue
                    record = section["results"].setdefault((side, size), {})
                    record.setdefault("times", []).append(t)
                    record["changed"] = max(record.get("changed", 0), counts["changed"])
                    log("playbooks %d guests rep %d %-9s %s changed=%d"
                        % (size, rep + 1, side, common.fmt_s(t), counts["changed"]))
                for side, argv in sides.items():
                    if side in failed:
                        continue
                    hits = kernel_writes(argv)
                    record = section["results"][(side, size)]
                    record["writes"] = len(hits)
                    record["write_files"] = sorted(set(hits))[:10]
    except Exception as exc:  # noqa: BLE001 - recorded in RESULTS.md as the reason the case stopped
        section["error"] = "%s: %s" % (type(exc).__name__, str(exc)[:1500])
        log("playbooks case failed: %s" % section["error"])
    finally:
        for side, why in failed.items():
            section["not_run"].append("%s: FAILED, %s" % (side, why))
        if host_state is not None:
            section["notes"].extend(host_state.restore())
        left = partitions.remove()
        if left:
            section["notes"].append("could not remove: %s" % ", ".join(left))
        if rig is not None:
            rig_lib.stop(state_dir)
        for dirpath, dirs, files in os.walk(workdir, topdown=False):
            for name in files:
                os.unlink(os.path.join(dirpath, name))
            for name in dirs:
                os.rmdir(os.path.join(dirpath, name))
        os.rmdir(workdir)
    return section
