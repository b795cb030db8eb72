#!/usr/bin/env python
"""Run every benchmark case and write bench/RESULTS.md and bench/cost-vs-size.svg.

    source hack/env.sh && python bench/run.py            # the full run (about 12-15 minutes)
    python bench/run.py --quick                           # smoke run (a minute or two)
    python bench/run.py --cases engine,facts              # a subset

Needs root (it writes the real cpuset hierarchy, in throwaway rtvirt-bench-<uuid> cgroups) and
cgroup-tools, strace and libvirt (hack/bootstrap.sh installs them).  Timings live here, never in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cases import common  # noqa: E402
from bench.cases.common import fmt_s, log  # noqa: E402
from bench import report  # noqa: E402
from bench.cases import isolation  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repetitions (a smoke run)")
    parser.add_argument("--cases", default="engine,playbooks,facts")
    parser.add_argument("--sizes", help="cgroup counts for case 1 (default 100,500,1500)")
    parser.add_argument("--reps", type=int, help="repetitions per side (default 3; quick 2)")
    parser.add_argument("--loop-sizes", help="sizes at which the Ansible command-loop side runs (default 100)")
    parser.add_argument("--loop-reps", type=int, default=1)
    parser.add_argument("--threads", help="thread counts for case 3 (default 1000,10000)")
    parser.add_argument("--guests", help="guest counts for case 2 (default 1,8,32)")
    parser.add_argument("--site-args", default="", help="extra ansible-playbook arguments for site.yml")
    parser.add_argument("--remediate-args", default="",
                        help="extra ansible-playbook arguments for remediate.yml (report mode is its default)")
    parser.add_argument("--isolation-duration", type=int, default=20, help="oslat seconds per side in case 4")
    parser.add_argument("--isolation-reps", type=int, default=2, help="repetitions per side in case 4")
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--plot", default=os.path.join(HERE, "cost-vs-size.svg"))
    args = parser.parse_args(argv)

    def ints(text, default):
        return [int(x) for x in text.split(",") if x] if text is not None else default

    q = args.quick
    args.sizes = ints(args.sizes, [100, 500] if q else [100, 500, 1500])
    args.reps = args.reps or (2 if q else 3)
    args.loop_sizes = ints(args.loop_sizes, [] if q else [100])
    args.thread_counts = ints(args.threads, [1000] if q else [1000, 10000])
    args.guest_counts = ints(args.guests, [1] if q else [1, 8, 32])
    args.cases = [c for c in args.cases.split(",") if c]
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: it writes the real cpuset hierarchy and starts libvirtd")
    began = time.monotonic()
    machine = common.machine_info()
    log("machine: %s" % machine)
    sections = {}
    for case in args.cases:
        module = __import__("bench.cases.%s" % case, fromlist=["run"])
        log("case %s ..." % case)
        start = time.monotonic()
        try:
            sections[case] = module.run(args)
        except Exception as exc:  # noqa: BLE001 - a case that cannot run is reported, not hidden
            log("case %s could not run: %s" % (case, exc))
            sections[case] = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:1500])}
        sections[case]["elapsed"] = time.monotonic() - start
    elapsed = time.monotonic() - began
    if "isolation" in sections:
        with open(os.path.join(HERE, report.ISOLATION_PLOT), "w") as handle:
            handle.write(isolation.svg(sections["isolation"]))
        # The raw figures, so that the section can be drawn again without another run.
        with open(os.path.join(HERE, "isolation.json"), "w") as handle:
            json.dump(sections["isolation"], handle, indent=1, sort_keys=True)
    if args.cases == ["isolation"] and os.path.exists(args.output):
        # Case 4 alone (it changes the host's tuning, so it is run on its own): only its section is replaced.
        with open(args.output) as handle:
            text = report.splice_isolation(handle.read(), sections["isolation"])
        with open(args.output, "w") as handle:
            handle.write(text)
        log("wrote case 4 into %s in %s" % (args.output, fmt_s(elapsed)))
        return
    text = report.markdown(args, machine, sections, elapsed, os.path.basename(args.plot))
    with open(args.output, "w") as handle:
        handle.write(text)
    if "engine" in sections and "results" in sections["engine"]:
        with open(args.plot, "w") as handle:
            handle.write(report.svg(sections))
    log("wrote %s and %s in %s" % (args.output, args.plot, fmt_s(elapsed)))
    print(text)


if __name__ == "__main__":
    main()
