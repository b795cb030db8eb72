"""Case 1: converge N cpuset cgroups with the engine, against the ways it is done today.

Sides (all on the same paths in the same throwaway subtree, alternating, several repetitions):

* ``floor``     the physical floor: a plain Python loop of mkdir + open().write() per knob;
* ``cgtools``   Debian's cgroup-tools as the seed did it: ``cgcreate`` then ``cgset`` per cgroup;
* ``engine``    the engine in-process: what ``cgroup_cpuset`` does after start-up (argument
                handling, plan, lock, execute, result), through the module's own ``run()``;
* ``module``    ``rtvirt.kvm.cgroup_cpuset`` through Ansible (one-task playbook, ``cgroups:`` from a
                vars file), with ``noop`` (the same playbook calling ``ansible.builtin.ping``) as its
                start-up floor;
* ``ansible_loop`` a playbook looping ``command: cgcreate`` (``creates:``) and ``command: cgset`` per
                item, the way such playbooks are written today (about 0.45 s per item here, so it runs
                at the sizes given by ``--loop-sizes`` only).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time

from . import common
from .common import CPUSET_ROOT, log

FIRST, RERUN = "first run", "re-run"


def tree(prefix, n, cpus_all, cpu_emulator, cpu_vcpu, mems, guests_per_partition=10):
    """N cgroups, parents first: machine/<partition>/<guest>/{emulator,vcpu0..3} below ``prefix``."""
    entries = [{"path": "%s/machine" % prefix, "cpus": cpus_all, "mems": mems}]
    partition = 0
    while len(entries) < n:
        part = "%s/machine/p%03d.partition" % (prefix, partition)
        entries.append({"path": part, "cpus": cpus_all, "mems": mems})
        for guest in range(guests_per_partition):
            base = "%s/qemu-%d-g%03d-%02d.libvirt-qemu" % (part, guest + 1, partition, guest)
            entries.append({"path": base, "cpus": cpus_all, "mems": mems})
            entries.append({"path": base + "/emulator", "cpus": cpu_emulator, "mems": mems})
            for vcpu in range(4):
                entries.append({"path": "%s/vcpu%d" % (base, vcpu), "cpus": cpu_vcpu, "mems": mems})
        partition += 1
    return entries[:n]


# ---- the sides ------------------------------------------------------------------------------

def side_floor(entries):
    """mkdir (if missing) and two plain writes per cgroup; returns the kernel writes made."""
    writes = 0
    for entry in entries:
        path = os.path.join(CPUSET_ROOT, entry["path"])
        try:
            os.mkdir(path)
            writes += 1
        except FileExistsError:
            pass
        with open(path + "/cpuset.cpus", "w") as handle:
            handle.write(entry["cpus"])
        with open(path + "/cpuset.mems", "w") as handle:
            handle.write(entry["mems"])
        writes += 2
    return writes


def cgtools_script(entries):
    """The seed's way: one cgcreate and one cgset process per cgroup, parents first."""
    lines = ["set -e"]
    for entry in entries:
        lines.append("cgcreate -g cpuset:%s" % entry["path"])
        lines.append("cgset -r cpuset.cpus=%s -r cpuset.mems=%s %s" % (entry["cpus"], entry["mems"], entry["path"]))
    return "\n".join(lines) + "\n"


class FakeModule:
    """Just enough of AnsibleModule for cgroup_cpuset.run(): params, check_mode, _diff."""

    def __init__(self, params):
        self.params = params
        self.check_mode = False
        self._diff = False


def engine_params(entries):
    from ansible_collections.rtvirt.kvm.plugins.modules import cgroup_cpuset
    defaults = {key: spec.get("default") for key, spec in cgroup_cpuset.CGROUP_OPTIONS.items()}
    cgroups = [dict(defaults, path=e["path"], cpus=e["cpus"], mems=e["mems"]) for e in entries]
    params = {key: spec.get("default") for key, spec in cgroup_cpuset.get_argument_spec().items()}
    params.update(cgroups=cgroups, path=None, mountpoint=CPUSET_ROOT, hierarchy_version=1)
    return params


def side_engine(entries):
    from ansible_collections.rtvirt.kvm.plugins.modules import cgroup_cpuset
    result = cgroup_cpuset.run(FakeModule(engine_params(entries)))
    return len(result["writes"])


MODULE_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars_files: [{vars_file}]
  tasks:
    - name: converge the tree in one call
      rtvirt.kvm.cgroup_cpuset:
        mountpoint: {root}
        cgroups: "{{{{ bench_cgroups }}}}"
      register: converge
    - ansible.builtin.debug:
        msg: "BENCH writes={{{{ converge.writes | length }}}} changed={{{{ converge.changed }}}}"
"""

NOOP_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: no-op module call
      ansible.builtin.ping:
      register: converge
    - ansible.builtin.debug:
        msg: "BENCH writes=0 changed={{ converge.changed }}"
"""

LOOP_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars_files: [{vars_file}]
  tasks:
    - name: create the cgroup
      ansible.builtin.command: cgcreate -g cpuset:{{{{ item.path }}}}
      args:
        creates: {root}/{{{{ item.path }}}}
      loop: "{{{{ bench_cgroups }}}}"
    - name: set cpus and mems
      ansible.builtin.command: cgset -r cpuset.cpus={{{{ item.cpus }}}} -r cpuset.mems={{{{ item.mems }}}} {{{{ item.path }}}}
      loop: "{{{{ bench_cgroups }}}}"
"""

_BENCH_LINE = re.compile(r"BENCH writes=(\d+) changed=(\w+)")


def ansible_playbook(playbook, timeout=3600):
    argv = [str(common.VENV / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % common.PYTHON, playbook]
    return common.run(argv, timeout=timeout, env=common.ansible_env())


def side_playbook(playbook):
    proc = ansible_playbook(playbook)
    match = _BENCH_LINE.search(proc.stdout)
    if not match:
        raise RuntimeError("no BENCH line in the playbook output:\n" + proc.stdout[-2000:])
    return int(match.group(1))


# ---- write counting with strace (untimed runs) ---------------------------------------------

_STRACE_LINE = re.compile(r'(?:write\((\d+)<([^>]*)>|mkdir(?:at)?\((?:[^,]*, )?"([^"]*)")')


def strace_count(argv, prefix):
    """Kernel writes (write(2) to cgroupfs files and mkdir) under ``prefix`` made by argv's process tree."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        common.run(["strace", "-f", "-qq", "-y", "-e", "trace=write,mkdir,mkdirat", "-e", "signal=none",
                    "-o", out.name] + argv, env=common.ansible_env())
        count = 0
        for line in out:
            match = _STRACE_LINE.search(line)
            if not match or "= -1" in line:
                continue
            target = match.group(2) or match.group(3) or ""
            if prefix in target:
                count += 1
        return count


def profiled(fn, *args):
    """cProfile one call: total time and the top functions by own time."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    fn(*args)
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    top = sorted(stats.items(), key=lambda item: -item[1][2])[:8]
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in top:
        where = "%s:%d %s" % (os.path.basename(filename), line, func) if line else func
        rows.append((where, calls, common.fmt_s(tottime), common.fmt_s(cumtime)))
    return {"total": total, "top": rows}


# ---- the case -------------------------------------------------------------------------------

def run(ctx):
    sizes = ctx.sizes
    reps = ctx.reps
    with open(CPUSET_ROOT + "/cpuset.cpus") as handle:
        cpus_all = handle.read().strip()
    with open(CPUSET_ROOT + "/cpuset.mems") as handle:
        mems = handle.read().strip()
    online = sorted(int(c) for c in range(os.cpu_count()))
    cpu_emulator, cpu_vcpu = str(online[0]), str(online[-1])
    sandbox = common.new_sandbox()
    top = os.path.join(CPUSET_ROOT, sandbox)
    workdir = tempfile.mkdtemp(prefix="rtvirt-bench-")
    section_profile = {}
    from ansible_collections.rtvirt.kvm.plugins.modules import cgroup_cpuset  # noqa: F401 (import outside timing)
    results = {}      # (side, n) -> {"first": [...], "rerun": [...], "writes_first", "writes_rerun", "reps"}
    notes = []
    try:
        noop_pb = os.path.join(workdir, "noop.yml")
        with open(noop_pb, "w") as handle:
            handle.write(NOOP_PLAYBOOK)
        for n in sizes:
            entries = tree(sandbox, n, cpus_all, cpu_emulator, cpu_vcpu, mems)
            assert len(entries) == n
            vars_file = os.path.join(workdir, "cgroups-%d.json" % n)
            with open(vars_file, "w") as handle:
                json.dump({"bench_cgroups": entries}, handle)
            module_pb = os.path.join(workdir, "module-%d.yml" % n)
            with open(module_pb, "w") as handle:
                handle.write(MODULE_PLAYBOOK.format(vars_file=vars_file, root=CPUSET_ROOT))
            loop_pb = os.path.join(workdir, "loop-%d.yml" % n)
            with open(loop_pb, "w") as handle:
                handle.write(LOOP_PLAYBOOK.format(vars_file=vars_file, root=CPUSET_ROOT))
            script = os.path.join(workdir, "cgtools-%d.sh" % n)
            with open(script, "w") as handle:
                handle.write(cgtools_script(entries))

            sides = {
                "floor": lambda: side_floor(entries),
                "cgtools": lambda: (common.run(["bash", script]), None)[1],
                "engine": lambda: side_engine(entries),
                "module": lambda: side_playbook(module_pb),
                "noop": lambda: side_playbook(noop_pb),
            }
            order = ["floor", "engine", "cgtools", "module", "noop"]
            for rep, side in common.alternate(order, reps):
                record = results.setdefault((side, n), {"first": [], "rerun": [], "reps": 0})
                common.remove_tree(top, keep_top=True)
                t1, w1 = common.timed(sides[side])
                t2, w2 = common.timed(sides[side])
                record["first"].append(t1)
                record["rerun"].append(t2)
                record["reps"] += 1
                if w1 is not None:
                    record["writes_first"], record["writes_rerun"] = w1, w2
                log("engine N=%d rep %d %-8s first %s, re-run %s, writes %s/%s" % (
                    n, rep + 1, side, common.fmt_s(t1), common.fmt_s(t2), w1, w2))
            # cgroup-tools writes, counted with strace on an untimed first run and re-run.
            common.remove_tree(top, keep_top=True)
            record = results[("cgtools", n)]
            record["writes_first"] = strace_count(["bash", script], sandbox)
            record["writes_rerun"] = strace_count(["bash", script], sandbox)
            log("engine N=%d cgtools writes (strace): %d/%d" % (n, record["writes_first"], record["writes_rerun"]))

            # The Ansible loop: too slow for repetitions at every size.
            if n in ctx.loop_sizes:
                record = results.setdefault(("ansible_loop", n), {"first": [], "rerun": [], "reps": 0})
                for _rep in range(ctx.loop_reps):
                    common.remove_tree(top, keep_top=True)
                    t1, dummy = common.timed(ansible_playbook, loop_pb)
                    t2, dummy = common.timed(ansible_playbook, loop_pb)
                    record["first"].append(t1)
                    record["rerun"].append(t2)
                    record["reps"] += 1
                    log("engine N=%d ansible_loop first %s, re-run %s" % (n, common.fmt_s(t1), common.fmt_s(t2)))
                # Every re-run item runs cgset once, which writes what it writes in (b).
                per_cgset = results[("cgtools", n)]["writes_rerun"] / n
                record["writes_first"] = results[("cgtools", n)]["writes_first"]
                record["writes_rerun"] = int(per_cgset * n)
                record["writes_derived"] = True
            if n == max(sizes):
                profile = {}
                common.remove_tree(top, keep_top=True)
                profile["first run"] = profiled(side_engine, entries)
                profile["re-run"] = profiled(side_engine, entries)
                section_profile.update(profile)
        common.remove_tree(top, keep_top=True)
    finally:
        common.remove_tree(top)
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    return {"results": results, "sizes": sizes, "reps": reps, "notes": notes, "profile": section_profile,
            "loop_sizes": ctx.loop_sizes, "loop_reps": ctx.loop_reps}
