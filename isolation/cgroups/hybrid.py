"""Hybrid hosts (this machine): limits in the v1 controllers, membership, kill and events in the v2 tree.

The v2 tree has no controllers here, but every v2 cgroup still has cgroup.procs, cgroup.events (populated, with
POLLPRI notification) and cgroup.kill, which are better than anything v1 offers for tracking and killing.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import v1, v2
from .layout import UNIFIED
from .limits import CgroupStats


class HybridTaskCgroup(v1.V1TaskCgroup):
    @property
    def v2_dir(self) -> Path:
        return self.paths[UNIFIED]

    def v1_paths(self) -> dict[str, Path]:
        return {h: p for h, p in self.paths.items() if h != UNIFIED}

    def populated(self) -> bool:
        return v2.populated(self.v2_dir)

    def events_file(self) -> str | None:
        return str(self.v2_dir / "cgroup.events")

    def kill(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        if self.v2_dir.is_dir():
            v2.kill_all(self.v2_dir, deadline)
        # A process that joined only the v1 directories (a child that died between its procs writes, or someone
        # who moved a pid in by hand) is not covered by cgroup.kill.
        if self.pids():
            self._freeze_kill(deadline)

    def stats(self) -> CgroupStats:
        s = super().stats()
        if s.cpu_usage_ns is None:
            # cpu.stat usage is a core v2 file, present even without the cpu controller.
            s = CgroupStats(v2.stats(self.v2_dir).cpu_usage_ns, s.memory_current, s.memory_peak, s.pids_current)
        return s
