"""Unified (v2) hierarchy: limits on pure-v2 hosts; membership, kill and populated events on v2 and hybrid hosts."""
from __future__ import annotations

import os
import select
import time
from pathlib import Path

from .base import (RETRY_STEP, TaskCgroup, kill_pids, read_int, read_keyed, read_pids, read_text, write_if_present,
                   write_value)
from .layout import UNIFIED, CgroupError
from .limits import CgroupLimits, CgroupStats

# Controllers a task's limits need; io is left alone (tasksd sets no io limits).
TASK_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
DEFAULT_WEIGHT = 100


def controllers_of(d: Path) -> set[str]:
    try:
        return set(read_text(d / "cgroup.controllers").split())
    except FileNotFoundError:
        return set()


def subtree_of(d: Path) -> set[str]:
    try:
        return set(read_text(d / "cgroup.subtree_control").split())
    except FileNotFoundError:
        return set()


def enable_controllers(d: Path, wanted: set[str]) -> set[str]:
    """Enable the wanted controllers that `d` has but does not yet pass on to its children; returns those enabled.

    The kernel answers EBUSY when `d` holds processes itself (the "no internal processes" rule), so a daemon that
    creates task cgroups below its own cgroup must first move itself into a leaf (CgroupManager.move_self_to_leaf).
    """
    missing = (wanted & controllers_of(d)) - subtree_of(d)
    if not missing:
        return set()
    try:
        write_value(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
    except CgroupError as e:
        if read_pids(d / "cgroup.procs"):
            raise CgroupError(
                f"cannot enable {', '.join(sorted(missing))} in {d / 'cgroup.subtree_control'}: {d} holds processes "
                "(cgroup v2 'no internal processes' rule); move them into a leaf first (move_self_to_leaf)"
            ) from e
        raise
    return missing


def _require(d: Path, file: str, controller: str, what: str) -> None:
    if not (d / file).exists():
        raise CgroupError(
            f"{what} requested but {d / file} does not exist: the {controller} controller is not enabled in "
            f"{d.parent / 'cgroup.subtree_control'}"
        )


def write_limits(d: Path, limits: CgroupLimits, fresh: bool = False) -> None:
    """Write every limit file, resetting unset limits to the kernel default so a reused cgroup holds no stale value.
    fresh: `d` was just made and holds the defaults already: only real limits are written, without a stat per file
    (a missing controller file for a requested limit still fails with the reason)."""
    if fresh:
        _write_fresh(d, limits)
        return
    if limits.memory_max is not None:
        _require(d, "memory.max", "memory", "memory_max")
    if limits.memory_low is not None:
        _require(d, "memory.low", "memory", "memory_low")
    if limits.cpu_shares_mhz is not None:
        _require(d, "cpu.weight", "cpu", "cpu")
    if limits.cpuset_cpus is not None:
        _require(d, "cpuset.cpus", "cpuset", "cores")
    if limits.pids_max is not None:
        _require(d, "pids.max", "pids", "pids_max")
    if (d / "memory.max").exists():
        write_value(d / "memory.max", limits.memory_max if limits.memory_max is not None else "max")
        write_value(d / "memory.low", limits.memory_low if limits.memory_low is not None else 0)
        # Swap would let a task exceed its hard limit silently instead of being OOM-killed (Nomad disables it too).
        if (d / "memory.swap.max").exists():
            write_value(d / "memory.swap.max", 0 if limits.memory_max is not None else "max")
    if (d / "cpu.weight").exists():
        write_value(d / "cpu.weight", limits.weight if limits.weight is not None else DEFAULT_WEIGHT)
    if (d / "cpuset.cpus").exists():
        # An empty cpuset.cpus means "use the parent's CPUs" on v2.
        write_value(d / "cpuset.cpus", limits.cpuset_cpus or "")
    if (d / "pids.max").exists():
        write_value(d / "pids.max", limits.pids_max if limits.pids_max is not None else "max")


def _write_fresh(d: Path, limits: CgroupLimits) -> None:
    def put(file: str, value: str | int, controller: str, what: str) -> None:
        if not write_if_present(d / file, value):
            _require(d, file, controller, what)  # raises with the reason

    if limits.memory_max is not None:
        put("memory.max", limits.memory_max, "memory", "memory_max")
        write_if_present(d / "memory.swap.max", 0)  # absent without swap accounting: nothing to turn off
    if limits.memory_low is not None:
        put("memory.low", limits.memory_low, "memory", "memory_low")
    if limits.cpu_shares_mhz is not None:
        put("cpu.weight", limits.weight, "cpu", "cpu")
    if limits.cpuset_cpus is not None:
        put("cpuset.cpus", limits.cpuset_cpus, "cpuset", "cores")
    if limits.pids_max is not None:
        put("pids.max", limits.pids_max, "pids", "pids_max")


def populated(d: Path) -> bool:
    return read_keyed(d / "cgroup.events").get("populated", 0) == 1


def wait_unpopulated(d: Path, deadline: float) -> bool:
    """Block on POLLPRI of cgroup.events (the kernel notifies each change) until "populated 0" or the deadline."""
    try:
        fd = os.open(d / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode()
            if "populated 0" in text:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(max(1, int(remaining * 1000)))
    finally:
        os.close(fd)


def freeze(d: Path, frozen: bool, deadline: float) -> None:
    write_value(d / "cgroup.freeze", 1 if frozen else 0)
    want = 1 if frozen else 0
    while read_keyed(d / "cgroup.events").get("frozen", want) != want:
        if time.monotonic() >= deadline:
            raise CgroupError(f"{d} did not {'freeze' if frozen else 'thaw'} in time")
        time.sleep(RETRY_STEP)


def kill_all(d: Path, deadline: float) -> None:
    """cgroup.kill (Linux >= 5.14) kills every member and descendant atomically; older kernels: freeze, kill, thaw."""
    try:
        if "populated 0" in (d / "cgroup.events").read_text():
            # Nobody left (the usual case when a task exited: restarts and stops end here). Only a member can
            # fork a new one, so an empty cgroup stays empty; and writing cgroup.kill would take cgroup_mutex,
            # which waits behind any migration stuck in the kernel's grace-period wait (see warm.py).
            return
    except FileNotFoundError:
        return
    if (d / "cgroup.kill").exists():
        write_value(d / "cgroup.kill", 1)
    elif (d / "cgroup.freeze").exists():
        freeze(d, True, deadline)
        try:
            kill_pids(read_pids(d / "cgroup.procs"))
        finally:
            freeze(d, False, deadline)
    else:
        kill_pids(read_pids(d / "cgroup.procs"))
    if not wait_unpopulated(d, deadline):
        raise CgroupError(f"{d} still has members {sorted(read_pids(d / 'cgroup.procs'))} after kill")


def stats(d: Path) -> CgroupStats:
    usage_usec = read_keyed(d / "cpu.stat").get("usage_usec")
    return CgroupStats(
        cpu_usage_ns=None if usage_usec is None else usage_usec * 1000,
        memory_current=read_int(d / "memory.current"),
        memory_peak=read_int(d / "memory.peak"),
        pids_current=read_int(d / "pids.current"),
    )


class V2TaskCgroup(TaskCgroup):
    """A task on a pure-v2 host: one directory holds limits, membership and events."""

    @property
    def dir(self) -> Path:
        return self.paths[UNIFIED]

    def populated(self) -> bool:
        return populated(self.dir)

    def events_file(self) -> str | None:
        return str(self.dir / "cgroup.events")

    def kill(self, timeout: float = 5.0) -> None:
        if self.dir.is_dir():
            kill_all(self.dir, time.monotonic() + timeout)

    def oom_kills(self) -> int:
        return read_keyed(self.dir / "memory.events").get("oom_kill", 0)

    def stats(self) -> CgroupStats:
        return stats(self.dir)

    def update(self, limits: CgroupLimits, fresh: bool = False) -> None:
        write_limits(self.dir, limits, fresh)
