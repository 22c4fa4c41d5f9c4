"""What the controller does around the launcher's respawns (isolation/launcher.c): which starts it arms, and how it
takes in a run the launcher started on its own. The driver and runtime are stand-ins (the kernel side is
tests/kernel/test_respawn.py and the daemon's e2e tests); the store is the real one, so the test can check that the
launcher hears "arm" and "ack" only once the new run's handle is committed."""
from __future__ import annotations

import dataclasses
import json
import os

from controller.controller import Controller
from controller.store import Store
from isolation.drivers.base import ExitResult, TaskHandle, respawn_key
from manifests.agent_config import AgentConfig
from reconcilers.states import TaskState
from tests.helpers import Clock, pump_until, wait_for

TID = "web/g/0/t"


def job(delay: str = "0s", attempts: int = 2, extra: str = "") -> str:
    return (f'job "web" {{\n group "g" {{\n task "t" {{\n driver = "raw_exec"\n config {{\n'
            f' command = "/bin/sleep"\n args = ["1000"]\n }}\n restart {{\n attempts = {attempts}\n'
            f' delay = "{delay}"\n interval = "1h"\n mode = "fail"\n }}\n {extra}\n }}\n }}\n}}\n')


class Driver:
    def __init__(self):
        self.contexts = []

    def start(self, ctx) -> TaskHandle:
        self.contexts.append(ctx)
        return TaskHandle(key=ctx.key, task_id=ctx.task_id, driver="raw_exec", pid=100, start_time=1, boot_id="b",
                          cgroup="c", alloc_id=ctx.alloc_id, alloc_dir="/nonexistent", task_dir="/nonexistent/t",
                          started_at=1000.0, armed=ctx.arm, exec_env={"spec": {"path": "/bin/sleep"}})

    def left_nothing(self, handle) -> bool:
        return True  # the usual exit: nothing of the run left in its cgroup

    def destroy(self, handle, keep_identity=False, known_empty=False) -> None:
        self.runtime.ack(handle)  # as the real one's last step: the launcher may forget the exit


class Runtime:
    """Records what the controller asks of the launcher, and what the store held at that moment."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.on_exit = None
        self.calls: list[tuple[str, str, str | None]] = []  # (op, key, stored handle key of the task then)

    def _stored_key(self) -> str | None:
        reader = Store(self.state_dir, readonly=True)
        try:
            row = reader.tasks().get(TID)
        finally:
            reader.close()
        return json.loads(row["handle"])["key"] if row and row["handle"] else None

    def registered(self, key):
        return None

    def result(self, key):
        return None

    def ack(self, handle):
        self.calls.append(("ack", handle.key, self._stored_key()))

    def arm(self, key):
        self.calls.append(("arm", key, self._stored_key()))


def setup(tmp, text: str):
    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    (tasks / "web.hcl").write_text(text)
    driver, runtime = Driver(), Runtime(tmp / "state")
    driver.runtime = runtime
    ctl = Controller(AgentConfig(), str(tasks), Store(tmp / "state"), runtime, {"raw_exec": driver}, clock=Clock())
    return ctl, driver, runtime


def start(ctl):
    ctl.rescan()
    ctl.reconcile(full=True)
    ctl.flush_store()
    pump_until(ctl, lambda: ctl.records[TID].state == TaskState.RUNNING and ctl._running == 0)
    return ctl.records[TID].handle


def respawn(ctl, handle: TaskHandle, pid: int) -> TaskHandle:
    """The launcher's exit event of `handle`, with the run it started in its place."""
    nxt = dataclasses.replace(handle, key=respawn_key(handle.key), pid=pid, started_at=2000.0, armed=False,
                              exec_env={})
    ctl.queue.put(("exit", handle.without_exec_env(), ExitResult(exit_code=137, signal=9, respawned=nxt)))
    pump_until(ctl, lambda: ctl.records[TID].handle.key == nxt.key and ctl.queue.empty())
    return nxt


def close(ctl):
    ctl.pool.shutdown(wait=True)
    ctl.store.close()


def test_a_respawned_run_is_counted_adopted_and_armed_again_once_its_handle_is_stored(tmp):
    ctl, driver, runtime = setup(tmp, job("0s", attempts=2))
    try:
        h = start(ctl)
        assert driver.contexts[0].arm and h.armed
        nxt = respawn(ctl, h, pid=101)
        rec = ctl.records[TID]
        assert (rec.state, rec.handle.pid, rec.restarts, rec.started_at) == (TaskState.RUNNING, 101, 1, 2000.0)
        assert len(driver.contexts) == 1  # the daemon started nothing itself
        # The old exit is forgotten and the new run armed only after the commit that stores the new handle.
        assert runtime.calls == [("ack", h.key, nxt.key), ("arm", nxt.key, nxt.key)]
        assert ctl.store.exec_env(TID, nxt.key) == {"spec": {"path": "/bin/sleep"}}  # tasksctl exec still works
        events = [e["type"] for e in ctl.store.events(task_id=TID)]
        assert events[-3:] == ["exited", "restarting", "started"]

        # Attempts: 2 per hour. The second respawn uses the last one, so that run is not armed again: its exit
        # goes through the daemon (which fails the task).
        runtime.calls.clear()
        third = respawn(ctl, nxt, pid=102)
        assert ctl.records[TID].restarts == 2
        assert runtime.calls == [("ack", nxt.key, third.key)]
        assert not ctl._may_arm(ctl.records[TID])
    finally:
        close(ctl)


def test_only_restarts_at_once_of_the_same_request_are_armed(tmp):
    for text, armed in ((job("0s"), True), (job("15s"), False), (job("0s", attempts=0), False),
                        (job("0s", extra='template {\n data = "x"\n destination = "local/x"\n }'), False)):
        sub = tmp / str(len(list(tmp.iterdir())))
        sub.mkdir()
        ctl, driver, _ = setup(sub, text)
        try:
            start(ctl)
            assert driver.contexts[0].arm is armed, text
        finally:
            close(ctl)


def test_a_respawn_of_a_task_no_longer_wanted_is_adopted_then_stopped_by_the_plan(tmp):
    ctl, driver, runtime = setup(tmp, job("0s"))
    try:
        h = start(ctl)
        stops = []
        driver.stop = lambda handle, sig, timeout: stops.append(handle.key) or ExitResult(exit_code=0)
        driver.forget = lambda tid: None
        ctl.specs.pop(TID)  # as if its manifest went while the exit was on its way
        ctl.desired.pop(TID)
        nxt = dataclasses.replace(h, key=respawn_key(h.key), pid=101, armed=False, exec_env={})
        ctl.queue.put(("exit", h.without_exec_env(), ExitResult(exit_code=137, signal=9, respawned=nxt)))
        pump_until(ctl, lambda: stops == [nxt.key])
        assert not [c for c in runtime.calls if c[0] == "arm"]
    finally:
        close(ctl)


def test_a_run_and_its_respawn_both_exiting_before_the_start_reply_is_taken_in_are_both_counted(tmp):
    """A task that dies at once: its first run exits, the launcher respawns it, and that run exits too, all before
    the loop takes in the first start's reply. The second exit must not be dropped as nobody's (the task would show
    running on a dead process): it waits for the first, and the daemon restarts the task by policy."""
    import threading

    ctl, driver, runtime = setup(tmp, job("0s", attempts=5))
    gate, first = threading.Event(), []
    plain_start = driver.start

    def gated(ctx):
        h = plain_start(ctx)
        if not first:
            first.append(h)
            assert gate.wait(30)
        return h

    driver.start = gated
    try:
        ctl.rescan()
        ctl.reconcile(full=True)
        ctl.flush_store()
        wait_for(lambda: first, timeout=30, what="the first start at the driver")
        h = first[0].without_exec_env()
        nxt = dataclasses.replace(h, key=respawn_key(h.key), pid=101, armed=False)
        ctl.queue.put(("exit", h, ExitResult(exit_code=1, respawned=nxt)))
        ctl.queue.put(("exit", nxt, ExitResult(exit_code=1)))
        for _ in range(2):  # both exits handled while the start reply is still out
            ctl.handle(ctl.queue.get(timeout=5))
            ctl.reconcile()
            ctl.flush_store()
        gate.set()
        pump_until(ctl, lambda: len(driver.contexts) == 2 and ctl.records[TID].state == TaskState.RUNNING
                   and ctl._running == 0)
        rec = ctl.records[TID]
        assert rec.restarts == 2 and rec.handle.key == driver.contexts[1].key  # the daemon's own restart runs
        acked = [c[1] for c in runtime.calls if c[0] == "ack"]
        assert h.key in acked and nxt.key in acked and not ctl._early_exits
    finally:
        gate.set()
        close(ctl)


def test_the_exit_of_a_run_a_stop_is_stopping_is_left_to_the_stop_and_others_are_acked_after_the_commit(tmp):
    """A stop whose disarm came too late stops the respawned run itself and waits for its exit: the loop must not
    ack that exit away from under it. An exit nobody owns is acked, but only after the pass's commit."""
    ctl, driver, runtime = setup(tmp, job("0s"))
    try:
        h = start(ctl)
        rec = ctl.records[TID]
        rec.state, rec.busy = TaskState.STOPPING, True  # as stop() leaves it while its worker runs
        nxt = dataclasses.replace(h, key=respawn_key(h.key), pid=101, armed=False, exec_env={})
        ctl.on_exit(nxt, ExitResult(exit_code=0, signal=15))
        stranger = dataclasses.replace(h, key="somebody.t.00000000", pid=102, exec_env={})
        ctl.on_exit(stranger, ExitResult(exit_code=0))
        assert runtime.calls == []  # nothing acked inside the pass
        ctl.flush_store()
        assert [c[1] for c in runtime.calls if c[0] == "ack"] == [stranger.key]  # the stop's own run: not acked
    finally:
        close(ctl)
