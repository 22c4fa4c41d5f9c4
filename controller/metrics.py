"""Prometheus text exposition of tasks and of the controller itself (prometheus_client's format and escaping)."""
from __future__ import annotations

import bisect
import functools
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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


class _Collector:
    def __init__(self, ctl):
        self.ctl = ctl

    def collect(self):
        ctl = self.ctl
        snap = ctl.call(lambda: [(tid, r.state.value, r.restarts, r.driver, bool(r.exit and r.exit.get("oom_killed")))
                                 for tid, r in sorted(ctl.records.items())])
        stats = {s["id"]: s for s in ctl.stats_snapshot()}
        labels = ["task", "driver"]
        cpu = CounterMetricFamily("tasksd_task_cpu_seconds", "CPU time used by the task's cgroup", labels=labels)
        mem = GaugeMetricFamily("tasksd_task_memory_bytes", "Memory used by the task's cgroup now", labels=labels)
        peak = GaugeMetricFamily("tasksd_task_memory_peak_bytes", "Peak memory of the task's cgroup", labels=labels)
        pids = GaugeMetricFamily("tasksd_task_pids", "Processes in the task's cgroup", labels=labels)
        restarts = CounterMetricFamily("tasksd_task_restarts", "Restarts by policy", labels=labels)
        ooms = CounterMetricFamily("tasksd_task_oom_kills", "OOM kills seen in the task's cgroup", labels=labels)
        state = GaugeMetricFamily("tasksd_task_state", "1 for the task's current state", labels=labels + ["state"])
        for tid, st, n, driver, oom in snap:
            lv = [tid, driver]
            restarts.add_metric(lv, n)
            for s in TaskState:
                state.add_metric(lv + [s.value], 1.0 if s.value == st else 0.0)
            s = stats.get(tid)
            if s:
                if s.get("cpu_usage_ns") is not None:
                    cpu.add_metric(lv, s["cpu_usage_ns"] / 1e9)
                if s.get("memory_current") is not None:
                    mem.add_metric(lv, s["memory_current"])
                if s.get("memory_peak") is not None:
                    peak.add_metric(lv, s["memory_peak"])
                if s.get("pids") is not None:
                    pids.add_metric(lv, s["pids"])
                ooms.add_metric(lv, s.get("oom_kills") or 0)
            else:
                ooms.add_metric(lv, 1 if oom else 0)
        yield from (cpu, mem, peak, pids, restarts, ooms, state)
        m = ctl.metrics
        hist = getattr(ctl, "reconcile_histogram", None)
        if hist is not None:
            buckets, total = hist.snapshot()
            yield HistogramMetricFamily("tasksd_reconcile_duration_seconds", "Duration of reconcile passes",
                                        buckets=buckets, sum_value=total)
        yield CounterMetricFamily("tasksd_watch_events", "Wake-ups from the directory watch", value=m["watch_events"])
        yield GaugeMetricFamily("tasksd_queue_depth", "Events waiting for the reconcile loop", value=ctl.queue.qsize())
        man = ctl.call(lambda: [m.status for m in ctl.manifests.values()])
        g = GaugeMetricFamily("tasksd_manifests", "Manifests by status", labels=["status"])
        for status in ("applied", "rejected", "duplicate"):
            g.add_metric([status], sum(1 for x in man if x == status))
        yield g


def render(ctl) -> str:
    reg = CollectorRegistry()
    reg.register(_Collector(ctl))
    return generate_latest(reg).decode()
