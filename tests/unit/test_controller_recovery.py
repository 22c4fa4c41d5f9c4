"""Controller bookkeeping around exits, with stand-ins for the runtime and the driver (no kernel). The orderings
tested here (an exit racing a template re-render, a kill -9 between acking an exit and storing the restart
decision) cannot be produced on demand with real processes, so the driver and runtime are fakes that record calls."""
from __future__ import annotations

import json
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
        self.known_empty: list[bool] = []
        self.empty = True  # what left_nothing answers
        self.destroy_error: Exception | None = None

    def recover(self, handle):
        return ExitResult(exit_code=None, error=UNKNOWN_EXIT)

    def left_nothing(self, handle):
        return self.empty

    def destroy(self, handle, keep_identity=False, known_empty=False):
        self.destroyed.append(handle.key)
        self.known_empty.append(known_empty)
        if self.destroy_error is not None:
            raise self.destroy_error


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
    ctl.flush_store()  # the end of the pass
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


def _exit_and_clean_up(ctl) -> None:
    """Run the exit's cleanup to its end: the inline one, or the pool's and the "done" it queues."""
    ctl.pool.shutdown(wait=True)
    while not ctl.queue.empty():
        ctl.handle(ctl.queue.get_nowait())
    ctl.flush_store()  # the end of the pass


def test_a_restart_after_a_clean_exit_is_told_the_cgroup_is_empty(tmp):
    # The usual exit: left_nothing saw the cgroup empty, so destroy kills nothing and the next start skips its
    # kill of leftovers (each was a read of every hierarchy's member list).
    ctl, runtime, driver = controller(tmp)
    h = handle("k1")
    rec = record(state=TaskState.RUNNING, handle=h)
    ctl.records[TID] = rec
    ctl.on_exit(h, ExitResult(exit_code=1))
    _exit_and_clean_up(ctl)
    assert driver.known_empty == [True] and rec.handle is None and rec.cgroup_empty
    ctl.store.close()


def test_a_restart_after_an_exit_that_left_processes_is_told_so_only_when_the_kill_worked(tmp):
    ctl, runtime, driver = controller(tmp)
    driver.empty = False  # a daemonised grandchild outlived the main process
    h = handle("k1")
    rec = record(state=TaskState.RUNNING, handle=h)
    ctl.records[TID] = rec
    ctl.on_exit(h, ExitResult(exit_code=1))
    _exit_and_clean_up(ctl)
    assert driver.known_empty == [False] and rec.cgroup_empty  # destroy killed it and returned: empty now

    (tmp / "second").mkdir()
    ctl2, _, driver2 = controller(tmp / "second")
    driver2.empty, driver2.destroy_error = False, OSError("cgroup still populated")
    h2 = handle("k2")
    rec2 = record(state=TaskState.RUNNING, handle=h2)
    ctl2.records[TID] = rec2
    ctl2.on_exit(h2, ExitResult(exit_code=1))
    _exit_and_clean_up(ctl2)
    assert rec2.handle is None and not rec2.cgroup_empty  # the start must kill what the cleanup could not
    ctl.store.close()
    ctl2.store.close()


def test_a_record_loaded_from_the_store_never_claims_an_empty_cgroup(tmp):
    # After a daemon restart nobody knows what ran in the cgroup meanwhile: the start kills leftovers.
    rec = record(state=TaskState.RESTARTING, next_start_at=1015.0)
    rec.cgroup_empty = True
    ctl, _, _ = controller(tmp, [rec])
    ctl.recover()
    assert ctl.records[TID].cgroup_empty is False
    ctl.store.close()


def test_the_launcher_forgets_an_exit_only_after_the_commit_that_records_it(tmp):
    # The ack of a clean exit rides on the next commit (the restart's own) instead of a commit of its own, and
    # never before it: a crash in between must find the exit still in the launcher.
    ctl, runtime, driver = controller(tmp)
    h = handle("k1")
    ctl.records[TID] = record(state=TaskState.RUNNING, handle=h)
    ctl.on_exit(h, ExitResult(exit_code=1))
    assert driver.destroyed == [] and ctl.records[TID].exit["exit_code"] == 1
    ctl.flush_store()
    assert driver.destroyed == ["k1"]
    reader = Store(tmp / "state", readonly=True)
    assert reader.tasks()[TID]["exit"] is not None
    reader.close()
    ctl.store.close()


def test_while_the_store_fails_an_exit_is_acked_at_once_so_acks_do_not_pile_up(tmp):
    ctl, runtime, driver = controller(tmp)
    h = handle("k1")
    ctl.records[TID] = record(state=TaskState.RUNNING, handle=h)
    ctl.store_error = "cannot write state: disk full"  # what a failed flush_store leaves
    ctl.on_exit(h, ExitResult(exit_code=1))
    assert driver.destroyed == ["k1"] and not ctl._after_flush
    ctl.store.close()


def test_a_started_handles_exec_env_is_held_encoded_and_read_back_before_and_after_the_flush(tmp):
    env = {"spec": {"path": "/bin/sleep", "argv": ["sleep", "9"], "env": [["A", "é"]], "stdout": None}}
    ctl, runtime, _ = controller(tmp)
    runtime.registered = runtime.result = lambda key: None  # no exit kept for it
    rec = record(state=TaskState.STARTING, pending_key="k1", busy=True)
    ctl.records[TID] = rec
    ctl._started(TID, "k1", handle("k1"), json.dumps(env))
    assert rec.handle.exec_env == {} and rec.state == TaskState.RUNNING
    assert ctl._pending_exec_envs[TID] == ("k1", json.dumps(env))  # a string until it is stored
    assert ctl.full_handle(rec).exec_env == env
    ctl.flush_store()
    assert ctl._pending_exec_envs == {}
    assert ctl.full_handle(rec).exec_env == env  # now from the store
    ctl.store.close()
