# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A CPU map a person can read, and the placement check of realtime guests; both pure.

Input is the ``cpu_isolation`` fact of ``rtvirt.kvm.cpu_isolation_facts``. ``build_map`` turns it into
nodes → cores → CPUs, each CPU with one role (housekeeping, emulator, a guest's vCPU, reserved SMT sibling,
free), the guests' vCPUs and emulators on it (from the running guests' pinning, with each vCPU thread's real
policy and priority, and from the definitions of stopped guests) and the violations that concern it.
``render_text`` makes a compact terminal table, ``render_html`` a self-contained HTML page (inline CSS, no
scripts, nothing fetched) that a person reads at a glance: one colour per role and per guest.

``placement_problems`` compares what the realtime_vm role asked with what the facts show.
"""

from __future__ import annotations

import html

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import DomainXMLError, guest_pins_from_domain_xml


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


def _defined_guests(facts):
    """{name: GuestPins} of the persistent definitions in the facts; a definition that cannot be read is left out
    (the facts already warn about unreadable files, and a map must not fail over one guest)."""
    guests = {}
    for domain in facts.get("domains") or ():
        try:
            pins = guest_pins_from_domain_xml(domain.get("xml") or "")
        except DomainXMLError:
            continue
        guests[pins.name] = pins
    return guests


def _dedicated_emulator_cpus(emulator_cpus, housekeeping):
    """The housekeeping CPUs given to emulator threads alone. When the emulators share every housekeeping CPU
    (guest_plan's answer without host_prep_emulator_cpus) no CPU is an emulator CPU: they all stay housekeeping."""
    emulator = _cpus(emulator_cpus) & housekeeping
    return frozenset() if emulator >= housekeeping else emulator


def _topology_ids(facts):
    topology = facts.get("topology") or {}
    core_id = {int(c): i for c, i in (topology.get("core_id") or {}).items()}
    package_id = {int(c): i for c, i in (topology.get("package_id") or {}).items()}
    return core_id, package_id


def build_map(facts, extra_pins=None, emulator_cpus=None):
    """The map as plain data: {"nodes": [...], "violations": [...], "summary": {...}}.

    Every CPU has a ``role``: ``housekeeping``, ``emulator`` (a housekeeping CPU dedicated to emulator threads,
    from ``emulator_cpus``), ``vcpu`` (an isolated CPU holding a guest's vCPU), ``reserved`` (an isolated SMT
    sibling a guest keeps idle, from its definition's ``rtvirt:pcpu`` metadata) or ``free`` (isolated, unused).

    Guests come from the running guests' pinning (with each vCPU thread's real policy and priority), then from
    the persistent definitions in the facts (``domains``) of guests that are not running, drawn as "(stopped)".
    ``extra_pins``: optional {guest: {"vcpupin": {vcpu: cpus}, "emulator_cpus": cpus, "reserved": cpus}} for
    guests the facts know nothing of (planned, not yet defined); also "(stopped)".
    """
    online = _cpus((facts.get("cpus") or {}).get("online"))
    isolated = _cpus(facts.get("isolated_cpus"))
    housekeeping = online - isolated
    dedicated = _dedicated_emulator_cpus(emulator_cpus, housekeeping)
    occupants = {cpu: [] for cpu in online}
    reserved = {cpu: [] for cpu in online}
    running = set()

    def occupy(cpus, **occupant):
        for cpu in cpus:
            occupants.setdefault(cpu, []).append(occupant)

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
            detail = ""
            if policy in ("fifo", "rr"):
                detail = "%s:%s" % (policy, thread.get("rt_priority"))
            elif policy:
                detail = policy
            occupy(where, guest=name, role="vcpu", vcpu=int(vcpu), state="running", detail=detail,
                   label=("%s %s" % (label, detail)).strip())
        occupy(_cpus(pinning.get("emulator")), guest=name, role="emulator", state="running", detail="",
               label="%s emu" % name)

    stopped = {}
    for name, pins in _defined_guests(facts).items():
        stopped[name] = {"vcpupin": {v: format_cpulist(c) for v, c in pins.vcpupin.items()},
                         "emulator_cpus": format_cpulist(pins.emulator), "reserved": format_cpulist(pins.reserved)}
    for name, pins in (extra_pins or {}).items():
        stopped.setdefault(name, pins)
    for name, pins in sorted(stopped.items()):
        for cpu in _cpus(pins.get("reserved")):
            reserved.setdefault(cpu, []).append(name)
        if name in running:
            continue
        for vcpu, cpus in sorted((pins.get("vcpupin") or {}).items(), key=lambda kv: int(kv[0])):
            occupy(_cpus(cpus), guest=name, role="vcpu", vcpu=int(vcpu), state="stopped", detail="stopped",
                   label="%s vCPU%s (stopped)" % (name, vcpu))
        occupy(_cpus(pins.get("emulator_cpus")), guest=name, role="emulator", state="stopped", detail="stopped",
               label="%s emu (stopped)" % name)

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
    core_id, package_id = _topology_ids(facts)
    roles = {}
    result_nodes = []
    for entry in nodes:
        cores = []
        for core in _cores(entry["cpus"], facts.get("smt_siblings")):
            cpus = []
            for cpu in core:
                here = occupants.get(cpu, [])
                vcpu_guests = sorted({o["guest"] for o in here if o["role"] == "vcpu"})
                if cpu in isolated:
                    role = "vcpu" if vcpu_guests else ("reserved" if reserved.get(cpu) else "free")
                else:
                    role = "emulator" if cpu in dedicated else "housekeeping"
                roles.setdefault(role, set()).add(cpu)
                cpus.append({
                    "cpu": cpu,
                    "kind": "isolated" if cpu in isolated else "housekeeping",
                    "role": role,
                    "node": entry["node"],
                    "siblings": [c for c in core if c != cpu],
                    "guests": vcpu_guests,
                    "reserved_for": sorted(set(reserved.get(cpu, []))),
                    "occupants": here,
                    "violations": sorted(set(flagged.get(cpu, []))),
                    "shared": len(vcpu_guests) > 1,
                })
            cores.append({"cpus": cpus, "core_id": core_id.get(core[0]), "package": package_id.get(core[0])})
        result_nodes.append({"node": entry["node"], "cpus": format_cpulist(entry["cpus"]), "cores": cores,
                             "packages": sorted({c["package"] for c in cores if c["package"] is not None})})
    return {
        "nodes": result_nodes,
        "violations": [dict(kind=v.get("kind"), message=v.get("message") or v.get("offender") or "")
                       for v in facts.get("violations") or ()],
        "unplaced_violations": len(unplaced),
        "summary": {"online": format_cpulist(online), "isolated": format_cpulist(isolated & online),
                    "housekeeping": format_cpulist(online - isolated),
                    "roles": {role: format_cpulist(roles.get(role, ())) for role in ROLES},
                    "guests": sorted(running | set(stopped)),
                    "stopped": sorted(set(stopped) - running)},
    }


# Every role a CPU can have, in the order the legend shows them.
ROLES = ("housekeeping", "emulator", "vcpu", "reserved", "free")
_MARKS = {"housekeeping": "H", "emulator": "E"}


def _mark(cpu):
    return _MARKS.get(cpu["role"], "I")


def render_text(cpu_map, title="CPU map", per_kind=2):
    """A compact table: one line per CPU, grouped by node and core."""
    summary = cpu_map["summary"]
    emulator = summary["roles"]["emulator"]
    lines = ["%s: online %s, housekeeping (H) %s, isolated (I) %s%s; ! = violation, X = shared by guests"
             % (title, summary["online"] or "-", summary["housekeeping"] or "-", summary["isolated"] or "-",
                ", of them emulator (E) %s" % emulator if emulator else "")]
    for node in cpu_map["nodes"]:
        lines.append("node %s" % ("?" if node["node"] is None else node["node"]))
        for index, core in enumerate(node["cores"]):
            for cpu in core["cpus"]:
                flags = ("!" if cpu["violations"] else " ") + ("X" if cpu["shared"] else " ")
                who = [o["label"] for o in cpu["occupants"]]
                who += ["reserved for %s" % name for name in cpu["reserved_for"] if name not in cpu["guests"]]
                extra = ("  [%s]" % ", ".join(cpu["violations"])) if cpu["violations"] else ""
                lines.append("  core %-3s cpu %-4s %s %s %s%s" % (
                    "%d" % index if cpu is core["cpus"][0] else "", cpu["cpu"], _mark(cpu), flags,
                    ", ".join(who) or "-", extra))
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


# One colour per guest, light enough for dark text, apart enough to tell two guests side by side; a ninth guest
# reuses the first colour, and its name on the tile still tells it.
GUEST_COLOURS = ("#8fd19e", "#8ec5ff", "#ffb38a", "#d7a6f0", "#f7d86a", "#7fd6d0", "#f5a3c0", "#c3d97c")

_CSS = """
*{box-sizing:border-box}
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:1.2em;color:#1d2330;background:#f4f6f9}
h1{font-size:1.35em;margin:0 0 .3em}h2{font-size:1.05em;margin:0 0 .5em}
.sum{display:flex;flex-wrap:wrap;gap:.4em;margin:0 0 .8em;padding:0;list-style:none;font-size:.9em}
.sum li{padding:.25em .6em;border-radius:4px;border:1px solid #b9c1cf}
.legend{display:flex;flex-wrap:wrap;gap:.4em;margin:0 0 1em;padding:0;list-style:none;font-size:.85em}
.legend li{padding:.25em .6em;border-radius:4px}
.nodes{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.node{border:2px solid #55607a;border-radius:10px;padding:.6em .8em;background:#fff}
.node h2 small{font-weight:normal;color:#4a5263}
.cores{display:flex;flex-wrap:wrap;gap:.7em}
.core{border:2px dashed #7d879b;border-radius:8px;padding:.35em;background:#eef1f6}
.core h3{font-size:.75em;font-weight:normal;margin:0 0 .3em;color:#3c4456}
.threads{display:flex;gap:.35em}
.cpu{width:12.5em;min-height:7.5em;border-radius:6px;padding:.4em .5em;font-size:.8em;border:3px solid #55607a;
overflow-wrap:break-word}
.cpu .h{display:flex;justify-content:space-between;align-items:center;gap:.3em;white-space:nowrap}
.cpu .n{font-size:1.35em;font-weight:700}.cpu .r{font-size:.75em;font-weight:700;padding:.1em .35em;border-radius:3px;background:rgba(255,255,255,.8)}
.cpu .who{font-size:1.1em;font-weight:700;margin:.25em 0 .1em}
.cpu .sib{font-size:.85em;color:#3c4456}
.cpu ul{margin:.2em 0 0;padding-left:1.1em}.cpu li{margin:0}
.cpu .vs{margin-top:.3em;font-size:.85em}
.role-housekeeping{background:#c9d1dc;border-color:#5d6b80}
.role-emulator{background:#b9a3e3;border-color:#5b3f99}
.role-vcpu{border-color:#1d2330}.legend .role-vcpu{background:linear-gradient(90deg,#c6ebcf,#c7e2ff,#ffd9c5)}
.role-reserved{background:repeating-linear-gradient(135deg,#fff 0 8px,#e3e6eb 8px 16px);border-style:dashed}
.role-free{background:#fff;border-style:dotted;border-color:#8a93a6}
.stopped{border-style:dashed}.legend .stopped{border:2px dashed #1d2330}
.bad{outline:3px solid #d22d2d;outline-offset:1px}.v{color:#b01d1d;font-weight:700}
table{border-collapse:collapse;font-size:.85em;margin-top:.5em;background:#fff}
td,th{border:1px solid #d7dce4;padding:.25em .5em;text-align:left}
"""

_ROLE_NAMES = {"housekeeping": "housekeeping", "emulator": "emulator", "vcpu": "realtime",
               "reserved": "reserved", "free": "free"}
_HEADLINES = {"housekeeping": "host threads, IRQs", "emulator": "QEMU emulators", "free": "free"}
_ROLE_HELP = {
    "housekeeping": "housekeeping: the host's kernel threads, IRQs, /machine",
    "emulator": "emulator: guests' QEMU emulator threads only",
    "vcpu": "realtime: a guest's vCPU, in the guest's colour",
    "reserved": "reserved: SMT sibling a guest keeps idle",
    "free": "free realtime CPU",
}


def _who(cpu):
    """The tile's headline: whose the CPU is, in a few words."""
    if cpu["role"] == "vcpu":
        parts = []
        for occupant in cpu["occupants"]:
            if occupant["role"] == "vcpu":
                parts.append("%s vCPU %d" % (occupant["guest"], occupant["vcpu"]))
        return ", ".join(parts)
    if cpu["role"] == "reserved":
        return "idle for %s" % ", ".join(cpu["reserved_for"])
    return _HEADLINES[cpu["role"]]


def render_html(cpu_map, title="CPU map"):
    """A self-contained HTML page of the map: nodes → cores (SMT siblings side by side) → CPUs, one colour per
    role and one per guest. Each CPU element carries ``data-*`` attributes (cpu, role, node, siblings, guests) so
    that a test reads the page as a browser built it."""
    esc = html.escape
    summary = cpu_map["summary"]
    colour = {name: GUEST_COLOURS[i % len(GUEST_COLOURS)] for i, name in enumerate(summary["guests"])}
    roles = summary["roles"]
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>%s</title><style>%s</style></head><body>" % (esc(title), _CSS),
           "<h1>%s</h1>" % esc(title), "<ul class=\"sum\">",
           "<li>online <b>%s</b></li>" % esc(summary["online"] or "-"),
           "<li>isolated <b>%s</b></li>" % esc(summary["isolated"] or "none")]
    for role in ROLES:
        out.append("<li class=\"role-%s\" data-summary=\"%s\">%s <b>%s</b></li>" % (
            role, role, esc(_ROLE_NAMES[role]), esc(roles[role] or "none")))
    out.append("</ul><ul class=\"legend\">")
    for role in ROLES:
        out.append("<li class=\"cpu-key role-%s\">%s</li>" % (role, esc(_ROLE_HELP[role])))
    for name in summary["guests"]:
        stopped = name in summary["stopped"]
        out.append("<li data-guest=\"%s\"%s style=\"background:%s\">%s%s</li>" % (
            esc(name), " class=\"stopped\"" if stopped else "", colour[name], esc(name),
            " (defined, not running)" if stopped else ""))
    out.append("<li class=\"bad\">violation</li></ul><div class=\"nodes\">")
    for node in cpu_map["nodes"]:
        number = "?" if node["node"] is None else str(node["node"])
        socket = ", ".join(str(p) for p in node["packages"])
        out.append("<section class=\"node\" data-node=\"%s\"><h2>NUMA node %s <small>CPUs %s%s</small></h2>"
                   "<div class=\"cores\">" % (esc(number), esc(number), esc(node["cpus"] or "-"),
                                              " &middot; socket %s" % esc(socket) if socket else ""))
        for index, core in enumerate(node["cores"]):
            ids = "core %s" % (index if core["core_id"] is None else core["core_id"])
            siblings = format_cpulist(c["cpu"] for c in core["cpus"])
            out.append("<div class=\"core\" data-siblings=\"%s\"><h3>%s &middot; %s</h3><div class=\"threads\">" % (
                esc(siblings), esc(ids), "SMT siblings %s" % esc(siblings) if len(core["cpus"]) > 1 else "no SMT"))
            for cpu in core["cpus"]:
                out.append(_cpu_html(cpu, node, siblings, colour))
            out.append("</div></div>")
        out.append("</div></section>")
    out.append("</div>")
    violations = cpu_map["violations"]
    out.append("<h2 style=\"margin-top:1em\">Violations: %d</h2>" % len(violations))
    if violations:
        out.append("<table><tr><th>kind</th><th>what</th></tr>")
        for violation in violations:
            out.append("<tr><td>%s</td><td>%s</td></tr>" % (esc(str(violation["kind"])), esc(violation["message"])))
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _cpu_html(cpu, node, siblings, colour):
    esc = html.escape
    classes = ["cpu", "role-" + cpu["role"]]
    if cpu["violations"] or cpu["shared"]:
        classes.append("bad")
    style = ""
    if cpu["role"] == "vcpu":
        style = " style=\"background:%s\"" % colour[cpu["guests"][0]]
        if all(o["state"] == "stopped" for o in cpu["occupants"] if o["role"] == "vcpu"):
            classes.append("stopped")
    elif cpu["role"] == "reserved":
        style = " style=\"border-color:%s\"" % colour[cpu["reserved_for"][0]]
    vcpus = ",".join("%s:%d" % (o["guest"], o["vcpu"]) for o in cpu["occupants"] if o["role"] == "vcpu")
    out = ["<div class=\"%s\" data-cpu=\"%d\" data-role=\"%s\" data-node=\"%s\" data-siblings=\"%s\" "
           "data-guests=\"%s\" data-vcpus=\"%s\"%s>" % (
               " ".join(classes), cpu["cpu"], cpu["role"], esc("?" if node["node"] is None else str(node["node"])),
               esc(siblings), esc(",".join(cpu["guests"])), esc(vcpus), style),
           "<div class=\"h\"><span class=\"n\">CPU %d</span><span class=\"r\">%s</span></div>" % (
               cpu["cpu"], esc(_ROLE_NAMES[cpu["role"]])),
           "<div class=\"who\">%s</div>" % esc(_who(cpu))]
    if cpu["siblings"]:
        out.append("<div class=\"sib\">SMT sibling of CPU %s</div>" % esc(format_cpulist(cpu["siblings"])))
    if cpu["occupants"]:
        out.append("<ul>%s</ul>" % "".join(
            "<li class=\"%s\">%s</li>" % (esc(o["role"]), esc(o["label"])) for o in cpu["occupants"]))
    problems = (["shared by several guests"] if cpu["shared"] else []) + cpu["violations"]
    if problems:
        # <wbr> after each underscore: a kind such as kthread_on_isolated breaks at its words, not mid-word.
        out.append("<div class=\"v vs\">&#9888; %s</div>" % ", ".join(
            esc(kind).replace("_", "_<wbr>") for kind in problems))
    out.append("</div>")
    return "".join(out)


def placement_problems(facts, expected):
    """What differs between the guests as asked and as running; a list of messages (empty: all good).

    ``expected``: [{"name", "vcpupin": {vcpu: cpus}, "emulator_cpus", "fifo_priority", "iothreads"}]; I/O threads
    belong on the emulator CPUs as the emulator does.
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
            if thread.get("role") in ("emulator", "iothread") and not _cpus(thread.get("affinity")) <= emulator:
                problems.append("guest %s %s thread %s (%s) may run on CPUs %s, outside the emulator CPUs %s"
                                % (name, "I/O" if thread.get("role") == "iothread" else "emulator", thread.get("tid"),
                                   thread.get("comm"), thread.get("affinity"), want.get("emulator_cpus")))
        iothreads = [t for t in guest.get("threads") or () if t.get("role") == "iothread"]
        if "iothreads" in want and len(iothreads) != (want["iothreads"] or 0):
            problems.append("guest %s runs %d I/O threads, expected %d" % (name, len(iothreads), want["iothreads"] or 0))
    return problems
