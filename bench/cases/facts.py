"""Case 3: cpu_isolation_facts with 1,000 / 10,000 extra threads alive, against an operator's loop.

The benchmark spawns one helper process holding the threads (64 KiB stacks, each blocked on an
Event), and ends it by PID afterwards.  Sides, alternating:

* ``facts``     ``gather()`` in-process: the module's work after start-up (every /proc task, the
                real IRQ table, cgroups, libvirt's run dir);
* ``module``    ``ansible localhost -m rtvirt.kvm.cpu_isolation_facts`` (ad-hoc), with ``noop``
                (``-m ansible.builtin.ping``) as the Ansible start-up floor;
* ``operator``  the shell loop an operator writes: ``ps -eLo pid,tid,comm`` then ``taskset -pc`` per
                thread, then ``cat`` every ``/proc/irq/*/smp_affinity_list``.
"""
from __future__ import annotations

import os
import subprocess
import sys

from . import common
from .common import log

HOLDER = r"""
import sys, threading
threading.stack_size(64 * 1024)
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(int(sys.argv[1]))]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.read()          # until the benchmark closes our stdin
stop.set()
"""

OPERATOR = r"""
ps -eLo pid=,tid=,comm= | while read -r pid tid comm; do
  echo "$pid $tid $comm $(taskset -pc "$tid" 2>/dev/null | sed 's/.*: //')"
done > /dev/null
for f in /proc/irq/*/smp_affinity_list; do echo "$f $(cat "$f")"; done > /dev/null
"""


def spawn_threads(count):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError("the thread holder did not start %d threads" % count)
    return proc


def stop_threads(proc):
    try:
        proc.stdin.close()
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()            # by PID: the Popen object we started
        proc.wait()


def adhoc(module):
    argv = [str(common.VENV / "bin" / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % common.PYTHON, "-m", module]
    proc = common.run(argv, env=common.ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal"}))
    if "SUCCESS" not in proc.stdout:
        raise RuntimeError("ansible %s failed:\n%s" % (module, proc.stdout[-2000:]))
    return None


def side_facts():
    from ansible_collections.rtvirt.kvm.plugins.module_utils._isolation import gather
    facts = gather()
    return facts["threads_scanned"]


def task_count():
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                total += len(os.listdir("/proc/%s/task" % pid))
            except OSError:
                pass
    return total


def run(ctx):
    from ansible_collections.rtvirt.kvm.plugins.module_utils import _isolation  # noqa: F401 (import outside timing)
    irqs = sorted(name for name in os.listdir("/proc/irq") if name.isdigit())
    results = {}
    for count in ctx.thread_counts:
        holder = spawn_threads(count)
        try:
            alive = task_count()
            log("facts: %d threads spawned, %d tasks alive" % (count, alive))
            sides = {"facts": side_facts,
                     "module": lambda: adhoc("rtvirt.kvm.cpu_isolation_facts"),
                     "noop": lambda: adhoc("ansible.builtin.ping"),
                     "operator": lambda: (common.run(["bash", "-c", OPERATOR]), None)[1]}
            # The operator loop forks two processes per thread (over two minutes at 10,000 threads on
            # a busy 2-CPU machine): it runs in the first repetition(s) only.
            operator_reps = 1 if count >= 5000 else min(2, ctx.reps)
            order = ["facts", "operator", "module", "noop"]
            for rep, side in common.alternate(order, ctx.reps):
                if side == "operator" and rep >= operator_reps:
                    continue
                t, scanned = common.timed(sides[side])
                record = results.setdefault((side, count), {"times": [], "alive": alive})
                record["times"].append(t)
                if scanned is not None:
                    record["scanned"] = scanned
                log("facts %d threads rep %d %-8s %s" % (count, rep + 1, side, common.fmt_s(t)))
        finally:
            stop_threads(holder)
    return {"results": results, "thread_counts": ctx.thread_counts, "irqs": len(irqs)}
