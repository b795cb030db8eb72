"""Run in the production-shaped test host (``python3 - NAME...`` over SSH): what the kernel says about each guest.

Prints one JSON object: for every guest named on the command line its QEMU pid, and each thread's name, cgroup
(from /proc/PID/task/TID/cgroup), affinity (Cpus_allowed_list) and scheduling policy (field 41 of stat); the
partition state and CPUs of rt.slice and machine.slice. Read by tests/v2host/prod_host_e2e.py, which pipes this
file to the guest's python3: one SSH round trip for everything (each costs seconds under TCG).
"""
import json
import os
import sys

CG = "/sys/fs/cgroup"
POLICIES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}


def read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as exc:
        return "<%s>" % exc.strerror


def thread(pid, tid):
    base = "/proc/%d/task/%s" % (pid, tid)
    stat = read(base + "/stat")
    fields = stat.rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in read(base + "/status").splitlines() if ":" in line)
    cgroup = [line.split("::", 1)[1] for line in read(base + "/cgroup").splitlines() if line.startswith("0::")]
    return {"tid": int(tid), "comm": read(base + "/comm"), "cgroup": cgroup[0] if cgroup else None,
            "affinity": status.get("Cpus_allowed_list", "").strip(),
            # stat fields after the comm: state is field 3, so field N is fields[N - 3].
            "policy": POLICIES.get(int(fields[41 - 3]), fields[41 - 3]), "priority": int(fields[40 - 3])}


def guest(name):
    pid = int(read("/run/libvirt/qemu/%s.pid" % name))
    return {"pid": pid, "threads": [thread(pid, tid) for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int)]}


def main(names):
    out = {"guests": {name: guest(name) for name in names}}
    for slice_ in ("rt.slice", "machine.slice"):
        out[slice_] = {knob: read("%s/%s/cpuset.%s" % (CG, slice_, knob))
                       for knob in ("cpus", "cpus.effective", "cpus.partition", "mems.effective")}
    out["realtime"] = read("/sys/kernel/realtime")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
