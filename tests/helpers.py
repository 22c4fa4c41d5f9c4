"""Helpers shared by tests (import as `from tests.helpers import wait_for`)."""
from __future__ import annotations

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


class Clock:
    """A controller's clock that moves only when a test moves it (`clock.now += 5`)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
