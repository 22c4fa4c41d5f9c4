"""cgroup v1 controllers: limits on hybrid and pure-v1 hosts; freezer-based kill and membership on pure v1."""
from __future__ import annotations

import time
from pathlib import Path

from .base import RETRY_STEP, TaskCgroup, kill_pids, read_int, read_keyed, read_text, write_if_present, write_value
from .layout import CgroupError
from .limits import CgroupLimits, CgroupStats

# Controllers a task joins on v1 (cpu and cpuacct may be co-mounted; the manager then gives both the same dir).
TASK_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer")
DEFAULT_SHARES = 1024
UNLIMITED = -1  # what memory.*limit_in_bytes accept for "no limit"


def copy_cpuset(d: Path, cpus: str | None = None) -> None:
    """A v1 cpuset starts with empty cpus/mems and refuses members until both are set: take the parent's values
    (or the requested cpus)."""
    parent = d.parent
    write_value(d / "cpuset.cpus", cpus if cpus is not None else read_text(parent / "cpuset.cpus").strip())
    write_value(d / "cpuset.mems", read_text(parent / "cpuset.mems").strip())


def _write_memory(d: Path, limits: CgroupLimits, fresh: bool) -> None:
    hard = limits.memory_max if limits.memory_max is not None else UNLIMITED
    soft = limits.memory_low if limits.memory_low is not None else UNLIMITED
    memsw = d / "memory.memsw.limit_in_bytes"
    if fresh:
        # A new memory cgroup starts unlimited in all three (whatever its parent says): only a real limit is
        # written, the hard one before memsw because it shrinks.
        if hard != UNLIMITED:
            write_value(d / "memory.limit_in_bytes", hard)
            write_if_present(memsw, hard)
        if soft != UNLIMITED:
            write_value(d / "memory.soft_limit_in_bytes", soft)
        return
    steps = [(d / "memory.limit_in_bytes", hard)]
    if memsw.exists():
        # Swap would let a task exceed its limit silently (Nomad sets memory+swap = memory). The kernel insists on
        # memsw >= limit at every moment: raise memsw first when growing, lower the limit first when shrinking.
        current = read_int(d / "memory.limit_in_bytes")
        growing = hard == UNLIMITED or current is None or hard >= current
        steps = [(memsw, hard)] + steps if growing else steps + [(memsw, hard)]
    for path, value in steps:
        write_value(path, value)
    write_value(d / "memory.soft_limit_in_bytes", soft)


def _missing(paths: dict[str, Path], limits: CgroupLimits) -> list[str]:
    wanted = {
        "memory": limits.memory_max is not None or limits.memory_low is not None,
        "cpu": limits.cpu_shares_mhz is not None,
        "cpuset": limits.cpuset_cpus is not None,
        "pids": limits.pids_max is not None,
    }
    return [c for c, want in wanted.items() if want and c not in paths]


def write_limits(paths: dict[str, Path], limits: CgroupLimits, fresh: bool = False) -> None:
    """Write every v1 limit file of the controllers in `paths`, resetting unset limits to the kernel default.
    fresh: the directories were just made, so the files already hold the defaults and only real limits are
    written (a new cpuset is empty, not a default: it is always filled in)."""
    missing = _missing(paths, limits)
    if missing:
        raise CgroupError(f"limits need the {', '.join(missing)} cgroup v1 controller(s), which are not mounted")
    if "memory" in paths:
        _write_memory(paths["memory"], limits, fresh)
    shares = limits.shares if limits.shares is not None else DEFAULT_SHARES
    if "cpu" in paths and not (fresh and shares == DEFAULT_SHARES):
        write_value(paths["cpu"] / "cpu.shares", shares)
    if "cpuset" in paths:
        copy_cpuset(paths["cpuset"], limits.cpuset_cpus)
    if "pids" in paths and not (fresh and limits.pids_max is None):
        write_value(paths["pids"] / "pids.max", limits.pids_max if limits.pids_max is not None else "max")


def _set_freezer(d: Path, state: str, deadline: float) -> None:
    write_value(d / "freezer.state", state)
    # FREEZING is transient while members reach the refrigerator; THAWED is immediate.
    while read_text(d / "freezer.state").strip() != state:
        if time.monotonic() >= deadline:
            raise CgroupError(f"{d / 'freezer.state'} did not reach {state} in time")
        time.sleep(RETRY_STEP)


def oom_kills(memory_dir: Path | None) -> int:
    if memory_dir is None:
        return 0
    # oom_kill appeared in Linux 4.13; memory.failcnt is not a reliable OOM signal (it stayed 0 in measurements).
    return read_keyed(memory_dir / "memory.oom_control").get("oom_kill", 0)


def stats(paths: dict[str, Path]) -> CgroupStats:
    def file(ctrl: str, name: str) -> int | None:
        return read_int(paths[ctrl] / name) if ctrl in paths else None

    return CgroupStats(
        cpu_usage_ns=file("cpuacct", "cpuacct.usage"),
        memory_current=file("memory", "memory.usage_in_bytes"),
        memory_peak=file("memory", "memory.max_usage_in_bytes"),
        pids_current=file("pids", "pids.current"),
    )


class V1TaskCgroup(TaskCgroup):
    """A task on a pure-v1 host: one directory per controller; no populated notification, no cgroup.kill."""

    def v1_paths(self) -> dict[str, Path]:
        return self.paths

    def populated(self) -> bool:
        return bool(self.pids())

    def events_file(self) -> str | None:
        return None

    def kill(self, timeout: float = 5.0) -> None:
        self._freeze_kill(time.monotonic() + timeout)

    def _freeze_kill(self, deadline: float) -> None:
        """Freeze so nothing can fork while we collect pids, SIGKILL every member, thaw so the kill is delivered.

        Repeated until empty because a process can join between rounds; without a freezer it is SIGKILL rounds
        alone (pids.max still bounds a fork loop).
        """
        freezer = self.v1_paths().get("freezer")
        if freezer is not None and not freezer.is_dir():
            freezer = None
        while pids := self.pids():
            if freezer is not None:
                try:
                    _set_freezer(freezer, "FROZEN", deadline)
                    kill_pids(self.pids())
                finally:
                    _set_freezer(freezer, "THAWED", deadline + 1.0)
            else:
                kill_pids(pids)
            if time.monotonic() >= deadline:
                break
            self._wait_empty_briefly(deadline)
        if self.pids():
            raise CgroupError(f"cgroup {self.name} still has members {sorted(self.pids())} after kill")

    def _wait_empty_briefly(self, deadline: float) -> None:
        # SIGKILLed processes leave cgroup.procs once they have exited; give them until the deadline.
        round_end = min(deadline, time.monotonic() + 0.5)
        while self.pids() and time.monotonic() < round_end:
            time.sleep(RETRY_STEP)

    def oom_kills(self) -> int:
        return oom_kills(self.v1_paths().get("memory"))

    def stats(self) -> CgroupStats:
        return stats(self.v1_paths())

    def update(self, limits: CgroupLimits, fresh: bool = False) -> None:
        write_limits(self.v1_paths(), limits, fresh)
