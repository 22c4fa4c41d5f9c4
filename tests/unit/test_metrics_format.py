"""Our Prometheus text exposition, read back by prometheus_client's own parser (a test dependency only)."""
from __future__ import annotations

import queue
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import DurationHistogram, Family, render
from reconcilers.states import TaskState


def parse(text: str) -> dict[str, list]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_labels_help_and_values_survive_a_round_trip_through_the_reference_parser():
    fam = Family("x_things", 'help with a \\ backslash\nand a newline', "counter", ("task", "driver"))
    fam.add(['we"ird\\id\nline', "raw_exec"], 3)
    fam.add(["plain", "exec"], 0.25)
    g = Family("x_level", "a gauge", "gauge").add([], float("inf"))
    families = parse(fam.render() + g.render())
    things = families["x_things"]
    assert things.type == "counter" and things.documentation == "help with a \\ backslash\nand a newline"
    got = {(s.labels["task"], s.labels["driver"]): (s.name, s.value) for s in things.samples}
    assert got == {('we"ird\\id\nline', "raw_exec"): ("x_things_total", 3.0), ("plain", "exec"): ("x_things_total", 0.25)}
    assert families["x_level"].samples[0].value == float("inf")


def test_the_daemons_page_parses_with_every_family_and_the_histogram():
    rec = SimpleNamespace(state=TaskState.RUNNING, restarts=2, driver="raw_exec", exit=None)
    hist = DurationHistogram()
    for seconds in (0.0001, 0.003, 0.2, 9.0):
        hist.observe(seconds)
    ctl = SimpleNamespace(
        call=lambda fn, timeout=None: fn(), records={"web/g/0/t": rec},
        stats_snapshot=lambda: [{"id": "web/g/0/t", "cpu_usage_ns": 1_500_000_000, "memory_current": 4096,
                                 "memory_peak": 8192, "pids": 3, "oom_kills": 1}],
        metrics={"watch_events": 7}, queue=queue.Queue(), reconcile_histogram=hist, listeners=[print, print],
        manifests={"/a.hcl": SimpleNamespace(status="applied"), "/b.hcl": SimpleNamespace(status="rejected")})
    families = parse(render(ctl))
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    task = (("driver", "raw_exec"), ("task", "web/g/0/t"))
    assert value[("tasksd_task_cpu_seconds_total", task)] == 1.5
    assert value[("tasksd_task_memory_bytes", task)] == 4096
    assert value[("tasksd_task_restarts_total", task)] == 2
    assert value[("tasksd_task_oom_kills_total", task)] == 1
    assert value[("tasksd_task_state", (("driver", "raw_exec"), ("state", "running"), ("task", "web/g/0/t")))] == 1
    assert value[("tasksd_task_state", (("driver", "raw_exec"), ("state", "failed"), ("task", "web/g/0/t")))] == 0
    assert value[("tasksd_reconcile_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert value[("tasksd_reconcile_duration_seconds_bucket", (("le", "0.005"),))] == 2
    assert value[("tasksd_reconcile_duration_seconds_count", ())] == 4
    assert abs(value[("tasksd_reconcile_duration_seconds_sum", ())] - 9.2031) < 1e-9
    assert value[("tasksd_watch_events_total", ())] == 7
    assert value[("tasksd_event_followers", ())] == 2
    assert value[("tasksd_manifests", (("status", "rejected"),))] == 1
    assert families["tasksd_reconcile_duration_seconds"].type == "histogram"
