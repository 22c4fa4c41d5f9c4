"""Controller bookkeeping around exits, with stand-ins for the runtime and the driver (no kernel). The orderings
tested here (an exit racing a template re-render, a kill -9 between acking an exit and storing the restart
decision) cannot be produced on demand with real processes, so the driver and runtime are fakes that record calls."""
from __future__ import annotations

import os
from types import SimpleNamespace

from controller.controller import Controller, TaskRecord
from controller.store import Store
from isolation.drivers.base import UNKNOWN_EXIT, ExitResult, TaskHandle
from manifests.agent_config import AgentConfig
from reconcilers.states import TaskState

TID = "web/g/0/t"


class FakeRuntime:
    def __init__(self):
        self.on_exit = None
        self.acked: list[str] = []

    def begin_recovery(self):
        pass

    def end_recovery(self):
        pass

    def ack(self, handle):
        self.acked.append(handle.key)


class FakeDriver:
    """recover() says what the launcher would after a crash that came after the ack: it knows nothing."""

    def __init__(self):
        self.destroyed: list[str] = []

    def recover(self, handle):
        return ExitResult(exit_code=None, error=UNKNOWN_EXIT)

    def left_nothing(self, handle):
        return True

    def destroy(self, handle, keep_identity=False):
        self.destroyed.append(handle.key)


def handle(key: str) -> TaskHandle:
    return TaskHandle(key=key, task_id=TID, driver="raw_exec", pid=4242, start_time=1, boot_id="b", cgroup="c",
                      alloc_id="a", alloc_dir="/nonexistent/a", task_dir="/nonexistent/a/t", started_at=900.0)


def controller(tmp, records=()):
    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    store = Store(tmp / "state")
    for rec in records:
        store.put_task(rec.row())
    store.commit()
    runtime, driver = FakeRuntime(), FakeDriver()
    ctl = Controller(AgentConfig(), str(tasks), store, runtime, {"raw_exec": driver}, clock=lambda: 1000.0)
    return ctl, runtime, driver


def record(**kw) -> TaskRecord:
    return TaskRecord(TID, "web", "g", 0, "t", "raw_exec", "/m/web.hcl", **kw)


def queued_exits(ctl) -> list[tuple]:
    out = []
    while not ctl.queue.empty():
        ev = ctl.queue.get_nowait()
        if ev[0] == "exit":
            out.append(ev)
    return out


def test_recovery_uses_the_exit_recorded_for_this_run_when_the_launcher_forgot_it(tmp):
    exit0 = {**ExitResult(exit_code=0, finished_at=950.0).to_dict(), "key": "k1"}
    ctl, _, _ = controller(tmp, [record(state=TaskState.RUNNING, handle=handle("k1"), exit=exit0)])
    ctl.recover()
    [(_, h, result)] = queued_exits(ctl)
    assert h.key == "k1" and result == ExitResult(exit_code=0, finished_at=950.0)
    ctl.store.close()


def test_recovery_does_not_reuse_an_earlier_runs_exit(tmp):
    old = {**ExitResult(exit_code=0).to_dict(), "key": "k0"}  # the run before k1
    ctl, _, _ = controller(tmp, [record(state=TaskState.RUNNING, handle=handle("k1"), exit=old)])
    ctl.recover()
    [(_, _, result)] = queued_exits(ctl)
    assert result.error == UNKNOWN_EXIT and result.exit_code is None
    ctl.store.close()


def test_a_pending_restart_gets_its_timer_back_after_a_daemon_restart(tmp):
    ctl, _, _ = controller(tmp, [record(state=TaskState.RESTARTING, next_start_at=1015.0)])
    ctl.recover()
    assert (1015.0, "web/g/0") in ctl._timers
    ctl.store.close()


def test_an_exit_during_a_template_rerender_is_handled_when_the_rerender_is_done(tmp):
    ctl, runtime, driver = controller(tmp)
    h = handle("k1")
    rec = record(state=TaskState.RUNNING, handle=h, busy=True)
    ctl.records[TID] = rec
    ctl._rerendering.add(TID)  # what rerender() leaves while its worker writes the files
    ctl.on_exit(h, ExitResult(exit_code=0, signal=1))  # e.g. killed by its change_signal
    assert rec.handle is h and rec.state == TaskState.RUNNING  # not yet: the re-render is in flight
    d = SimpleNamespace(template_hash="t1")
    ctl._rerendered(TID, h, SimpleNamespace(to_dict=lambda: {}), d, [], None)
    assert rec.handle is None and rec.exit["signal"] == 1 and driver.destroyed == ["k1"]
    assert rec.state == TaskState.STOPPED  # not desired in this test; a desired task would be restarted
    assert not ctl._exits_in_rerender and not ctl._rerendering
    ctl.store.close()


def test_an_exit_while_stopping_is_left_to_the_stop(tmp):
    ctl, runtime, driver = controller(tmp)
    h = handle("k1")
    rec = record(state=TaskState.STOPPING, handle=h, busy=True)
    ctl.records[TID] = rec
    ctl.on_exit(h, ExitResult(exit_code=0, signal=15))
    assert rec.handle is h and not driver.destroyed and not ctl._exits_in_rerender
    ctl.store.close()
