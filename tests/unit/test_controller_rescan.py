"""The controller's view of the tasks directory, with a fake clock and no kernel: the rescan/desired-state part
only (no task is started, so the runtime and drivers are stand-ins that would fail if touched)."""
from __future__ import annotations

import os
from types import SimpleNamespace

from controller.controller import REMOVAL_GRACE, Controller
from controller.store import Store
from manifests.agent_config import AgentConfig

JOB = ('job "web" {\n group "g" {\n task "t" {\n driver = "raw_exec"\n config {\n command = "/bin/sleep"\n'
       ' args = ["1"]\n }\n }\n }\n}\n')


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(tmp):
    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    clock = Clock()
    runtime = SimpleNamespace(on_exit=None)  # never used by rescans
    ctl = Controller(AgentConfig(), str(tasks), Store(tmp / "state"), runtime, {}, clock=clock)
    return ctl, tasks, clock


def test_a_manifest_absent_for_less_than_the_grace_keeps_its_tasks(tmp):
    ctl, tasks, clock = controller(tmp)
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired
    os.rename(tasks / "web.hcl", tasks / "web.hcl~")  # an editor's save: the old file goes away first...
    clock.now += 0.01
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired  # ...which must not stop anything yet
    (tasks / "web.hcl").write_text(JOB)  # ...and the new file arrives
    clock.now += 0.01
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired
    assert not [e for e in ctl.store.events() if e["type"] == "manifest_removed"]
    ctl.store.close()


def test_a_manifest_absent_for_longer_than_the_grace_stops_its_tasks(tmp):
    ctl, tasks, clock = controller(tmp)
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    (tasks / "web.hcl").unlink()
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired and ctl._rescan_at == clock.now + REMOVAL_GRACE  # a rescan is scheduled
    clock.now += REMOVAL_GRACE
    ctl.rescan()
    assert "web/g/0/t" not in ctl.desired
    assert [e for e in ctl.store.events() if e["type"] == "manifest_removed"]
    ctl.store.close()
