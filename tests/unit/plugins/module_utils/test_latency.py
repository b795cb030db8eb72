# -*- coding: utf-8 -*-
"""The latency planner: which CPUs oslat measures, its JSON, the percentiles and the verdict."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils import _latency as lat


def _thread(tid, role, cpus, policy="fifo", vcpu=0, prio=1):
    return {"tid": tid, "comm": "CPU %d/KVM" % vcpu, "role": role, "id": vcpu, "affinity": cpus, "cpuset": cpus,
            "policy": policy, "rt_priority": prio}


def _oslat_json(threads):
    return json.dumps({"file_version": 1, "num_threads": len(threads), "thread": {
        str(i): {"cpu": cpu, "freq": 2597, "min": 1, "avg": 1.0300751, "max": mx, "duration": 2.147,
                 "histogram": {str(k): v for k, v in hist.items()}}
        for i, (cpu, mx, hist) in enumerate(threads)}})


@pytest.mark.parametrize("given_cpus, isolated, automatic, expected", [
    ({3}, {2, 3}, {1}, ({3}, "given")),
    (None, {2, 3}, {1}, ({2, 3}, "isolated")),
    (None, set(), {1}, ({1}, "automatic")),
])
def test_resolve_cpus_prefers_given_then_isolated_then_automatic(given_cpus, isolated, automatic, expected):
    cpus, source = lat.resolve_cpus(frozenset(given_cpus) if given_cpus is not None else None,
                                    frozenset(isolated), frozenset(automatic))
    assert (cpus, source) == (frozenset(expected[0]), expected[1])


def test_plan_skips_cpus_a_fifo_or_rr_vcpu_may_run_on_and_names_the_guest():
    guests = [{"name": "rt1", "threads": [_thread(10, "vcpu", "2"), _thread(11, "emulator", "0", policy="other"),
                                          _thread(12, "kernel_worker", "3", policy="fifo")]},
              {"name": "plain", "threads": [_thread(20, "vcpu", "3", policy="other")]},
              {"name": "rr", "threads": [_thread(30, "vcpu", "4-5", policy="rr", vcpu=1, prio=5)]}]
    todo = lat.plan(frozenset({2, 3, 4}), frozenset(range(6)), guests)
    assert todo["measure"] == frozenset({3}) and todo["main_cpu"] == 0
    assert [(s["cpu"], [o["guest"] for o in s["owners"]]) for s in todo["skipped"]] == [(2, ["rt1"]), (4, ["rr"])]
    assert todo["skipped"][1]["reason"] == ("CPU 4 is not measured: it belongs to guest rr vCPU 1 (rr, priority 5); "
                                            "measuring it would measure the guest")


def test_plan_without_a_housekeeping_cpu_leaves_the_main_thread_to_oslat():
    assert lat.plan(frozenset({0, 1}), frozenset({0, 1}), [])["main_cpu"] is None


def test_oslat_argv_keeps_the_main_thread_off_the_measured_cpus():
    argv = lat.oslat_argv("/usr/bin/oslat", frozenset({2, 3, 5}), 0, 10, "/t/o.json", rtprio=1)
    assert argv == ["/usr/bin/oslat", "--cpu-list", "2-3,5", "--duration", "10", "--bucket-size", "1024", "--quiet",
                    "--json=/t/o.json", "--cpu-main-thread", "0", "--rtprio", "1"]
    assert "--rtprio" not in lat.oslat_argv("oslat", frozenset({1}), None, 1, "j")
    assert "--cpu-main-thread" not in lat.oslat_argv("oslat", frozenset({1}), None, 1, "j")


def test_parse_oslat_json_of_rt_tests_2():
    figures = lat.parse_oslat_json(_oslat_json([(1, 374, {1: 995, 2: 4, 1024: 1}), (3, 2, {1: 10, 2: 1})]))
    assert [(f["cpu"], f["max_us"], f["avg_us"], f["histogram"]) for f in figures] == [
        (1, 374, 1.03, {1: 995, 2: 4, 1024: 1}), (3, 2, 1.03, {1: 10, 2: 1})]


@pytest.mark.parametrize("text, words", [
    ("not json", "does not parse"),
    ("{}", "no 'thread' results"),
    (json.dumps({"thread": {"0": {"cpu": "x", "min": 1, "avg": 1, "max": 1, "duration": 1}}}), "thread 0 cpu"),
    (json.dumps({"thread": {"0": {"cpu": 1, "min": 1, "avg": 1, "max": 1, "duration": 1,
                                  "histogram": {"a": 1}}}}), "histogram bucket 'a'"),
    (json.dumps({"thread": {"0": 5}}), "not an object"),
])
def test_parse_oslat_json_names_what_is_wrong(text, words):
    with pytest.raises(lat.LatencyError, match=words):
        lat.parse_oslat_json(text)


def test_percentile_is_the_bucket_upper_edge_capped_by_the_maximum():
    histogram = {1: 9990, 2: 9, 1024: 1}
    assert lat.percentile(histogram, 5000, 99.0) == 1
    assert lat.percentile(histogram, 5000, 99.95) == 2
    assert lat.percentile(histogram, 5000, 100) == 1024
    assert lat.percentile({1: 10, 7: 1}, 5, 100) == 5
    assert lat.percentile({}, 5, 99.9) is None


@given(st.dictionaries(st.integers(1, 1024), st.integers(0, 10 ** 6), min_size=1), st.integers(1, 10 ** 6))
def test_percentiles_are_ordered_and_never_above_the_maximum(histogram, maximum):
    if not sum(histogram.values()):
        return
    values = [lat.percentile(histogram, maximum, q) for q in (50, 99, 99.9, 99.99, 100)]
    assert values == sorted(values) and values[-1] <= maximum


def test_verdict_names_each_cpu_above_the_threshold_with_its_maximum():
    figures = lat.parse_oslat_json(_oslat_json([(1, 374, {1: 995, 2: 4, 1024: 1}), (3, 2, {1: 10, 2: 1})]))
    report = lat.verdict(figures, 40, frozenset({1, 2, 3}), [{"cpu": 2, "owners": [], "reason": "CPU 2 is not measured"}],
                         "isolated")
    assert report["passed"] is False
    assert report["failures"] == ["CPU 1: oslat maximum 374 us exceeds max_latency_us 40 us (99.9th percentile 2 us, "
                                  "1000 samples)"]
    assert report["msg"].startswith("latency validation failed: CPU 1: oslat maximum 374 us exceeds max_latency_us 40")
    assert report["msg"].endswith("; CPU 2 is not measured")
    assert (report["cpus"], report["measured_cpus"], report["max_us"]) == ("1-3", "1,3", 374)
    assert [(r["cpu"], r["passed"], r["p99_us"], r["samples"]) for r in report["per_cpu"]] == [(1, False, 1, 1000),
                                                                                               (3, True, 2, 11)]
    assert report["skipped_cpus"][0]["cpu"] == 2 and "skipped" not in report


def test_verdict_passes_at_the_threshold_and_fails_when_nothing_was_measured():
    figures = lat.parse_oslat_json(_oslat_json([(3, 40, {1: 10, 40: 1})]))
    assert lat.verdict(figures, 40, frozenset({3}), [], "given")["passed"] is True
    nothing = lat.verdict([], 40, frozenset({2}), [{"cpu": 2, "owners": [], "reason": "CPU 2 belongs to rt1"}], "given")
    assert nothing["passed"] is False and nothing["max_us"] is None and nothing["p99_9_us"] is None
    assert nothing["failures"] == ["no realtime CPU was measured (CPUs 2): CPU 2 belongs to rt1; stop or move those "
                                   "guests, or run the validation inside them"]
