"""RESULTS.md and the SVG plot from the cases' results (no third-party dependencies)."""
from __future__ import annotations

import math
import time

from bench.cases.common import fmt_ratio, fmt_s, median

ISOLATION_PLOT = "isolation.svg"
ISOLATION_BEGIN = "<!-- case 4: isolation (bench/cases/isolation.py) -->"
ISOLATION_END = "<!-- end of case 4 -->"

ENGINE_SIDES = [
    ("floor", "(a) floor: plain loop of mkdir + open().write()"),
    ("engine", "**engine in-process** (cgroup_cpuset run(): plan + execute)"),
    ("cgtools", "(b) seed tooling: cgcreate + cgset, one process each per cgroup"),
    ("ansible_loop", "(c) Ansible playbook looping command: cgcreate / cgset per item"),
    ("module", "rtvirt.kvm.cgroup_cpuset through Ansible (one task, vars file)"),
    ("noop", "Ansible start-up floor: the same playbook calling ansible.builtin.ping"),
]
COLORS = {"floor": "#444444", "engine": "#d62728", "cgtools": "#1f77b4", "ansible_loop": "#9467bd",
          "module": "#ff7f0e", "noop": "#7f7f7f", "facts": "#2ca02c", "operator": "#8c564b"}
SHORT = {"floor": "(a) plain-write floor", "engine": "engine (in-process)", "cgtools": "(b) cgcreate+cgset",
         "ansible_loop": "(c) Ansible command loop", "module": "module via Ansible",
         "noop": "Ansible no-op (start-up floor)", "facts": "facts gather() in-process",
         "operator": "operator ps/taskset loop"}


def _loop_note(eng):
    """Where the Ansible command loop (c) ran, what one loop item cost, and why the other sizes were not run."""
    res = eng["results"]
    ran = [n for n in eng["sizes"] if ("ansible_loop", n) in res]
    skipped = [n for n in eng["sizes"] if n not in ran]
    per_item = [median(res[("ansible_loop", n)]["first"]) / (2.0 * n) for n in ran
                if median(res[("ansible_loop", n)]["first"])]
    cost = max(per_item) if per_item else 0.45
    text = ("the Ansible loop (c) ran %d time(s) at N = %s; it costs about %.2f s per loop item here (2 items per "
            "cgroup, first run; measured)" % (eng["loop_reps"], ", ".join(map(str, ran)) or "none", cost))
    if skipped:
        text += (", so one first run plus re-run would take about %s at N = %s: **not run at %s** (not in "
                 "--loop-sizes this run)" % (
                     ", ".join("%d minutes" % round(4 * n * cost / 60.0) for n in skipped),
                     ", ".join(map(str, skipped)), ", ".join(map(str, skipped))))
    return text + "; its re-run writes are derived (N × what one cgset call writes, measured in (b))."


def _engine_table(section):
    res = section["results"]
    lines = ["| N | side | first run (median) | × floor | re-run (median) | × floor | writes first / re-run | reps |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in section["sizes"]:
        floor = res.get(("floor", n), {})
        f1, f2 = median(floor.get("first", [])), median(floor.get("rerun", []))
        for side, label in ENGINE_SIDES:
            rec = res.get((side, n))
            if rec is None:
                if side == "ansible_loop":
                    lines.append("| %d | %s | not run at this size (see note) | | | | | 0 |" % (n, label))
                continue
            m1, m2 = median(rec["first"]), median(rec["rerun"])
            r1 = m1 / f1 if m1 and f1 else None
            r2 = m2 / f2 if m2 and f2 else None
            writes = "%s / %s%s" % (rec.get("writes_first", "?"), rec.get("writes_rerun", "?"),
                                    " (derived)" if rec.get("writes_derived") else "")
            if side == "noop":
                writes = "0 / 0"
            lines.append("| %d | %s | %s | %s | %s | %s | %s | %d |" % (
                n, label, fmt_s(m1), fmt_ratio(r1), fmt_s(m2), fmt_ratio(r2), writes, rec["reps"]))
        mod, noop = res.get(("module", n)), res.get(("noop", n))
        if mod and noop:
            lines.append("| %d | module − no-op (the module's share of the Ansible call) | %s | | %s | | | |" % (
                n, fmt_s(median(mod["first"]) - median(noop["first"])),
                fmt_s(median(mod["rerun"]) - median(noop["rerun"]))))
    return lines


def _facts_table(section):
    res = section["results"]
    lines = ["| extra threads | tasks alive | side | median | × in-process facts | reps |",
             "|---:|---:|---|---:|---:|---:|"]
    for count in section["thread_counts"]:
        base = median(res.get(("facts", count), {}).get("times", []))
        for side, label in (("facts", "**cpu_isolation_facts gather() in-process** (the module's work)"),
                            ("operator", "operator loop: ps -eLo + taskset -pc per thread + cat every IRQ"),
                            ("module", "rtvirt.kvm.cpu_isolation_facts via ansible ad-hoc"),
                            ("noop", "Ansible start-up floor: ansible -m ping")):
            rec = res.get((side, count))
            if not rec:
                continue
            m = median(rec["times"])
            lines.append("| %d | %d | %s | %s | %s | %d |" % (
                count, rec["alive"], label, fmt_s(m), fmt_ratio(m / base if base else None), len(rec["times"])))
    return lines


def _playbook_table(section):
    res = section["results"]
    # The time above the no-op is what the roles cost; the ratio also moves with the machine's start-up floor.
    lines = ["| guests | playbook | median wall time | × no-op | above the no-op | changed tasks (re-run) "
             "| kernel writes (re-run, strace) | reps |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in section["sizes"]:
        noop = median(res.get(("noop", size), {}).get("times", []))
        for side, label in (("noop", "no-op playbook (ansible.builtin.ping), start-up floor"),
                            ("site", "site.yml re-converge"), ("remediate", "remediate.yml, report mode")):
            rec = res.get((side, size))
            if not rec:
                if side != "noop":
                    lines.append("| %d | %s | not run | | | | | 0 |" % (size, label))
                continue
            m = median(rec.get("times", []))
            lines.append("| %d | %s | %s | %s | %s | %s | %s | %d |" % (
                size, label, fmt_s(m), fmt_ratio(m / noop if m and noop else None),
                fmt_s(m - noop) if m and noop and side != "noop" else "", rec.get("changed", "?"),
                rec.get("writes", "?"), len(rec.get("times", []))))
    return lines


def _goals(sections):
    rows = ["| goal | measured | met? |", "|---|---|---|"]
    eng = sections.get("engine", {})
    if "results" in eng:
        res, n = eng["results"], max(eng["sizes"])
        f1, e1 = median(res[("floor", n)]["first"]), median(res[("engine", n)]["first"])
        f2, e2 = median(res[("floor", n)]["rerun"]), median(res[("engine", n)]["rerun"])
        rows.append("| %d cgroups within 2× the plain-write floor (first run) | engine %s vs floor %s = %s | %s |" % (
            n, fmt_s(e1), fmt_s(f1), fmt_ratio(e1 / f1), "yes" if e1 / f1 <= 2 else "**no**"))
        rows.append("| (same, re-run: engine reads and compares, floor rewrites) | engine %s vs floor %s = %s | %s |" % (
            fmt_s(e2), fmt_s(f2), fmt_ratio(e2 / f2), "yes" if e2 / f2 <= 2 else "**no**"))
        zero = all(res[("engine", size)].get("writes_rerun") == 0 for size in eng["sizes"])
        mod_zero = all(res.get(("module", size), {}).get("writes_rerun") == 0 for size in eng["sizes"])
        rows.append("| re-runs make zero writes (engine and module) | engine re-run writes %s; module %s | %s |" % (
            ", ".join("%s" % res[("engine", s)].get("writes_rerun") for s in eng["sizes"]),
            ", ".join("%s" % res.get(("module", s), {}).get("writes_rerun") for s in eng["sizes"]),
            "yes" if zero and mod_zero else "**no**"))
    else:
        rows.append("| engine goals | case did not run: %s | not measured |" % eng.get("error", "not selected"))
    pb = sections.get("playbooks", {})
    site = pb.get("results", {}).get(("site", 32)) if pb else None
    noop = pb.get("results", {}).get(("noop", 32)) if pb else None
    if site and noop and site.get("times"):
        ratio = median(site["times"]) / median(noop["times"])
        # Issue 18: the 1.5x goal is withdrawn (it measured ansible-core's per-task cost more than ours); 2x stays,
        # and the time above the no-op is what the roles themselves cost.
        rows.append("| site.yml re-converge with 32 guests within 2× the no-op playbook | %s vs %s = %s (%s above it), "
                    "%s changed, %s writes | %s |" % (
                        fmt_s(median(site["times"])), fmt_s(median(noop["times"])), fmt_ratio(ratio),
                        fmt_s(median(site["times"]) - median(noop["times"])), site.get("changed"),
                        site.get("writes"), "yes" if ratio <= 2 and site.get("writes") == 0 else "**no**"))
    else:
        why = "; ".join(pb.get("not_run", [])) or pb.get("error") or "case not selected or fewer than 32 guests"
        rows.append("| site.yml re-converge with 32 guests within 2× the no-op playbook | %s | not measured |" % why)
    fx = sections.get("facts", {})
    rec = fx.get("results", {}).get(("facts", 10000)) if fx else None
    if rec:
        m = median(rec["times"])
        rows.append("| facts at 10,000 threads within 0.5 s of work | gather() median %s (%d tasks scanned; runs: %s) | %s |" % (
            fmt_s(m), rec.get("scanned", 0), ", ".join(fmt_s(t) for t in rec["times"]), "yes" if m <= 0.5 else "**no**"))
    else:
        rows.append("| facts at 10,000 threads within 0.5 s of work | %s | not measured |" % (
            fx.get("error", "not run at 10,000 threads")))
    return rows


def markdown(args, machine, sections, elapsed, plot_name):
    out = ["# rtvirt.kvm benchmarks: results", "",
           "Generated by `bench/run.py%s` on %s in %s of wall time. Both sides of every comparison ran in this "
           "run, alternating (the order rotates every repetition); the tables give medians. Timings are wall "
           "clock (`time.perf_counter`) of the whole side, subprocesses included." % (
               " --quick" if args.quick else "", time.strftime("%Y-%m-%d %H:%M %Z"), fmt_s(elapsed)), "",
           "## Machine", ""]
    out += ["- **%s**: %s" % (key, value) for key, value in machine.items()]
    out += ["", "## Goals", ""] + _goals(sections)

    eng = sections.get("engine", {})
    out += ["", "## 1. Engine: converge N cpuset cgroups", ""]
    if "results" in eng:
        out += ["Trees `rtvirt-bench-<uuid>/machine/pNNN.partition/qemu-…libvirt-qemu/{emulator,vcpu0..3}` (10 guests "
                "per partition) in the real cgroup v1 cpuset hierarchy; each cgroup gets `cpuset.cpus` and "
                "`cpuset.mems`. Every side starts from an empty subtree (first run) and then runs again on the "
                "tree it made (re-run). Writes count `mkdir` + knob writes: the engine's from its `writes` "
                "result, the floor's by construction, cgroup-tools' with strace (`write(2)`/`mkdir(2)` under the "
                "subtree, untimed runs). %d repetitions per side; %s Plot: [%s](%s)." % (
                    eng["reps"], _loop_note(eng), plot_name, plot_name), ""]
        out += _engine_table(eng)
        if eng.get("profile"):
            out += ["", "### Where the engine's time goes (cProfile, N = %d, after the fixes in this run's code)" %
                    max(eng["sizes"]), ""]
            for phase, rows in eng["profile"].items():
                out += ["%s (total %s under the profiler), top functions by own time:" % (phase, fmt_s(rows["total"])), "",
                        "| function | calls | own time | cumulative |", "|---|---:|---:|---:|"]
                out += ["| `%s` | %d | %s | %s |" % r for r in rows["top"]]
                out.append("")
    else:
        out.append("Not run: %s" % eng.get("error", "not selected"))

    pb = sections.get("playbooks", {})
    out += ["", "## 2. Playbooks at scale: localhost with 1, 8, 32 running guests", ""]
    if pb:
        for line in pb.get("not_run", []):
            out.append("- **%s**" % line)
        if pb.get("error"):
            out.append("- **stopped: %s**" % pb["error"])
        for note in pb.get("notes", []):
            out.append("- %s" % note)
        out += ["", "Tiny diskless guests (2 vCPUs, 64 MiB, libvirt rig), each in its own partition "
                "`/machine/rtvb-…` created by the benchmark. Inventory `inventories/localhost/hosts.yml` "
                "(or `localhost,` when it is missing), `-e ansible_python_interpreter=$RTVIRT_PYTHON_INTERPRETER`. "
                "Kernel writes: one extra untimed re-run under strace (successful `write(2)` to /sys or /proc "
                "files, `mkdir`/`rmdir`).", ""]
        out += _playbook_table(pb)
    else:
        out.append("Not selected.")

    fx = sections.get("facts", {})
    out += ["", "## 3. Facts: cpu_isolation_facts with many threads alive", ""]
    if "results" in fx:
        out += ["The benchmark starts one helper process holding the extra threads (blocked on an Event) and "
                "ends it by PID. The real IRQ table: %d IRQs in /proc/irq. The operator loop forks two "
                "processes per thread and ran in fewer repetitions (1 at 10,000 threads)." % fx["irqs"], ""]
        out += _facts_table(fx)
    else:
        out.append("Not run: %s" % fx.get("error", "not selected"))
    out += [""] + _isolation_block(sections.get("isolation"))
    out += ["", "See bench/README.md for what each side does and for the profiler findings behind the engine "
            "changes.", ""]
    return "\n".join(out)


def _isolation_block(section):
    from bench.cases import isolation
    lines = [ISOLATION_BEGIN, "## 4. Isolation: the realtime CPU untuned, with TuneD, after host_prep, and both", ""]
    if section is None:
        lines.append("Not selected (run it alone: `python bench/run.py --cases isolation`).")
    else:
        lines += isolation.markdown(section, ISOLATION_PLOT)
    return lines + [ISOLATION_END]


def splice_isolation(text, section):
    """RESULTS.md with case 4's section replaced (or added before the closing pointer), the rest untouched."""
    block = "\n".join(_isolation_block(section))
    if ISOLATION_BEGIN in text and ISOLATION_END in text:
        head, rest = text.split(ISOLATION_BEGIN, 1)
        return head + block + rest.split(ISOLATION_END, 1)[1]
    marker = "\nSee bench/README.md for what each side does"
    if marker in text:
        head, tail = text.split(marker, 1)
        return head.rstrip("\n") + "\n\n" + block + "\n" + marker + tail
    return text.rstrip("\n") + "\n\n" + block + "\n"


# ---- SVG ------------------------------------------------------------------------------------

def _panel(x0, y0, w, h, title, xlabel, series, xs_ticks):
    pts = [p for _lbl, _key, _dash, points in series for p in points if p[1]]
    if not pts:
        return []
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    lx0, lx1 = math.log10(xmin) - 0.1, math.log10(xmax) + 0.1
    ly0, ly1 = math.floor(math.log10(ymin)), math.ceil(math.log10(ymax))
    if ly1 == ly0:
        ly1 += 1
    left, right, top, bottom = x0 + 60, x0 + w - 10, y0 + 30, y0 + h - 45

    def px(x):
        return left + (math.log10(x) - lx0) / (lx1 - lx0) * (right - left)

    def py(y):
        return bottom - (math.log10(y) - ly0) / (ly1 - ly0) * (bottom - top)

    out = ['<text x="%d" y="%d" font-size="14" font-weight="bold" text-anchor="middle">%s</text>' % (
        (left + right) / 2, y0 + 18, title),
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#000"/>' % (left, top, right - left, bottom - top)]
    for e in range(ly0, ly1 + 1):
        y = py(10 ** e)
        label = fmt_s(10 ** e).replace(".00", "")
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (left, y, right, y))
        out.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%s</text>' % (left - 4, y + 4, label))
        for m in range(2, 10):
            if e < ly1:
                ym = py(m * 10 ** e)
                out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#f2f2f2"/>' % (left, ym, right, ym))
    for x in xs_ticks:
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (px(x), top, px(x), bottom))
        out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>' % (px(x), bottom + 15, "{:,}".format(x)))
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle">%s</text>' % ((left + right) / 2, bottom + 33, xlabel))
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle" transform="rotate(-90 %d %d)">wall time (log)</text>' % (
        x0 + 14, (top + bottom) / 2, x0 + 14, (top + bottom) / 2))
    for _label, key, dash, points in series:
        points = [p for p in points if p[1]]
        if not points:
            continue
        color = COLORS[key]
        if len(points) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="2.2" %s points="%s"/>' % (
                color, 'stroke-dasharray="6,4"' if dash else "", " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in points)))
        for x, y in points:
            out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (px(x), py(y), color))
    return out


def svg(sections):
    eng = sections["engine"]
    res, sizes = eng["results"], eng["sizes"]
    width, height = 1320, 470
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="DejaVu Sans, Arial, sans-serif">' % (width, height),
             '<rect width="100%" height="100%" fill="white"/>']
    keys = ["floor", "engine", "cgtools", "ansible_loop", "module", "noop"]
    for index, (phase, title) in enumerate((("first", "1. Converge N cgroups: first run"),
                                            ("rerun", "1. Converge N cgroups: re-run"))):
        series = []
        for key in keys:
            points = [(n, median(res[(key, n)][phase])) for n in sizes if (key, n) in res]
            series.append((SHORT[key], key, key in ("noop", "module"), points))
        parts += _panel(index * 440, 0, 440, 400, title, "cgroups converged (N)", series, sizes)
    fx = sections.get("facts", {})
    if "results" in fx:
        series = []
        for key in ("facts", "operator", "module", "noop"):
            points = [(c, median(fx["results"][(key, c)]["times"])) for c in fx["thread_counts"]
                      if (key, c) in fx["results"]]
            series.append((SHORT[key], key, key in ("noop", "module"), points))
        parts += _panel(880, 0, 440, 400, "3. Isolation facts vs threads alive", "extra threads", series,
                        fx["thread_counts"])
    # legend
    seen, x, y = [], 20, 425
    legend = [(SHORT[k], k, k in ("noop", "module")) for k in keys + ["facts", "operator"]]
    for label, key, dash in legend:
        if label in seen:
            continue
        seen.append(label)
        parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5" %s/>' % (
            x, y, x + 26, y, COLORS[key], 'stroke-dasharray="6,4"' if dash else ""))
        parts.append('<text x="%d" y="%d" font-size="12">%s</text>' % (x + 32, y + 4, label))
        x += 40 + 7 * len(label)
        if x > width - 200:
            x, y = 20, y + 22
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
