"""Prometheus text exposition of tasks and of the controller itself (prometheus_client's format and escaping)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from reconcilers.states import TaskState


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
        yield CounterMetricFamily("tasksd_reconciles", "Reconcile passes", value=m["reconciles"])
        yield CounterMetricFamily("tasksd_reconcile_seconds", "Time spent reconciling", value=m["reconcile_seconds"])
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
