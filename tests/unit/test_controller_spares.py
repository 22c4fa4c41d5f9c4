"""When the controller makes spare alloc dirs (isolation.spares), with a fake clock and a stand-in pool: only once
nothing has been submitted or run for SPARE_QUIET, never while side effects are in flight or events wait, never
scheduled while the pool is full (an idle daemon does not wake), and with a growing back-off when making one
fails (a state dir that stays full or read-only)."""
from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from controller.controller import SPARE_QUIET, SPARE_RETRY, SPARE_RETRY_MAX, Controller
from controller.store import Store
from manifests.agent_config import AgentConfig
from tests.helpers import Clock


class Pool:
    def __init__(self, target: int = 2):
        self.count, self.target, self.root = 0, target, "/state/spare"
        self.fail: OSError | None = None
        self.steps = 0

    def wanted(self) -> int:
        return self.target - self.count

    def step(self) -> bool:
        self.steps += 1
        if self.fail is not None:
            raise self.fail
        self.count += 1
        return self.wanted() > 0


def make(tmp):
    clock, pool = Clock(), Pool()
    runtime = SimpleNamespace(on_exit=None, spares=pool)
    ctl = Controller(AgentConfig(), str(tmp), Store(tmp / "state"), runtime, {}, clock=clock)
    return ctl, clock, pool


def test_spares_wait_for_quiet_then_fill_one_per_pass_and_stop_scheduling_when_full(tmp):
    ctl, clock, pool = make(tmp)
    ctl._tend_spares()
    assert pool.steps == 0 and ctl._spare_due == clock.now + SPARE_QUIET  # the quiet period starts
    clock.now += SPARE_QUIET / 2
    ctl._tend_spares()
    assert pool.steps == 0
    clock.now = ctl._spare_due
    ctl._tend_spares()
    assert pool.count == 1 and ctl._spare_due == clock.now  # one per pass; the next pass comes at once
    ctl._tend_spares()
    assert pool.count == 2 and ctl._spare_due is None
    ctl._tend_spares()
    assert pool.steps == 2 and ctl._spare_due is None  # full: nothing scheduled, an idle loop sleeps


def test_no_spare_while_side_effects_run_or_events_wait(tmp):
    ctl, clock, pool = make(tmp)
    ctl._side_effects = 3  # this pass submitted work
    ctl._tend_spares()
    assert pool.steps == 0 and ctl._spare_due is None
    ctl._side_effects, ctl._running = 0, 2  # still running on the workers: no wake-up is scheduled for it
    clock.now += 10
    ctl._tend_spares()
    assert pool.steps == 0 and ctl._spare_due is None
    ctl.handle(("effect_done", False))
    ctl.handle(("effect_done", False))
    assert ctl._running == 0
    ctl._tend_spares()
    clock.now = ctl._spare_due
    ctl.queue.put(("rescan", "watch"))  # an event waits: it goes first
    ctl._tend_spares()
    assert pool.steps == 0
    ctl.queue.get_nowait()
    ctl._tend_spares()
    assert pool.steps == 1


def test_a_failing_disk_is_retried_ever_more_rarely_and_success_resets_it(tmp):
    ctl, clock, pool = make(tmp)
    pool.fail = OSError(errno.EROFS, "Read-only file system")
    ctl._tend_spares()
    clock.now = ctl._spare_due
    waits = []
    for _ in range(8):
        ctl._tend_spares()
        waits.append(ctl._spare_due - clock.now)
        clock.now = ctl._spare_due
    assert waits[:3] == pytest.approx([SPARE_RETRY, 2 * SPARE_RETRY, 4 * SPARE_RETRY])
    assert waits[-1] == pytest.approx(SPARE_RETRY_MAX)
    pool.fail = None
    ctl._tend_spares()
    assert pool.count == 1 and ctl._spare_retry == SPARE_RETRY


def test_a_submitted_side_effect_counts_until_its_end_is_handled(tmp):
    ctl, clock, pool = make(tmp)
    ran = []
    ctl._submit(lambda: ran.append(1))
    ctl.pool.shutdown(wait=True)
    assert ran == [1] and ctl._running == 1 and ctl._side_effects == 1
    assert ctl.queue.get_nowait() == ("effect_done", False)  # not a start
    ctl.handle(("effect_done", False))
    assert ctl._running == 0
