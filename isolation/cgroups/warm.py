"""Keep the kernel's cgroup migration lock ready for a writer while a task start is likely.

Every task start moves a process into a cgroup (the launcher joins the task's cgroups so the child is born in them).
That write takes `cgroup_threadgroup_rwsem`, a per-cpu rwsem, for writing. When no migration happened for about
one RCU grace period, the rwsem has gone back to its reader-fast mode, and the next writer first waits for a full
grace period: 6-8 ms on the test VM, where the whole start costs ~3 ms. The first start after a quiet spell (a
manifest dropped in, a task that died after an hour) paid it every time; back-to-back starts never did.

The warmer overlaps that wait with work tasksd does anyway. Poked when a start is likely (a change in the tasks
dir, a task exit), a thread writes "0" into the cgroup.procs of the cgroup this process is already in: a
migration of nothing (the kernel finds source == destination and moves no task, runs no controller callback),
which still takes the rwsem for writing. The first such write pays the grace period while the daemon debounces,
scans and plans; repeated every few ms until `hold` seconds after the last poke, they keep the rwsem in writer mode
until the launcher's real migration comes. Idle, it does nothing (no CPU). It never moves a process, ours or
anyone's.

Hosts that set cgroup2's `favordynmods` (or rcu_expedited) never pay the wait; there the writes are merely cheap.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from .layout import UNIFIED, CgroupError, detect

log = logging.getLogger("tasksd.cgroups")

PERIOD = 0.003  # below one grace period on any kernel config we know (the lock leaves writer mode one GP after exit)
HOLD = 0.06  # a start follows a watch event after debounce + scan + plan: ~20 ms at 1000 manifests


def own_procs_file(proc_root: str = "/proc") -> str | None:
    """cgroup.procs of the cgroup this process is in now: the v2 one when v2 is mounted, else a v1 hierarchy's.

    Read from /proc/self/cgroup at call time (the daemon may have moved itself to a leaf since start)."""
    layout = detect(proc_root)
    for hierarchy in (UNIFIED, "pids", "memory", *sorted(layout.own)):
        if hierarchy not in layout.own:
            continue
        try:
            path = layout.own_dir(hierarchy) / "cgroup.procs"
        except CgroupError:  # listed in /proc/self/cgroup but not mounted (name=systemd, ...): try the next
            continue
        if path.exists():
            return str(path)
    return None


class MigrationWarmer:
    def __init__(self, procs_file: str | None, period: float = PERIOD, hold: float = HOLD,
                 clock=time.monotonic):
        self.procs_file = procs_file
        self.period = period
        self.hold = hold
        self.clock = clock
        self.writes = 0  # no-op migrations done (tests and metrics)
        self._until = 0.0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._broken: str | None = None

    def start(self) -> None:
        if self.procs_file is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cgroup-warm", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A start may follow soon. Thread-safe and cheap: callable from any event path."""
        if self._thread is None or self._broken:
            return
        self._until = self.clock() + self.hold
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            while not self._stop and self.clock() < self._until:
                try:
                    fd = os.open(self.procs_file, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, b"0")
                    finally:
                        os.close(fd)
                    self.writes += 1
                except OSError as e:
                    # EBUSY (an inner v2 cgroup with controllers), a cgroup removed under us, a read-only
                    # cgroupfs: starts work as before, they only keep paying the wait. Said once, not per event.
                    self._broken = f"{self.procs_file}: {e.strerror or e}"
                    log.info("cgroup lock warm-up disabled: %s", self._broken)
                    return
                time.sleep(self.period)
