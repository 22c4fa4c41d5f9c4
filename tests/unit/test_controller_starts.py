"""How the controller hands starts to its workers: at most MAX_STARTS_IN_FLIGHT at once, the rest re-planned as
slots free up, each start's key on disk before the driver runs. The driver is a stand-in that holds every start
until the test lets it go (real spawns finish too fast to catch a converge half-way); the store is the real one."""
from __future__ import annotations

import os
import threading
from types import SimpleNamespace

from controller.controller import MAX_STARTS_IN_FLIGHT, REMOVAL_GRACE, Controller
from controller.store import Store
from isolation.drivers.base import TaskHandle
from manifests.agent_config import AgentConfig
from reconcilers.states import TaskState
from tests.helpers import Clock, pump_until

N = MAX_STARTS_IN_FLIGHT + 8


def job(name: str) -> str:
    return (f'job "{name}" {{\n group "g" {{\n task "t" {{\n driver = "raw_exec"\n config {{\n'
            f' command = "/bin/sleep"\n args = ["1"]\n }}\n }}\n }}\n}}\n')


class GateDriver:
    """Starts wait for `gate`; each checks, through its own read-only store connection, that the controller
    committed its key before calling it (the rule that makes a crash unable to duplicate a task)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.gate = threading.Event()
        self.started: list[str] = []
        self.unstored: list[str] = []
        self.lock = threading.Lock()

    def start(self, ctx) -> TaskHandle:
        reader = Store(self.state_dir, readonly=True)
        try:
            row = reader.tasks().get(ctx.task_id)
        finally:
            reader.close()
        with self.lock:
            if row is None or row["pending_key"] != ctx.key:
                self.unstored.append(ctx.task_id)
            self.started.append(ctx.task_id)
        assert self.gate.wait(30)
        return TaskHandle(key=ctx.key, task_id=ctx.task_id, driver="raw_exec", pid=1, start_time=1, boot_id="b",
                          cgroup="c", alloc_id=ctx.alloc_id, alloc_dir="/nonexistent", task_dir="/nonexistent/t",
                          started_at=1000.0)


def setup(tmp):
    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    for i in range(N):
        (tasks / f"j{i:02d}.hcl").write_text(job(f"j{i:02d}"))
    driver = GateDriver(tmp / "state")
    runtime = SimpleNamespace(on_exit=None, registered=lambda key: None, result=lambda key: None)
    clock = Clock()
    ctl = Controller(AgentConfig(), str(tasks), Store(tmp / "state"), runtime, {"raw_exec": driver}, clock=clock)
    return ctl, tasks, driver, clock


def running(ctl) -> set[str]:
    return {tid for tid, r in ctl.records.items() if r.state == TaskState.RUNNING}


def test_starts_past_the_cap_wait_for_a_slot_and_all_run(tmp):
    ctl, _, driver, _ = setup(tmp)
    try:
        ctl.rescan()
        ctl.reconcile(full=True)
        assert ctl._starting == MAX_STARTS_IN_FLIGHT
        assert len(ctl._deferred) == N - MAX_STARTS_IN_FLIGHT
        states = [r.state for r in ctl.records.values()]
        assert len(states) == N  # the deferred ones are listed, as pending (stored too: status works offline)
        assert states.count(TaskState.STARTING) == MAX_STARTS_IN_FLIGHT
        assert states.count(TaskState.PENDING) == N - MAX_STARTS_IN_FLIGHT
        ctl.flush_store()
        assert sum(r["state"] == "pending" for r in ctl.store.tasks().values()) == N - MAX_STARTS_IN_FLIGHT
        driver.gate.set()
        pump_until(ctl, lambda: len(running(ctl)) == N and ctl._starting == 0)
        assert sorted(driver.started) == sorted(ctl.desired.keys()) and len(driver.started) == N  # once each
        assert driver.unstored == []
        assert not ctl._deferred
    finally:
        driver.gate.set()
        ctl.pool.shutdown(wait=True)
        ctl.store.close()


def test_a_deferred_start_is_planned_again_so_a_job_removed_meanwhile_never_starts(tmp):
    ctl, tasks, driver, clock = setup(tmp)
    try:
        ctl.rescan()
        ctl.reconcile(full=True)
        waiting = sorted(a.split("/")[0] for a in ctl._deferred)
        gone = waiting[:3]
        for name in gone:
            (tasks / f"{name}.hcl").unlink()
        ctl.rescan()
        clock.now += REMOVAL_GRACE  # a removal counts once the file stayed away this long (editor saves)
        ctl.rescan()
        ctl.reconcile()
        driver.gate.set()
        pump_until(ctl, lambda: len(running(ctl)) == N - len(gone) and ctl._starting == 0)
        assert not {t for t in driver.started if t.split("/")[0] in gone}
        assert not {t for t in ctl.records if t.split("/")[0] in gone}  # their pending records are dropped
        assert not ctl._deferred
    finally:
        driver.gate.set()
        ctl.pool.shutdown(wait=True)
        ctl.store.close()
