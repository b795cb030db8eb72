# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A CPU map a person can read, and the placement check of realtime guests; both pure.

Input is the ``cpu_isolation`` fact of ``rtvirt.kvm.cpu_isolation_facts``. ``build_map`` turns it into
nodes → cores → CPUs, each CPU marked housekeeping or isolated, with the guests' vCPUs and emulators
on it (from the running guests' pinning, with each vCPU thread's real policy and priority) and the
violations that concern it. ``render_text`` makes a compact terminal table, ``render_html`` a
self-contained HTML page (inline CSS, no scripts, nothing fetched).

``placement_problems`` compares what the realtime_vm role asked with what the facts show.
"""

from __future__ import annotations

import html

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)


def _cpus(text):
    if text is None or text == "":
        return frozenset()
    try:
        return parse_cpulist(str(text))
    except CpuListError:
        return frozenset()


def _cores(online, siblings):
    """Cores as sorted tuples of CPUs; a CPU without a sibling group is its own core."""
    cores, seen = [], set()
    for group in siblings or ():
        cpus = tuple(sorted(_cpus(group) & online))
        if cpus and not seen.intersection(cpus):
            cores.append(cpus)
            seen.update(cpus)
    cores.extend((cpu,) for cpu in sorted(online - seen))
    return sorted(cores)


def build_map(facts, extra_pins=None):
    """The map as plain data: {"nodes": [...], "violations": [...], "summary": {...}}.

    ``extra_pins``: optional {guest: {"vcpupin": {vcpu: cpus}, "emulator_cpus": cpus}} for guests the
    facts do not show running (defined but stopped); they are drawn as "(stopped)".
    """
    online = _cpus((facts.get("cpus") or {}).get("online"))
    isolated = _cpus(facts.get("isolated_cpus"))
    occupants = {cpu: [] for cpu in online}
    running = set()
    for guest in facts.get("guests") or ():
        name = guest.get("name")
        running.add(name)
        pinning = guest.get("pinning") or {}
        threads = {}
        for thread in guest.get("threads") or ():
            if thread.get("role") == "vcpu":
                threads[str(thread.get("id"))] = thread
        for vcpu, cpus in sorted((pinning.get("vcpus") or {}).items(), key=lambda kv: int(kv[0])):
            thread = threads.get(str(vcpu), {})
            where = _cpus(cpus) if cpus else _cpus(thread.get("affinity"))
            policy = thread.get("policy")
            label = "%s vCPU%s" % (name, vcpu)
            if policy in ("fifo", "rr"):
                label += " %s:%s" % (policy, thread.get("rt_priority"))
            elif policy:
                label += " %s" % policy
            for cpu in where:
                occupants.setdefault(cpu, []).append({"guest": name, "role": "vcpu", "label": label})
        emulator = pinning.get("emulator")
        for cpu in _cpus(emulator):
            occupants.setdefault(cpu, []).append({"guest": name, "role": "emulator", "label": "%s emu" % name})
    for name, pins in sorted((extra_pins or {}).items()):
        if name in running:
            continue
        for vcpu, cpus in sorted((pins.get("vcpupin") or {}).items(), key=lambda kv: int(kv[0])):
            for cpu in _cpus(cpus):
                occupants.setdefault(cpu, []).append(
                    {"guest": name, "role": "vcpu", "label": "%s vCPU%s (stopped)" % (name, vcpu)})

    flagged = {cpu: [] for cpu in occupants}
    unplaced = []
    for violation in facts.get("violations") or ():
        cpus = _cpus(violation.get("cpus")) | _cpus(violation.get("affinity") if violation.get("kind") ==
                                                    "pinning_drift" else None)
        hits = [cpu for cpu in sorted(cpus) if cpu in flagged]
        for cpu in hits:
            flagged[cpu].append(violation.get("kind", "violation"))
        if not hits:
            unplaced.append(violation)

    nodes_fact = facts.get("numa_nodes") or [{"node": 0, "cpus": format_cpulist(online)}]
    nodes, placed = [], set()
    for entry in sorted(nodes_fact, key=lambda n: n.get("node", 0)):
        node_cpus = _cpus(entry.get("cpus")) & online
        placed |= node_cpus
        nodes.append({"node": entry.get("node"), "cpus": node_cpus})
    if online - placed:
        nodes.append({"node": None, "cpus": online - placed})
    result_nodes = []
    for entry in nodes:
        cores = []
        for core in _cores(entry["cpus"], facts.get("smt_siblings")):
            cores.append({"cpus": [{
                "cpu": cpu,
                "kind": "isolated" if cpu in isolated else "housekeeping",
                "occupants": occupants.get(cpu, []),
                "violations": sorted(set(flagged.get(cpu, []))),
                "shared": len({o["guest"] for o in occupants.get(cpu, []) if o["role"] == "vcpu"}) > 1,
            } for cpu in core]})
        result_nodes.append({"node": entry["node"], "cores": cores})
    return {
        "nodes": result_nodes,
        "violations": [dict(kind=v.get("kind"), message=v.get("message") or v.get("offender") or "")
                       for v in facts.get("violations") or ()],
        "unplaced_violations": len(unplaced),
        "summary": {"online": format_cpulist(online), "isolated": format_cpulist(isolated & online),
                    "housekeeping": format_cpulist(online - isolated),
                    "guests": sorted(running | set(extra_pins or {}))},
    }


def _mark(cpu):
    return "I" if cpu["kind"] == "isolated" else "H"


def render_text(cpu_map, title="CPU map", per_kind=2):
    """A compact table: one line per CPU, grouped by node and core."""
    summary = cpu_map["summary"]
    lines = ["%s: online %s, housekeeping (H) %s, isolated (I) %s; ! = violation, X = shared by guests"
             % (title, summary["online"] or "-", summary["housekeeping"] or "-", summary["isolated"] or "-")]
    for node in cpu_map["nodes"]:
        lines.append("node %s" % ("?" if node["node"] is None else node["node"]))
        for index, core in enumerate(node["cores"]):
            for cpu in core["cpus"]:
                flags = ("!" if cpu["violations"] else " ") + ("X" if cpu["shared"] else " ")
                who = ", ".join(o["label"] for o in cpu["occupants"]) or "-"
                extra = ("  [%s]" % ", ".join(cpu["violations"])) if cpu["violations"] else ""
                lines.append("  core %-3s cpu %-4s %s %s %s%s" % (
                    "%d" % index if cpu is core["cpus"][0] else "", cpu["cpu"], _mark(cpu), flags, who, extra))
    violations = cpu_map["violations"]
    lines.append("violations: %d" % len(violations))
    by_kind = {}
    for violation in violations:
        by_kind.setdefault(violation["kind"], []).append(violation)
    for kind in sorted(by_kind):
        items = by_kind[kind]
        lines.append("  ! %s (%d)" % (kind, len(items)))
        for violation in items[:per_kind]:
            lines.append("      %s" % violation["message"])
        if len(items) > per_kind:
            lines.append("      ... and %d more" % (len(items) - per_kind))
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d2330;background:#fafbfc}
h1{font-size:1.3em;margin:0 0 .2em}p.sum{margin:.2em 0 1em;color:#4a5263}
.node{border:1px solid #c9cfd9;border-radius:8px;padding:.6em .8em;margin:0 0 1em;background:#fff}
.node h2{font-size:1em;margin:0 0 .5em}
.cores{display:flex;flex-wrap:wrap;gap:.6em}
.core{border:1px dashed #9aa3b2;border-radius:6px;padding:.4em;display:flex;gap:.4em}
.core .cl{writing-mode:vertical-rl;transform:rotate(180deg);font-size:.7em;color:#6b7385}
.cpu{width:13em;overflow-wrap:anywhere;min-height:5.2em;border-radius:5px;padding:.35em .45em;font-size:.8em;border:2px solid transparent}
.cpu b{font-size:1.15em}.cpu .k{float:right;font-size:.75em;text-transform:uppercase;letter-spacing:.04em}
.housekeeping{background:#e6ecf5}.isolated{background:#fff4d6}
.cpu ul{margin:.3em 0 0;padding-left:1.1em}.cpu li{margin:0}.cpu li.v{list-style:none;margin-left:-1.1em}
.vcpu{color:#0b6b3a;font-weight:600}.emulator{color:#5b4a99}
.bad{border-color:#d22d2d;box-shadow:0 0 0 2px #f7c6c6}.bad .v{color:#b01d1d;font-weight:600}
.legend span{display:inline-block;padding:.1em .5em;margin-right:.5em;border-radius:4px;font-size:.85em}
table{border-collapse:collapse;font-size:.85em;margin-top:.5em}td,th{border:1px solid #d7dce4;padding:.25em .5em;text-align:left}
"""


def render_html(cpu_map, title="CPU map"):
    """A self-contained HTML page of the map."""
    esc = html.escape
    summary = cpu_map["summary"]
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>%s</title><style>%s</style></head><body>" % (esc(title), _CSS),
           "<h1>%s</h1>" % esc(title),
           "<p class=\"sum\">online %s &middot; housekeeping %s &middot; isolated %s &middot; guests: %s</p>" % (
               esc(summary["online"] or "-"), esc(summary["housekeeping"] or "-"), esc(summary["isolated"] or "-"),
               esc(", ".join(summary["guests"]) or "none")),
           "<p class=\"legend\"><span class=\"housekeeping\">housekeeping</span><span class=\"isolated\">isolated"
           "</span><span class=\"vcpu\">vCPU (policy:priority)</span><span class=\"emulator\">emulator</span>"
           "<span class=\"bad\">violation</span></p>"]
    for node in cpu_map["nodes"]:
        out.append("<div class=\"node\"><h2>NUMA node %s</h2><div class=\"cores\">"
                   % ("?" if node["node"] is None else esc(str(node["node"]))))
        for index, core in enumerate(node["cores"]):
            out.append("<div class=\"core\"><span class=\"cl\">core %d</span>" % index)
            for cpu in core["cpus"]:
                classes = [cpu["kind"]] + (["bad"] if cpu["violations"] or cpu["shared"] else [])
                out.append("<div class=\"cpu %s\"><span class=\"k\">%s</span><b>CPU %d</b><ul>"
                           % (" ".join(classes), esc(cpu["kind"]), cpu["cpu"]))
                for occupant in cpu["occupants"]:
                    out.append("<li class=\"%s\">%s</li>" % (esc(occupant["role"]), esc(occupant["label"])))
                if cpu["shared"]:
                    out.append("<li class=\"v\">shared by several guests</li>")
                for kind in cpu["violations"]:
                    out.append("<li class=\"v\">&#9888; %s</li>" % esc(kind))
                out.append("</ul></div>")
            out.append("</div>")
        out.append("</div></div>")
    violations = cpu_map["violations"]
    out.append("<h2>Violations: %d</h2>" % len(violations))
    if violations:
        out.append("<table><tr><th>kind</th><th>what</th></tr>")
        for violation in violations:
            out.append("<tr><td>%s</td><td>%s</td></tr>" % (esc(str(violation["kind"])), esc(violation["message"])))
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def placement_problems(facts, expected):
    """What differs between the guests as asked and as running; a list of messages (empty: all good).

    ``expected``: [{"name", "vcpupin": {vcpu: cpus}, "emulator_cpus", "fifo_priority"}].
    """
    guests = {g.get("name"): g for g in facts.get("guests") or ()}
    problems = []
    for want in expected:
        name = want["name"]
        guest = guests.get(name)
        if guest is None:
            problems.append("guest %s is not running (no QEMU process found in libvirt's run directory)" % name)
            continue
        vcpus = {str(t.get("id")): t for t in guest.get("threads") or () if t.get("role") == "vcpu"}
        for vcpu, cpus in sorted((want.get("vcpupin") or {}).items(), key=lambda kv: int(kv[0])):
            thread = vcpus.get(str(vcpu))
            if thread is None:
                problems.append("guest %s: no thread for vCPU %s" % (name, vcpu))
                continue
            where = "guest %s vCPU %s (tid %s)" % (name, vcpu, thread.get("tid"))
            if _cpus(thread.get("affinity")) != _cpus(cpus):
                problems.append("%s may run on CPUs %s, but is pinned to %s" % (where, thread.get("affinity"), cpus))
            if thread.get("policy") != "fifo" or thread.get("rt_priority") != want.get("fifo_priority"):
                problems.append("%s runs %s priority %s, expected fifo priority %s"
                                % (where, thread.get("policy"), thread.get("rt_priority"), want.get("fifo_priority")))
        emulator = _cpus(want.get("emulator_cpus"))
        for thread in guest.get("threads") or ():
            if thread.get("role") == "emulator" and not _cpus(thread.get("affinity")) <= emulator:
                problems.append("guest %s emulator thread %s (%s) may run on CPUs %s, outside the emulator CPUs %s"
                                % (name, thread.get("tid"), thread.get("comm"), thread.get("affinity"),
                                   want.get("emulator_cpus")))
    return problems
