"""When the daemon gives freed heap memory back to the kernel (glibc malloc_trim).

A burst of work (a thousand manifests arriving, a mass restart) grows malloc's heap with short-lived specs, JSON
and SQL buffers; freed, that memory stays inside malloc's arenas and counts in the daemon's RSS and PSS for good
(1.4 MB at 1000 tasks here). Trimming costs a walk over the heap, so it runs once a burst is over and the daemon
has been quiet for a while, never per task.
"""
from __future__ import annotations

BURST = 50  # side effects (starts, stops, cleanups) that make a burst worth trimming after
QUIET = 1.0  # seconds without any side effect before trimming


class TrimSchedule:
    def __init__(self) -> None:
        self.work = 0  # side effects since the last trim
        self.due_at: float | None = None

    def note_work(self, n: int, now: float) -> None:
        """`n` side effects ran in the pass that ended at `now`; each pass with some pushes the trim back."""
        if n:
            self.work += n
            self.due_at = now + QUIET

    def take(self, now: float) -> bool:
        """True when a trim should run now (and counts it as run)."""
        if self.due_at is None or now < self.due_at:
            return False
        worth, self.work, self.due_at = self.work >= BURST, 0, None
        return worth
