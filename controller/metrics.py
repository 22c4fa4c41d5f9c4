"""Prometheus text exposition of tasks and of the controller itself."""
from __future__ import annotations

import bisect
import functools
import threading
import time

from reconcilers.states import TaskState


# Reconcile passes are pure planning plus dispatch to workers: sub-millisecond normally, so the buckets start low.
RECONCILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DurationHistogram:
    """Cumulative-bucket histogram kept by hand: observed on the loop thread, read by the API thread."""

    def __init__(self, buckets: tuple[float, ...] = RECONCILE_BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], counts):
            acc += n
            out.append((bound, acc))
        return out, total


def instrument(ctl) -> DurationHistogram:
    """Time every reconcile pass into a histogram on `ctl`. Wraps the instance's method (once) so the loop's
    own code stays free of metrics plumbing."""
    hist = getattr(ctl, "reconcile_histogram", None)
    if hist is not None:
        return hist
    hist = DurationHistogram()
    inner = ctl.reconcile

    @functools.wraps(inner)
    def timed(*args, **kwargs) -> None:
        t0 = time.perf_counter()
        try:
            inner(*args, **kwargs)
        finally:
            hist.observe(time.perf_counter() - t0)

    ctl.reconcile = timed
    ctl.reconcile_histogram = hist
    return hist


class Family:
    """One metric family of the text exposition format (what prometheus_client calls a MetricFamily)."""

    def __init__(self, name: str, help_: str, kind: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.kind, self.labels = name, help_, kind, labels
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, label_values: list[str], value: float, suffix: str = "", extra: dict[str, str] | None = None):
        labels = dict(zip(self.labels, label_values))
        if extra:
            labels.update(extra)
        if self.kind == "counter" and not suffix:
            suffix = "_total"
        self.samples.append((self.name + suffix, labels, value))
        return self

    def render(self) -> str:
        help_ = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        # As prometheus_client writes the 0.0.4 format: a counter's family is named after its `_total` sample.
        head = self.name + "_total" if self.kind == "counter" else self.name
        out = [f"# HELP {head} {help_}\n# TYPE {head} {self.kind}\n"]
        for name, labels, value in self.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{name}{{{inner}}} {_number(value)}\n")
            else:
                out.append(f"{name} {_number(value)}\n")
        return "".join(out)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    v = float(value)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def families(ctl) -> list[Family]:
    snap = ctl.call(lambda: [(tid, r.state.value, r.restarts, r.driver, bool(r.exit and r.exit.get("oom_killed")))
                             for tid, r in sorted(ctl.records.items())])
    stats = {s["id"]: s for s in ctl.stats_snapshot()}
    labels = ("task", "driver")
    cpu = Family("tasksd_task_cpu_seconds", "CPU time used by the task's cgroup", "counter", labels)
    mem = Family("tasksd_task_memory_bytes", "Memory used by the task's cgroup now", "gauge", labels)
    peak = Family("tasksd_task_memory_peak_bytes", "Peak memory of the task's cgroup", "gauge", labels)
    pids = Family("tasksd_task_pids", "Processes in the task's cgroup", "gauge", labels)
    restarts = Family("tasksd_task_restarts", "Restarts by policy", "counter", labels)
    ooms = Family("tasksd_task_oom_kills", "OOM kills seen in the task's cgroup", "counter", labels)
    state = Family("tasksd_task_state", "1 for the task's current state", "gauge", (*labels, "state"))
    for tid, st, n, driver, oom in snap:
        lv = [tid, driver]
        restarts.add(lv, n)
        for s in TaskState:
            state.add(lv + [s.value], 1.0 if s.value == st else 0.0)
        s = stats.get(tid)
        if s:
            if s.get("cpu_usage_ns") is not None:
                cpu.add(lv, s["cpu_usage_ns"] / 1e9)
            if s.get("memory_current") is not None:
                mem.add(lv, s["memory_current"])
            if s.get("memory_peak") is not None:
                peak.add(lv, s["memory_peak"])
            if s.get("pids") is not None:
                pids.add(lv, s["pids"])
            ooms.add(lv, s.get("oom_kills") or 0)
        else:
            ooms.add(lv, 1 if oom else 0)
    out = [cpu, mem, peak, pids, restarts, ooms, state]
    m = ctl.metrics
    hist = getattr(ctl, "reconcile_histogram", None)
    if hist is not None:
        buckets, total = hist.snapshot()
        h = Family("tasksd_reconcile_duration_seconds", "Duration of reconcile passes", "histogram")
        for bound, count in buckets:
            h.add([], count, "_bucket", {"le": bound})
        h.add([], buckets[-1][1], "_count").add([], total, "_sum")
        out.append(h)
    out.append(Family("tasksd_watch_events", "Wake-ups from the directory watch", "counter").add([], m["watch_events"]))
    out.append(Family("tasksd_memory_trims", "Freed heap given back to the kernel after a burst of work",
                      "counter").add([], m.get("memory_trims", 0)))
    out.append(Family("tasksd_queue_depth", "Events waiting for the reconcile loop", "gauge").add([], ctl.queue.qsize()))
    out.append(Family("tasksd_event_followers", "Event streams open now (GET /v1/events?follow=1, tasksctl events -f)",
                      "gauge").add([], len(ctl.listeners)))
    man = ctl.call(lambda: [m.status for m in ctl.manifests.values()])
    g = Family("tasksd_manifests", "Manifests by status", "gauge", ("status",))
    for status in ("applied", "rejected", "duplicate"):
        g.add([status], sum(1 for x in man if x == status))
    out.append(g)
    return out


def render(ctl) -> str:
    """The Prometheus text format (0.0.4). Written here rather than with prometheus_client, whose import alone
    cost the daemon several MB for a page scraped now and then; the tests check this output with its parser."""
    return "".join(f.render() for f in families(ctl))
