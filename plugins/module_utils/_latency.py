# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Latency validation of the realtime CPUs: which CPUs to measure, oslat's command and JSON, the verdict.

Pure: the module (latency_check) reads the facts and runs oslat; everything it decides is decided here.

A CPU that a SCHED_FIFO/RR vCPU may run on is not measured: a busy loop there competes with the guest's vCPU
(it measures the guest's load, not the host's noise, and a FIFO vCPU starves a normal-priority loop outright).
Such CPUs are reported with the guests that own them, and a run that is left with nothing to measure fails,
so that a validate run never passes on CPUs it did not see.
"""

from __future__ import annotations

import json

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist

RT_POLICIES = ("fifo", "rr")
# oslat's bucket count limit: 1 us buckets up to 1 ms, the last bucket collects everything above.
MAX_BUCKETS = 1024
PERCENTILES = (("p99_us", 99.0), ("p99_9_us", 99.9), ("p99_99_us", 99.99))


class LatencyError(ValueError):
    """oslat's output cannot be used; the message says what was expected."""


def resolve_cpus(given, isolated, automatic):
    """The CPUs to validate and where the choice came from: the given list, else the kernel's isolated CPUs,
    else host_prep's automatic choice (all frozensets, ``given`` None when not given)."""
    if given is not None:
        return frozenset(given), "given"
    if isolated:
        return frozenset(isolated), "isolated"
    return frozenset(automatic), "automatic"


def owners(guests, cpus):
    """{cpu: [owner, ...]} for each CPU of ``cpus`` a realtime-policy vCPU of a running guest may run on.
    ``guests``: cpu_isolation_facts' ``guests``; an owner is {guest, vcpu, tid, policy, rt_priority}."""
    found = {}
    for guest in guests or []:
        for thread in guest.get("threads") or []:
            if thread.get("role") != "vcpu" or thread.get("policy") not in RT_POLICIES:
                continue
            allowed = thread.get("affinity") or thread.get("cpuset") or ""
            try:
                where = parse_cpulist(allowed)
            except ValueError:
                continue
            for cpu in sorted(where & frozenset(cpus)):
                found.setdefault(cpu, []).append(dict(guest=guest.get("name"), vcpu=thread.get("id"),
                                                      tid=thread.get("tid"), policy=thread.get("policy"),
                                                      rt_priority=thread.get("rt_priority")))
    return found


def plan(cpus, online, guests):
    """What to measure: {measure (frozenset), skipped [{cpu, owners, reason}], main_cpu}.
    ``main_cpu`` (oslat's main thread) is the lowest online CPU outside ``cpus``; None when there is none."""
    owned = owners(guests, cpus)
    skipped = []
    for cpu in sorted(owned):
        names = ", ".join("guest %s vCPU %s (%s, priority %s)" % (o["guest"], o["vcpu"], o["policy"], o["rt_priority"])
                          for o in owned[cpu])
        skipped.append(dict(cpu=cpu, owners=owned[cpu],
                            reason="CPU %d is not measured: it belongs to %s; measuring it would measure the guest"
                                   % (cpu, names)))
    rest = sorted(frozenset(online) - frozenset(cpus))
    return dict(measure=frozenset(cpus) - frozenset(owned), skipped=skipped, main_cpu=rest[0] if rest else None)


def oslat_argv(oslat, measure, main_cpu, duration_s, json_path, rtprio=0, buckets=MAX_BUCKETS):
    """oslat's command line: one busy-loop thread per measured CPU, the main thread off them."""
    argv = [oslat, "--cpu-list", format_cpulist(measure), "--duration", "%d" % duration_s,
            "--bucket-size", "%d" % buckets, "--quiet", "--json=%s" % json_path]
    if main_cpu is not None:
        argv += ["--cpu-main-thread", "%d" % main_cpu]
    if rtprio:
        argv += ["--rtprio", "%d" % rtprio]
    return argv


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LatencyError("oslat's JSON has %s = %r, not a number" % (what, value))
    return value


def parse_oslat_json(text, buckets=MAX_BUCKETS):
    """Per-CPU figures from oslat's --json file (rt-tests 2.x): [{cpu, min_us, avg_us, max_us, duration_s,
    histogram}], ``histogram`` {bucket: count} where bucket k (1-based, 1 us wide) counts latencies below k us and
    the last bucket (``buckets``) everything from ``buckets - 1`` us up."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LatencyError("oslat's JSON output does not parse: %s" % exc) from exc
    threads = data.get("thread") if isinstance(data, dict) else None
    if not isinstance(threads, dict) or not threads:
        raise LatencyError("oslat's JSON output has no 'thread' results (did it run? %s)"
                           % str(text)[:200].replace("\n", " "))
    result = []
    for key in sorted(threads, key=lambda k: int(k) if str(k).isdigit() else 0):
        entry = threads[key]
        if not isinstance(entry, dict):
            raise LatencyError("oslat's JSON thread %s is %r, not an object" % (key, entry))
        histogram = {}
        for bucket, count in (entry.get("histogram") or {}).items():
            try:
                index = int(bucket)
            except ValueError as exc:
                raise LatencyError("oslat's JSON thread %s has a histogram bucket %r" % (key, bucket)) from exc
            histogram[index] = int(_number(count, "thread %s bucket %s" % (key, bucket)))
        result.append(dict(cpu=int(_number(entry.get("cpu"), "thread %s cpu" % key)),
                           min_us=_number(entry.get("min"), "thread %s min" % key),
                           avg_us=round(float(_number(entry.get("avg"), "thread %s avg" % key)), 3),
                           max_us=_number(entry.get("max"), "thread %s max" % key),
                           duration_s=_number(entry.get("duration"), "thread %s duration" % key),
                           histogram=histogram, buckets=buckets))
    return result


def percentile(histogram, maximum, q):
    """The ``q``th percentile (0-100) of a 1 us histogram, as the upper edge of the bucket it falls in (so it
    never understates), never above the measured ``maximum``. None for an empty histogram."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    needed = total * q / 100.0
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= needed:
            return min(bucket, maximum)
    return maximum


def _merge(histograms):
    merged = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[bucket] = merged.get(bucket, 0) + count
    return merged


def verdict(figures, max_latency_us, cpus, skipped, source):
    """The report (what latency_check returns and the role writes as JSON) with ``passed`` and ``msg``."""
    per_cpu = []
    failures = []
    for fig in sorted(figures, key=lambda f: f["cpu"]):
        row = dict(cpu=fig["cpu"], samples=sum(fig["histogram"].values()), min_us=fig["min_us"], avg_us=fig["avg_us"],
                   max_us=fig["max_us"], duration_s=fig["duration_s"])
        for name, q in PERCENTILES:
            row[name] = percentile(fig["histogram"], fig["max_us"], q)
        row["passed"] = fig["max_us"] <= max_latency_us
        per_cpu.append(row)
        if not row["passed"]:
            failures.append("CPU %d: oslat maximum %s us exceeds max_latency_us %s us (99.9th percentile %s us, "
                            "%d samples)" % (row["cpu"], row["max_us"], max_latency_us, row["p99_9_us"], row["samples"]))
    merged = _merge(f["histogram"] for f in figures)
    overall_max = max((f["max_us"] for f in figures), default=None)
    measured = frozenset(row["cpu"] for row in per_cpu)
    if not per_cpu:
        failures.append("no realtime CPU was measured (CPUs %s): %s; stop or move those guests, or run the validation "
                        "inside them" % (format_cpulist(cpus), "; ".join(s["reason"] for s in skipped) or
                                         "oslat reported no CPU"))
    notes = [s["reason"] for s in skipped]
    if failures:
        msg = "latency validation failed: " + "; ".join(failures)
    else:
        msg = "latency validation passed: CPUs %s, maximum %s us <= max_latency_us %s us (99.9th percentile %s us)" % (
            format_cpulist(measured), overall_max, max_latency_us, percentile(merged, overall_max, 99.9))
    if notes:
        msg += "; " + "; ".join(notes)
    # Not "skipped": Ansible takes a true "skipped" in a module's result for a skipped task.
    return dict(
        passed=not failures,
        msg=msg,
        failures=failures,
        tool="oslat",
        cpus=format_cpulist(cpus),
        cpus_source=source,
        measured_cpus=format_cpulist(measured),
        skipped_cpus=skipped,
        max_latency_us=max_latency_us,
        max_us=overall_max,
        p99_9_us=percentile(merged, overall_max, 99.9) if per_cpu else None,
        p99_99_us=percentile(merged, overall_max, 99.99) if per_cpu else None,
        per_cpu=per_cpu,
    )
