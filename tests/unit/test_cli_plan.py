"""Pure parts of tasksctl: plan's diff, cpu % from two samples, event lines, exec protocol checks."""
from __future__ import annotations

import pytest

from controller.cli import changed_fields, compute_plan, cpu_percent, format_event
from controller.exec_proto import ExecProtocolError, exec_socket_path, exit_status, validate_request
from manifests.loader import load_text

HCL = '''job "%s" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args = ["%s"]
      }
    }
  }
}
'''


def jobs(name: str, arg: str = "1") -> list:
    r = load_text(HCL % (name, arg), f"{name}.hcl")
    assert r.valid, r.errors
    return list(r.jobs)


def running(name: str, arg: str = "1", state: str = "running") -> dict:
    from reconcilers.desired import desired_tasks

    js = jobs(name, arg)
    d = desired_tasks({"x": js})[f"{name}/g/0/t"]
    return {"state": state, "spec_hash": d.spec_hash, "manifest": f"/etc/tasks.d/{name}.hcl",
            "task": js[0].groups[0].tasks[0].to_dict()}


def test_plan_actions_and_fields():
    plan = {c["id"]: c for c in compute_plan(
        {"a.hcl": jobs("a"), "b.hcl": jobs("b", "2"), "new.hcl": jobs("new")},
        {"a/g/0/t": running("a"), "b/g/0/t": running("b"), "gone/g/0/t": running("gone"),
         "done/g/0/t": running("done", state="complete")})}
    assert plan["a/g/0/t"] == {"id": "a/g/0/t", "action": "unchanged", "fields": []}
    assert plan["b/g/0/t"]["action"] == "update" and plan["b/g/0/t"]["fields"] == ["config.args"]
    assert plan["new/g/0/t"]["action"] == "create"
    assert plan["gone/g/0/t"]["action"] == "stop"
    assert "done/g/0/t" not in plan  # finished and no longer wanted: nothing to do


def test_changed_fields_sees_added_and_removed_keys():
    assert changed_fields({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == ["b.c", "d"]
    assert changed_fields({"a": 1}, {}) == ["a"]


def test_cpu_percent_from_two_samples():
    a = {"cpu_usage_ns": 1_000_000_000, "sampled_at": 10.0}
    b = {"cpu_usage_ns": 1_500_000_000, "sampled_at": 11.0}
    assert cpu_percent(a, b) == 50.0
    assert cpu_percent(b, a) is None  # a restarted cgroup (counter went down) has no rate
    assert cpu_percent({"cpu_usage_ns": None, "sampled_at": 1}, b) is None


def test_event_line_names_its_subject():
    line = format_event({"ts": 0, "type": "manifest_rejected", "task_id": None, "manifest": "/x.hcl",
                         "message": "bad"})
    assert "manifest_rejected" in line and "/x.hcl: bad" in line


def test_exec_protocol_checks():
    assert exec_socket_path("/run/tasksd/tasksd.sock") == "/run/tasksd/tasksd-exec.sock"
    assert exec_socket_path("/tmp/api") == "/tmp/api.exec"
    validate_request({"v": 1, "task": "t", "argv": ["sh"], "tty": True}, 3)
    for bad, n in (([], 3), ({"v": 2, "task": "t", "argv": ["sh"]}, 3), ({"v": 1, "task": "t", "argv": []}, 3),
                   ({"v": 1, "task": "t", "argv": ["sh"]}, 1), ({"v": 1, "argv": ["sh"]}, 3),
                   ({"v": 1, "task": "t", "argv": ["a\0b"]}, 3)):
        with pytest.raises(ExecProtocolError):
            validate_request(bad, n)
    assert exit_status({"exit_code": 3, "signal": None}) == 3
    assert exit_status({"exit_code": None, "signal": 15}) == 143
