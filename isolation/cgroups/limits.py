"""Resource limits of one task cgroup, the Nomad rule that derives them, and the stats read back.

Pure data and arithmetic: nothing here touches the kernel, so drivers and reconcilers can use it freely.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

# v1 cpu.shares bounds (kernel MIN_SHARES / MAX_SHARES); Nomad clamps MHz into this range.
MIN_SHARES = 2
MAX_SHARES = 262144
MIN_WEIGHT = 1
MAX_WEIGHT = 10000

_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def cpu_shares(mhz: int) -> int:
    """Nomad's MHz -> v1 cpu.shares (one MHz is one share), clamped to what the kernel accepts."""
    return max(MIN_SHARES, min(MAX_SHARES, mhz))


def cpu_weight(shares: int) -> int:
    """v1 shares -> v2 cpu.weight with the mapping runc/crun use, so a task gets the same relative weight on both."""
    shares = max(MIN_SHARES, min(MAX_SHARES, shares))
    weight = 1 + ((shares - MIN_SHARES) * (MAX_WEIGHT - 1)) // (MAX_SHARES - MIN_SHARES)
    return max(MIN_WEIGHT, min(MAX_WEIGHT, weight))


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What to write into a task's cgroup. None means "no limit" (the controller's default is written back)."""

    memory_max: int | None = None  # bytes, hard: the task is OOM-killed above it
    memory_low: int | None = None  # bytes, soft: protected from reclaim (v2 memory.low, v1 soft limit)
    cpu_shares_mhz: int | None = None  # Nomad cpu MHz; converted to cpu.shares (v1) or cpu.weight (v2)
    cpuset_cpus: str | None = None  # kernel list format, e.g. "0-1,3"
    pids_max: int | None = None

    def __post_init__(self) -> None:
        for field in ("memory_max", "memory_low", "cpu_shares_mhz", "pids_max"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{field} must be a positive integer or None, got {value!r}")
        if self.cpuset_cpus is not None and not _CPUSET.match(self.cpuset_cpus):
            raise ValueError(f"cpuset_cpus must be a CPU list like '0-1,3', got {self.cpuset_cpus!r}")

    @property
    def shares(self) -> int | None:
        return None if self.cpu_shares_mhz is None else cpu_shares(self.cpu_shares_mhz)

    @property
    def weight(self) -> int | None:
        shares = self.shares
        return None if shares is None else cpu_weight(shares)


@dataclass(frozen=True)
class CgroupStats:
    """Usage read from whichever files the cgroup mode offers; None when this mode has no such counter."""

    cpu_usage_ns: int | None
    memory_current: int | None
    memory_peak: int | None
    pids_current: int | None


def _cpu_list(cores: str | Iterable[int] | None) -> str | None:
    if cores is None:
        return None
    if isinstance(cores, str):
        return cores.strip() or None
    ids = sorted(set(cores))
    return ",".join(str(c) for c in ids) or None


def limits_for(
    memory_mb: int | None,
    memory_max_mb: int | None = None,
    cpu_mhz: int | None = None,
    cores_cpus: str | Iterable[int] | None = None,
    pids_limit: int | None = None,
) -> CgroupLimits:
    """Nomad's resources -> limits.

    `memory` is the hard limit unless `memory_max` is set: memory_max > 0 becomes the hard limit and `memory` the
    soft (low) one; memory_max = -1 drops the hard limit altogether (hashicorp/nomad#19588) and keeps `memory` as
    the soft one. 0 or None means "not set" everywhere, as in a jobspec.
    """
    mib = 1024 * 1024
    memory = memory_mb or None
    if memory is not None and memory < 0:
        raise ValueError(f"memory must be >= 0 MB, got {memory_mb}")
    hard: int | None
    low: int | None
    if memory_max_mb in (None, 0):
        hard, low = memory, None
    elif memory_max_mb == -1:
        hard, low = None, memory
    elif memory_max_mb > 0:
        if memory is not None and memory_max_mb < memory:
            raise ValueError(f"memory_max ({memory_max_mb} MB) must be >= memory ({memory} MB)")
        hard, low = memory_max_mb, memory
    else:
        raise ValueError(f"memory_max must be -1, 0 or positive, got {memory_max_mb}")
    if pids_limit is not None and pids_limit < 0:
        raise ValueError(f"pids_limit must be >= 0, got {pids_limit}")
    if cpu_mhz is not None and cpu_mhz < 0:
        raise ValueError(f"cpu must be >= 0 MHz, got {cpu_mhz}")
    return _one_of_each(CgroupLimits(
        memory_max=None if hard is None else hard * mib,
        memory_low=None if low is None else low * mib,
        cpu_shares_mhz=cpu_mhz or None,
        cpuset_cpus=_cpu_list(cores_cpus),
        pids_max=pids_limit or None,
    ))


# The cgroup manager remembers each task's limits (to skip rewriting equal ones on a restart), and most tasks ask
# for the same few: equal limits are one object (0.14 KB per task less at 1000 tasks). Bounded.
@functools.lru_cache(maxsize=256)
def _one_of_each(limits: CgroupLimits) -> CgroupLimits:
    return limits
