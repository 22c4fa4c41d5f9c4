"""Helpers shared by tests (import as `from tests.helpers import wait_for`)."""
from __future__ import annotations

import queue
import time


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pump_until(ctl, done, timeout: float = 30.0) -> None:
    """What the daemon's loop does with each event of controller `ctl`: handle it, plan what it touched, commit;
    until `done()` holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the controller did not get there in time"
        try:
            ev = ctl.queue.get(timeout=0.1)
        except queue.Empty:
            continue
        ctl.handle(ev)
        ctl.reconcile()
        ctl.flush_store()


class Clock:
    """A controller's clock that moves only when a test moves it (`clock.now += 5`)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
