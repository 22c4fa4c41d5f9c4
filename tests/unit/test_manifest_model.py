"""The model: defaults as Nomad, restart merging, equality as "same spec", JSON round trip, examples."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

import manifests
from manifests.capabilities import CAPABILITIES, expand_caps, normalize_cap
from manifests.durations import format_duration, parse_duration
from manifests.frozendict import FrozenDict
from manifests import sharing
from manifests.loader import load_file, load_text
from manifests.model import Job, RestartPolicy
from manifests.signals import normalize_signal

EXAMPLES = Path(manifests.__file__).parent / "examples"
YAML_EXAMPLES = EXAMPLES / "yaml"  # twins of the HCL files, kept apart so the daemon does not see each job twice
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.hcl"))

MINIMAL = 'job "j" {{\n {job}\n group "g" {{\n  {group}\n  task "t" {{\n   driver = "raw_exec"\n' \
          '   config {{ command = "x" }}\n   {task}\n  }}\n }}\n}}\n'


def task_of(job="", group="", task=""):
    result = load_text(MINIMAL.format(job=job, group=group, task=task), "m.hcl")
    assert result.valid, result.errors
    return result.jobs[0].groups[0].tasks[0], result.jobs[0].groups[0]


def test_defaults_are_nomads():
    task, group = task_of()
    assert task.kill_timeout == 5.0 and task.kill_signal == "SIGINT"
    assert (task.logs.max_files, task.logs.max_file_size, task.logs.disabled) == (10, 10, False)
    assert (task.resources.cpu, task.resources.cores, task.resources.memory, task.resources.memory_max) == (
        100, None, 300, 0)
    assert task.restart == RestartPolicy(attempts=2, interval=1800.0, delay=15.0, mode="fail")
    assert group.count == 1 and group.network.mode == "host" and group.restart is None


def test_batch_restart_defaults():
    task, _ = task_of(job='type = "batch"')
    assert task.restart == RestartPolicy(attempts=3, interval=86400.0, delay=15.0, mode="fail")


def test_restart_merges_field_by_field_job_type_then_group_then_task():
    task, group = task_of(
        job='type = "batch"',
        group='restart {\n attempts = 5\n delay = "1m"\n}',
        task='restart {\n delay = "30s"\n mode = "delay"\n}',
    )
    assert group.restart == RestartPolicy(attempts=5, interval=86400.0, delay=60.0, mode="fail")
    assert task.restart == RestartPolicy(attempts=5, interval=86400.0, delay=30.0, mode="delay")


def test_effective_restart_is_validated_where_the_task_overrides():
    # Each block alone is fine; together 10 x 1m exceeds the 5m interval.
    result = load_text(MINIMAL.format(job="", group='restart {\n attempts = 10\n interval = "5m"\n delay = "1s"\n}',
                                      task='restart { delay = "1m" }'), "m.hcl")
    (err,) = result.errors
    assert err.where == 'job "j" > group "g" > task "t" > restart.delay'


def test_cores_clear_cpu():
    task, _ = task_of(task="resources { cores = 2 }")
    assert (task.resources.cpu, task.resources.cores) == (None, 2)


def test_names_are_normalized():
    task, _ = task_of(task='kill_signal = "term"')
    assert task.kill_signal == "SIGTERM"
    result = load_text('task "t" {\n driver = "exec"\n config {\n  command = "x"\n  cap_add = ["net_raw", "ALL"]\n'
                       '  cap_drop = ["Cap_Chown"]\n }\n}\n', "c.hcl")
    cfg = result.jobs[0].groups[0].tasks[0].config
    assert cfg.cap_add == ("CAP_NET_RAW", "all") and cfg.cap_drop == ("CAP_CHOWN",)


def test_equal_specs_compare_equal_regardless_of_key_order_and_spelling():
    a, _ = task_of(task='env {\n A = "1"\n B = "2"\n}\nkill_timeout = "60s"')
    b, _ = task_of(task='env = { B = "2", A = 1 }\nkill_timeout = "1m"')
    c, _ = task_of(task='env = { B = "2", A = "3" }')
    assert a == b and hash(a) == hash(b)
    assert a != c


def test_json_round_trip_is_exact():
    for name in EXAMPLE_NAMES:
        (job,) = load_file(EXAMPLES / f"{name}.hcl").jobs
        data = json.loads(json.dumps(job.to_dict()))
        assert Job.from_dict(data) == job


def test_models_are_frozen():
    task, _ = task_of()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.env["A"] = "1"  # type: ignore[index]


def test_every_example_exists_in_both_forms_and_loads_equal():
    assert {"sleep-exec", "http-exec2", "raw-exec-unlimited"} <= set(EXAMPLE_NAMES)
    for name in EXAMPLE_NAMES:
        hcl, yml = load_file(EXAMPLES / f"{name}.hcl"), load_file(YAML_EXAMPLES / f"{name}.yaml")
        assert hcl.valid and yml.valid, (name, hcl.errors, yml.errors)
        assert not hcl.warnings and not yml.warnings
        strip = [dataclasses.replace(j, source=None) for j in hcl.jobs]
        assert strip == [dataclasses.replace(j, source=None) for j in yml.jobs], name


def test_examples_cover_every_driver_and_the_documented_shapes():
    tasks = {name: load_file(EXAMPLES / f"{name}.hcl").jobs[0].groups[0].tasks[0] for name in EXAMPLE_NAMES}
    assert {t.driver for t in tasks.values()} == {"raw_exec", "exec", "exec2"}
    assert tasks["sleep-exec"].config.command == "/bin/sleep"
    http = tasks["http-exec2"].config
    assert http.args == ("-m", "http.server", "8080", "--directory", "${NOMAD_TASK_DIR}")
    assert http.unveil == ("r:/etc/mime.types",)
    assert tasks["raw-exec-unlimited"].resources.memory_max == -1


@pytest.mark.parametrize(
    "text,seconds",
    [("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("2.5s", 2.5), ("0", 0.0), ("1h2m3s", 3723.0),
     ("100us", 1e-4), ("-5s", -5.0)],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1m 30s", "abc", "1.2.3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_reads_like_go():
    assert [format_duration(s) for s in (0, 0.25, 90, 3600, 86400)] == ["0s", "250ms", "1m30s", "1h", "24h"]


def test_signal_and_capability_tables():
    assert normalize_signal("usr1") == normalize_signal("SIGUSR1") == "SIGUSR1"
    with pytest.raises(ValueError):
        normalize_signal("SIGNOPE")
    assert len(CAPABILITIES) == 41 and CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITIES.values()) == list(range(41))
    assert normalize_cap("sys_admin") == "CAP_SYS_ADMIN" and normalize_cap("All") == "all"
    assert expand_caps(["all"]) == frozenset(CAPABILITIES)
    with pytest.raises(ValueError):
        normalize_cap("CAP_")


def test_frozendict_is_a_hashable_sorted_mapping():
    a, b = FrozenDict({"b": "2", "a": "1"}), FrozenDict(a="1", b="2")
    assert a == b and hash(a) == hash(b) and list(a) == ["a", "b"]
    assert a == {"a": "1", "b": "2"} and a.to_dict() == {"a": "1", "b": "2"}
    assert {a: 1}[b] == 1


def test_equal_spec_values_from_different_manifests_are_one_object():
    a, ga = task_of(group='restart { delay = "0s" }\n meta { team = "x" }', task="resources { memory = 64 }")
    b, gb = task_of(group='restart { delay = "0s" }\n meta { team = "x" }', task="resources { memory = 64 }")
    assert a.restart is b.restart and a.resources is b.resources and a.logs is b.logs
    assert ga.meta is gb.meta and ga.network is gb.network
    c, _ = task_of(task="resources { memory = 65 }")
    assert c.resources is not a.resources and c.resources.memory == 65


def test_jobs_decoded_from_the_store_share_equal_values_as_parsed_ones_do():
    # A re-adopting daemon builds every job from its stored JSON: without sharing it held 2.9 MB more at 1000 tasks.
    a, ga = task_of(group='restart { delay = "0s" }\n meta { team = "x" }', task="resources { memory = 64 }")
    job = Job.from_dict(json.loads(json.dumps(load_text(
        'job "web" {\n group "g" {\n restart { delay = "0s" }\n meta { team = "x" }\n task "t" {\n'
        ' driver = "raw_exec"\n config { command = "/bin/sleep" }\n resources { memory = 64 }\n }\n }\n}\n',
        "web.hcl").jobs[0].to_dict())))
    [group] = job.groups
    [task] = group.tasks
    assert task.restart is a.restart and task.resources is a.resources and task.logs is a.logs
    assert group.meta is ga.meta and group.network is ga.network
    assert task.driver is a.driver and task.config.command is sys.intern("/bin/sleep")  # short strings interned
    assert job == Job.from_dict(job.to_dict())  # the round trip stays exact


def test_values_that_are_equal_but_typed_differently_are_not_shared():
    one, other = RestartPolicy(2, 1800, 15.0, "fail"), RestartPolicy(2, 1800.0, 15.0, "fail")
    assert one == other  # as dataclasses; their JSON (and so the spec hash) differs
    a, b = sharing.shared(one), sharing.shared(other)
    assert a is not b and type(a.interval) is int and type(b.interval) is float


def test_the_sharing_table_stays_bounded():
    for i in range(sharing._SHARED_MAX * 3):
        sharing.shared(FrozenDict(k=str(i)))
    assert 0 < len(sharing._SHARED) <= sharing._SHARED_MAX


def test_task_json_is_written_when_the_spec_changes_and_kept_by_row_updates(tmp_path):
    from controller.store import Store

    s = Store(tmp_path)
    row = {"task_id": "j/g/0/t", "job": "j", "grp": "g", "idx": 0, "task": "t", "driver": "raw_exec",
           "manifest": "m.hcl", "state": "running"}
    s.put_task(row)
    s.put_task_json("j/g/0/t", '{"name": "t"}')
    s.put_task(dict(row, state="restarting"))  # the row without task_json leaves it as it was
    s.commit()
    assert s.task_json("j/g/0/t") == '{"name": "t"}' and s.tasks()["j/g/0/t"]["state"] == "restarting"
    s.close()
