"""Case 4: how quiet the realtime CPU is under a fixed housekeeping load, untuned, TuneD, host_prep, both.

Needs root, rt-tests (oslat), stress-ng and tuned (bench/apt-packages.txt; missing ones are installed with
apt-get). It takes the host lock the real-system tests take (/run/lock/rtvirt-kvm-tests.lock) for the whole
run, snapshots and parks what the main job owns with tests/support/host_guard.py, and puts it back at the end,
with every sysctl and sysfs knob TuneD's profile chain writes and every task's CPU affinity.

Sides, alternating (the order rotates every repetition); each starts from ``untuned``:

* ``untuned``  kernel defaults: every IRQ and the default IRQ affinity on every CPU,
               kernel.sched_rt_runtime_us=950000, the unbound workqueues on every CPU;
* ``tuned``    TuneD's realtime-virtual-host profile, run without its daemon's D-Bus (no systemd here):
               ``tuned --no-dbus --no-socket --profile realtime-virtual-host`` in the foreground until its log says
               the static tuning is applied; SIGTERM afterwards, which rolls the profile back;
* ``site``     site.yml's host_prep role (the inventory's demo guest is left out: its FIFO vCPU would own the
               measured CPU);
* ``both``     host_prep, then TuneD.

In each side: stress-ng pinned to housekeeping CPU 0 (``--timer 1 --timer-freq 10000 --hdd 1 --sock 1``: timers,
disk I/O in /var/tmp, TCP on loopback), then oslat on the realtime CPU for ``--isolation-duration`` seconds (its
main thread on CPU 0), and around oslat: /proc/interrupts (the realtime CPU's column, per row), and every task's
/proc/PID/task/TID/schedstat (runs on a CPU) and last CPU, for the foreign tasks that ran on the realtime CPU.
"""
from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import common
from .common import log

sys.path.insert(0, str(common.REPO))
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist  # noqa: E402
from ansible_collections.rtvirt.kvm.plugins.module_utils._latency import parse_oslat_json, percentile  # noqa: E402
from tests.support import host_guard  # noqa: E402

SIDES = ["untuned", "tuned", "site", "both"]
LOCK = "/run/lock/rtvirt-kvm-tests.lock"
PACKAGES = common.REPO / "bench" / "apt-packages.txt"
TUNED_PROFILE = "realtime-virtual-host"
TIMER_ROWS = ("LOC", "RES", "CAL", "TLB")
# What TuneD's realtime-virtual-host chain (realtime, network-latency, latency-performance) writes, and files
# it leaves: snapshotted before, compared and written back after every TuneD side and at the end.
KNOBS = ["/proc/sys/kernel/hung_task_timeout_secs", "/proc/sys/kernel/nmi_watchdog",
         "/proc/sys/kernel/sched_rt_runtime_us", "/proc/sys/vm/stat_interval", "/proc/sys/kernel/timer_migration",
         "/proc/sys/net/core/busy_read", "/proc/sys/net/core/busy_poll", "/proc/sys/net/ipv4/tcp_fastopen",
         "/proc/sys/kernel/numa_balancing", "/proc/sys/vm/dirty_ratio", "/proc/sys/vm/dirty_background_ratio",
         "/proc/sys/vm/swappiness", "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/ksm/run",
         "/sys/bus/workqueue/devices/writeback/cpumask", "/sys/devices/virtual/workqueue/cpumask"]
TUNED_FILES = ["/etc/tuned/active_profile", "/etc/tuned/profile_mode", "/etc/tuned/post_loaded_profile",
               "/etc/tuned/bootcmdline", "/etc/modprobe.d/kvm.rt.tuned.conf"]
HOST_PREP_PLAY = [{"name": "host_prep of site.yml, without the demo guest", "hosts": "localhost",
                   "gather_facts": False, "roles": [{"role": "rtvirt.kvm.host_prep"}]}]


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write(path, text):
    try:
        with open(path, "w") as handle:
            handle.write(text)
        return True
    except OSError:
        return False


def _online():
    return sorted(parse_cpulist(_read("/sys/devices/system/cpu/online").strip()))


def _mask(cpus):
    return "%x" % sum(1 << c for c in cpus)


# ----------------------------------------------------------------------------------------------------------
# Host state: snapshot, untuned, restore.

def _knob_snapshot():
    knobs = {p: _read(p) for p in KNOBS + sorted(glob.glob("/sys/devices/virtual/workqueue/*/cpumask"))}
    files = {p: _read(p) for p in TUNED_FILES}
    affinity = {}
    for task in glob.glob("/proc/[0-9]*/task/[0-9]*"):
        try:
            affinity[int(task.rsplit("/", 1)[1])] = sorted(os.sched_getaffinity(int(task.rsplit("/", 1)[1])))
        except OSError:
            pass
    return dict(knobs=knobs, files=files, affinity=affinity)


def _knob_restore(snap, housekeeping):
    """Write back what differs; returns what was put back (TuneD's rollback should leave nothing to do).
    Only tasks now confined to the housekeeping CPU get their affinity back (TuneD's scheduler plugin moves
    them there); any other change is someone else's."""
    fixed = []
    for path, value in snap["knobs"].items():
        now = _read(path)
        if value is None or now is None or now.strip() == value.strip():
            continue
        # THP reads "always [madvise] never": the bracketed word is the setting.
        text = value.split("[", 1)[1].split("]", 1)[0] if "[" in value else value.strip()
        if _write(path, text):
            fixed.append(path)
    for path, value in snap["files"].items():
        now = _read(path)
        if now == value:
            continue
        if value is None:
            os.unlink(path)
        else:
            _write(path, value)
        fixed.append(path)
    moved = 0
    for tid, cpus in snap["affinity"].items():
        try:
            now = sorted(os.sched_getaffinity(tid))
            if now != cpus and now == [housekeeping]:
                os.sched_setaffinity(tid, cpus)
                moved += 1
        except OSError:
            pass  # gone, or a per-CPU kernel thread
    if moved:
        fixed.append("the CPU affinity of %d task(s)" % moved)
    return fixed


def _untuned(online):
    every = format_cpulist(online)
    for irq in glob.glob("/proc/irq/[0-9]*/smp_affinity_list"):
        _write(irq, every)  # managed and per-CPU IRQs refuse: the kernel keeps them where it wants
    _write("/proc/irq/default_smp_affinity", _mask(online))
    _write("/proc/sys/kernel/sched_rt_runtime_us", "950000")
    _write("/sys/devices/virtual/workqueue/cpumask", _mask(online))


def _ensure_packages():
    wanted = [line.strip() for line in PACKAGES.read_text().splitlines() if line.strip() and not line.startswith("#")]
    missing = [p for p in wanted if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, check=False,
                                                   text=True).stdout != "install ok installed"]
    if missing:
        log("installing %s" % " ".join(missing))
        common.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


# ----------------------------------------------------------------------------------------------------------
# TuneD without its daemon's D-Bus.

class Tuned:
    def __init__(self, workdir):
        self.log = os.path.join(workdir, "tuned.log")
        self.proc = None

    def start(self, timeout=180):
        # tuned-main.conf's daemon = 1 is what applies the profile and keeps it (the one-shot mode would not
        # roll it back); --no-dbus/--no-socket: no bus and no control socket here.
        if os.path.exists(self.log):
            os.unlink(self.log)
        self.proc = subprocess.Popen(["tuned", "--no-dbus", "--no-socket", "--profile", TUNED_PROFILE,
                                      "--log", self.log, "--pid", self.log + ".pid"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _read(self.log) or ""
            if "static tuning from profile '%s' applied" % TUNED_PROFILE in text:
                return [line.split(" ", 4)[-1] for line in text.splitlines() if " ERROR " in line]
            if self.proc.poll() is not None:
                raise RuntimeError("tuned exited with %s:\n%s" % (self.proc.returncode, text[-3000:]))
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("tuned did not apply %s in %d s:\n%s" % (TUNED_PROFILE, timeout, (_read(self.log) or "")[-3000:]))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ----------------------------------------------------------------------------------------------------------
# One measurement.

def _interrupts(cpu):
    lines = _read("/proc/interrupts").splitlines()
    header = lines[0].split()
    column = header.index("CPU%d" % cpu)
    rows = {}
    for line in lines[1:]:
        parts = line.split()
        if not parts or not parts[0].endswith(":"):
            continue
        name = parts[0][:-1]
        counts = parts[1:1 + len(header)]
        if len(counts) <= column or not counts[column].isdigit():
            continue
        what = " ".join(parts[1 + len(header):])
        rows[name] = (int(counts[column]), what)
    return rows


def _tasks():
    """{tid: (comm, runs, last cpu, pid)} of every task."""
    result = {}
    for task in glob.glob("/proc/[0-9]*/task/[0-9]*"):
        stat, sched = _read(task + "/stat"), _read(task + "/schedstat")
        if not stat or not sched:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        result[int(task.rsplit("/", 1)[1])] = (comm, int(sched.split()[2]), int(fields[36]), int(task.split("/")[2]))
    return result


def measure(cpu, housekeeping, duration, workdir):
    load_dir = tempfile.mkdtemp(prefix="rtvirt-bench-load-", dir="/var/tmp")
    load = subprocess.Popen(["stress-ng", "--taskset", str(housekeeping), "--timer", "1", "--timer-freq", "10000",
                             "--hdd", "1", "--hdd-bytes", "32M", "--sock", "1", "--timeout", "%ds" % (duration + 30),
                             "--temp-path", load_dir, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        time.sleep(3)
        json_path = os.path.join(workdir, "oslat.json")
        before_irq, before_tasks = _interrupts(cpu), _tasks()
        oslat = subprocess.Popen(["oslat", "--cpu-list", str(cpu), "--cpu-main-thread", str(housekeeping),
                                  "--duration", str(duration), "--bucket-size", "1024", "--quiet",
                                  "--json=%s" % json_path],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        started = time.monotonic()
        _out, err = oslat.communicate(timeout=duration + 120)
        elapsed = time.monotonic() - started
        after_irq, after_tasks = _interrupts(cpu), _tasks()
        if oslat.returncode != 0:
            raise RuntimeError("oslat failed (%d): %s" % (oslat.returncode, err[-800:]))
    finally:
        load.send_signal(signal.SIGTERM)
        try:
            load.wait(timeout=60)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
        shutil.rmtree(load_dir, ignore_errors=True)
    figure = [f for f in parse_oslat_json(_read(json_path)) if f["cpu"] == cpu][0]
    irqs = {}
    for name, (count, what) in after_irq.items():
        delta = count - before_irq.get(name, (0, ""))[0]
        if delta:
            irqs[name] = dict(per_s=delta / elapsed, what=what, device=name.isdigit())
    foreign = {}
    for tid, (comm, runs, last, pid) in after_tasks.items():
        if pid == oslat.pid or last != cpu:
            continue
        delta = runs - before_tasks.get(tid, (comm, 0, last, pid))[1]
        if delta > 0:
            foreign[comm] = foreign.get(comm, 0) + delta
    return dict(
        max_us=figure["max_us"], p99_99_us=percentile(figure["histogram"], figure["max_us"], 99.99),
        p99_9_us=percentile(figure["histogram"], figure["max_us"], 99.9), seconds=elapsed,
        device_per_s=sum(v["per_s"] for v in irqs.values() if v["device"]),
        irqs=irqs, foreign_runs=sum(foreign.values()), foreign_tasks=foreign)


# ----------------------------------------------------------------------------------------------------------

def _host_prep(env):
    with tempfile.TemporaryDirectory(prefix="rtvirt-bench-") as tmp:
        play = os.path.join(tmp, "host_prep.yml")
        with open(play, "w") as handle:
            json.dump(HOST_PREP_PLAY, handle)
        common.run([str(common.VENV / "bin" / "ansible-playbook"), "-i", str(common.REPO / "inventories" / "localhost"),
                    play], env=env, timeout=900)


def run(args):
    if os.geteuid() != 0:
        raise RuntimeError("the isolation case needs root")
    _ensure_packages()
    online = _online()
    housekeeping, cpu = online[0], online[-1]
    duration, reps = args.isolation_duration, args.isolation_reps
    os.sched_setaffinity(0, {housekeeping})  # the benchmark's own work stays off the measured CPU
    log("isolation: waiting for the host lock %s" % LOCK)
    lock = open(LOCK, "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    workdir = tempfile.mkdtemp(prefix="rtvirt-bench-isolation-")
    env = common.ansible_env()
    tuned = Tuned(workdir)
    results = {side: [] for side in SIDES}
    notes = []
    guard = host_guard.save(os.getpid())
    notes += ["host guard: %s" % line for line in guard]
    snap = _knob_snapshot()
    try:
        for rep, side in common.alternate(SIDES, reps):
            log("isolation rep %d: %s" % (rep + 1, side))
            _untuned(online)
            tuned_errors = []
            if side in ("site", "both"):
                _host_prep(env)
            if side in ("tuned", "both"):
                tuned_errors = tuned.start()
            try:
                result = measure(cpu, housekeeping, duration, workdir)
            finally:
                tuned.stop()
                if side in ("tuned", "both"):
                    left = _knob_restore(snap, housekeeping)
                    if left:
                        notes.append("rep %d %s: TuneD's rollback left %s; written back" % (rep + 1, side, ", ".join(left)))
            result["tuned_errors"] = tuned_errors
            results[side].append(result)
            log("  max %s us, p99.99 %s us, LOC %.0f/s, device %.1f/s, foreign runs %d" % (
                result["max_us"], result["p99_99_us"], result["irqs"].get("LOC", {}).get("per_s", 0),
                result["device_per_s"], result["foreign_runs"]))
    finally:
        tuned.stop()
        left = _knob_restore(snap, housekeeping)
        if left:
            notes.append("end: written back %s" % ", ".join(left))
        notes += ["host guard: %s" % line for line in host_guard.restore()]
        shutil.rmtree(workdir, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    return dict(results=results, cpu=cpu, housekeeping=housekeeping, duration=duration, reps=reps, notes=notes,
                cmdline=_read("/proc/cmdline").strip(), kernel=os.uname().release,
                realtime=(_read("/sys/kernel/realtime") or "0").strip() == "1")


# ----------------------------------------------------------------------------------------------------------
# Report.

def _med(values):
    return common.median(list(values))


def _row_rate(runs, name):
    return _med(r["irqs"].get(name, {}).get("per_s", 0.0) for r in runs)


def _fmt(value, digits=0):
    return "-" if value is None else ("%.*f" % (digits, value))


def markdown(section, plot_name):
    if "results" not in section:
        return ["Not run: %s" % section.get("error", "not selected")]
    res, cpu = section["results"], section["cpu"]
    out = ["Realtime CPU %d, housekeeping CPU %d (stress-ng there: timers at 10 kHz, disk I/O, TCP on loopback), "
           "oslat %d s per side, %d repetitions, alternating; medians of the repetitions. Kernel %s%s; command line "
           "without isolcpus/nohz_full (`%s`). **This machine is itself a VM with 2 vCPUs**: its host preempts "
           "both CPUs, so oslat's maxima are the hypervisor's as much as this kernel's; the counts are this kernel's."
           % (cpu, section["housekeeping"], section["duration"], section["reps"], section["kernel"],
              " (PREEMPT_RT)" if section["realtime"] else "", section["cmdline"][:120]), "",
           "| side | oslat max (us) | p99.9 (us) | p99.99 (us) | LOC/s | RES/s | CAL/s | TLB/s | device IRQs/s | "
           "foreign task runs | foreign tasks (runs, all repetitions) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for side in SIDES:
        runs = res.get(side) or []
        if not runs:
            continue
        names = {}
        for r in runs:
            for comm, n in r["foreign_tasks"].items():
                names[comm] = names.get(comm, 0) + n
        top = ", ".join("%s %d" % (c, n) for c, n in sorted(names.items(), key=lambda kv: -kv[1])[:5])
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            side, _fmt(_med(r["max_us"] for r in runs)), _fmt(_med(r["p99_9_us"] for r in runs)),
            _fmt(_med(r["p99_99_us"] for r in runs)),
            *[_fmt(_row_rate(runs, n), 1) for n in TIMER_ROWS], _fmt(_med(r["device_per_s"] for r in runs), 1),
            _fmt(_med(r["foreign_runs"] for r in runs)), top or "none"))
    out += ["", "Per repetition (oslat max us / device IRQs per s / foreign task runs):", ""]
    for side in SIDES:
        reps = ["%s / %.1f / %d" % (r["max_us"], r["device_per_s"], r["foreign_runs"]) for r in res.get(side) or []]
        out.append("- %s: %s" % (side, "; ".join(reps)))
    devices = {}
    for side in SIDES:
        for r in res.get(side) or []:
            for name, v in r["irqs"].items():
                if v["device"]:
                    devices.setdefault(name, v["what"])
    if devices:
        out += ["", "Device IRQs on CPU %d (per second, medians):" % cpu, "",
                "| IRQ | what | %s |" % " | ".join(SIDES), "|---|---|%s" % ("---:|" * len(SIDES))]
        for name in sorted(devices, key=int):
            rates = [_fmt(_row_rate(res.get(s) or [], name), 1) for s in SIDES]
            out.append("| %s | %s | %s |" % (name, devices[name], " | ".join(rates)))
    errors = sorted({e for side in SIDES for r in res.get(side) or [] for e in r.get("tuned_errors", [])})
    if errors:
        out += ["", "TuneD's errors while applying the profile here (no systemd, no boot loader it knows):", ""]
        out += ["- `%s`" % e[:200] for e in errors]
    out += ["", "Plot: [%s](%s)." % (plot_name, plot_name)]
    out += ["", "Notes of the run:", ""] + ["- %s" % n for n in section.get("notes") or ["none"]]
    return out


def svg(section):
    """Grouped bars: interrupts per second on the realtime CPU by source, per side (log scale), oslat max under."""
    res = section.get("results") or {}
    sources = list(TIMER_ROWS) + ["device"]
    colours = {"LOC": "#4477aa", "RES": "#66ccee", "CAL": "#228833", "TLB": "#ccbb44", "device": "#ee6677"}
    width, height, left, top, bottom = 760, 360, 60, 40, 60
    plot_h = height - top - bottom
    group_w = (width - left - 20) / len(SIDES)
    bar_w = group_w / (len(sources) + 1)
    values = {s: {src: (_med(r["device_per_s"] for r in res.get(s) or []) if src == "device"
                        else _row_rate(res.get(s) or [], src)) for src in sources} for s in SIDES}
    peak = max([v or 0 for d in values.values() for v in d.values()] + [10])
    top_decade = 10 ** math.ceil(math.log10(peak))

    def y(v):
        v = max(v or 0, 0.1)
        return top + plot_h * (1 - (math.log10(v) + 1) / (math.log10(top_decade) + 1))
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">'
             % (width, height),
             '<text x="%d" y="18" font-size="13">Interrupts per second on realtime CPU %s by source (log scale); '
             'oslat max under each side</text>' % (left, section.get("cpu", "?"))]
    decade = 0.1
    while decade <= top_decade:
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">'
                     '%g</text>' % (left, width - 20, y(decade), y(decade), left - 4, y(decade) + 4, decade))
        decade *= 10
    for i, side in enumerate(SIDES):
        x0 = left + i * group_w + bar_w / 2
        for j, src in enumerate(sources):
            v = values[side][src] or 0
            yy = y(v)
            parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.1f/s</title>'
                         '</rect>' % (x0 + j * bar_w, yy, bar_w * 0.9, top + plot_h - yy, colours[src], side, src, v))
        mx = _med(r["max_us"] for r in res.get(side) or [])
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
            x0 + len(sources) * bar_w / 2, top + plot_h + 16, side))
        parts.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">max %s us</text>' % (
            x0 + len(sources) * bar_w / 2, top + plot_h + 30, _fmt(mx)))
    for j, src in enumerate(sources):
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>' % (
            left + j * 90, height - 14, colours[src], left + j * 90 + 14, height - 5, src))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
