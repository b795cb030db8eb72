"""Shared helpers: timing, alternation, medians, throwaway cgroups, subprocess environment."""
from __future__ import annotations

import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
PYTHON = str(VENV / "bin" / "python")
if str(VENV) not in sys.path:
    sys.path.insert(0, str(VENV))     # ansible_collections.rtvirt.kvm -> this checkout

CPUSET_ROOT = "/sys/fs/cgroup/cpuset"


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def ansible_env(extra=None):
    env = dict(os.environ)
    env["PATH"] = str(VENV / "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(VENV))
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    env.setdefault("RTVIRT_PYTHON_INTERPRETER", PYTHON)
    env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_DEPRECATION_WARNINGS": "0",
                "ANSIBLE_RETRY_FILES_ENABLED": "0", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra or {})
    return env


def run(argv, timeout=3600, env=None, check=True, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, check=False, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d)\n--- stdout\n%s\n--- stderr\n%s" % (
            " ".join(map(str, argv))[:300], proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    return proc


def timed(fn, *args, **kw):
    start = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - start, value


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def alternate(sides, reps):
    """Yield (rep, side) with the side order rotated every repetition, so no side always goes first."""
    for rep in range(reps):
        shift = rep % len(sides)
        for side in sides[shift:] + sides[:shift]:
            yield rep, side


def fmt_s(value):
    if value is None:
        return "n/a"
    if value < 0.01:
        return "%.2f ms" % (value * 1000)
    if value < 1:
        return "%.0f ms" % (value * 1000)
    return "%.2f s" % value


def fmt_ratio(value):
    return "n/a" if value is None else "%.2f×" % value


def machine_info():
    def read(path):
        try:
            return pathlib.Path(path).read_text().strip()
        except OSError:
            return "?"
    model = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mounts = read("/proc/self/mounts").splitlines()
    v1 = sorted({l.split()[1].rsplit("/", 1)[-1] for l in mounts if l.split()[2] == "cgroup"})
    v2 = [l.split()[1] for l in mounts if l.split()[2] == "cgroup2"]
    if v1 and v2:
        mode = "hybrid (v1: %s; v2 at %s)" % (", ".join(v1), ", ".join(v2))
    elif v1:
        mode = "legacy v1 (%s)" % ", ".join(v1)
    else:
        mode = "unified v2"
    ansible_version = "?"
    try:
        ansible_version = run([str(VENV / "bin" / "ansible"), "--version"], env=ansible_env()).stdout.splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        pass
    os_name = "?"
    for line in read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpus": "%d online (%s), model %s" % (os.cpu_count(), read("/sys/devices/system/cpu/online"), model),
        "memory": "%d MiB" % (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20),
        "kernel": "%s %s" % (platform.release(), read("/proc/sys/kernel/version")),
        "os": os_name,
        "cgroup mode": mode,
        "cpuset hierarchy": "%s (cgroup v1)" % CPUSET_ROOT if os.path.isdir(CPUSET_ROOT + "/tasks") or
                            os.path.exists(CPUSET_ROOT + "/tasks") else "?",
        "python": sys.version.split()[0],
        "ansible": ansible_version,
        "init": read("/proc/1/comm"),
    }


# ---- throwaway cgroups ---------------------------------------------------------------------

def new_sandbox():
    """A unique top-level cpuset cgroup rtvirt-bench-<uuid> with all CPUs and memory nodes."""
    name = "rtvirt-bench-" + uuid.uuid4().hex[:12]
    path = os.path.join(CPUSET_ROOT, name)
    os.mkdir(path)
    for knob in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(CPUSET_ROOT, knob)) as src:
            value = src.read().strip()
        with open(os.path.join(path, knob), "w") as dst:
            dst.write(value)
    return name


def remove_tree(top, keep_top=False):
    """rmdir a cgroup subtree deepest first (the benchmark puts no tasks in it)."""
    if not os.path.isdir(top):
        return
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        if keep_top and dirpath == top:
            continue
        os.rmdir(dirpath)
