"""What every backend shares: reading and writing cgroup files, and the TaskCgroup interface.

Kernel cgroup files report errors on write(), not on open(), and a value must go in one write() call: values are
written with a single os.write on an O_WRONLY descriptor (never O_CREAT, so a missing file is an error rather than
a silently created regular file in a fake tree).
"""
from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path

from .layout import UNIFIED, CgroupError
from .limits import CgroupLimits, CgroupStats

# Bounded retry step while the kernel finishes something we asked for (a kill emptying a group, a freeze taking
# effect, zombies draining before rmdir). Never used to wait for a task's own behaviour.
RETRY_STEP = 0.005


def write_value(path: Path, value: str | int) -> None:
    if not write_if_present(path, value):
        raise CgroupError(f"cannot open {path} for writing: {os.strerror(errno.ENOENT)}")


def write_if_present(path: Path, value: str | int) -> bool:
    """write_value for a file that may legitimately be absent (memory.memsw.* without swap accounting): False
    when it is. One open instead of a stat and an open."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise CgroupError(f"cannot open {path} for writing: {e.strerror}") from e
    try:
        os.write(fd, str(value).encode())
    except OSError as e:
        raise CgroupError(f"writing {value!r} to {path} failed: {e.strerror}") from e
    finally:
        os.close(fd)
    return True


def read_text(path: Path) -> str:
    # os-level reads: open()'s three file objects cost ~20 us a file, and a restart reads five to eight of these
    # (is anything left in the task's cgroups?) on its way to the new start.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def read_int(path: Path) -> int | None:
    """An integer file; None when it is missing or holds "max"."""
    try:
        text = read_text(path).strip()
    except FileNotFoundError:
        return None
    return None if text == "max" else int(text)


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("key value" per line: memory.events, cpu.stat, memory.oom_control); {} when missing."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_pids(procs: Path) -> set[int]:
    """Members listed in a cgroup.procs file; a removed cgroup has none."""
    try:
        return {int(p) for p in read_text(procs).split()}
    except FileNotFoundError:
        return set()


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rmdir_retrying(path: Path, deadline: float) -> None:
    """rmdir a cgroup; EBUSY is retried until `deadline` because exited members can still be charged for a moment."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}") from e
        time.sleep(RETRY_STEP)


TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing in the launcher
if TYPE_CHECKING:
    from typing import TypeVar

    _P = TypeVar("_P", Path, str)


def unique_dirs(paths: dict[str, _P]) -> list[_P]:
    """Each directory once (co-mounted v1 controllers share one), the v2 directory first."""
    ordered = sorted(paths.items(), key=lambda kv: (kv[0] != UNIFIED, kv[0]))
    out: list[_P] = []
    for _, p in ordered:
        if p not in out:
            out.append(p)
    return out


class TaskCgroup(ABC):
    """One task's cgroup, as a directory in each hierarchy the task joins (`paths`: hierarchy -> directory)."""

    def __init__(self, name: str, paths: dict[str, Path]) -> None:
        self.name = name
        self._paths: dict[str, Path] | None = dict(paths)
        self._dirs: dict[str, str] | None = None
        # Set by CgroupManager.create: some directory was already there (an earlier life of this task, whose
        # leftovers must die before the next launch).
        self.existed = False

    @classmethod
    def at(cls, name: str, dirs: dict[str, str]) -> "TaskCgroup":
        """The task cgroup in these directories (hierarchy -> absolute path), with `paths` made on first use: a
        start needs only the procs files of a new cgroup, and seven Path objects were ~20 us of each start."""
        task = cls(name, {})
        task._paths, task._dirs = None, dict(dirs)
        return task

    @property
    def paths(self) -> dict[str, Path]:
        if self._paths is None:
            self._paths = {h: Path(d) for h, d in (self._dirs or {}).items()}
        return self._paths

    @paths.setter
    def paths(self, value: dict[str, Path]) -> None:
        self._paths, self._dirs = dict(value), None

    def dirs(self) -> dict[str, str]:
        """`paths` as strings (for a request to the launcher)."""
        return dict(self._dirs) if self._dirs is not None else {h: str(p) for h, p in self.paths.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.paths!r})"

    def procs_files(self) -> list[str]:
        """cgroup.procs files a child writes "0" to before exec: plain strings, usable after fork without imports.

        The v2 file comes first so that, on hybrid hosts, cgroup.kill covers the child from its first step.
        """
        if self._dirs is not None:
            return [f"{d}/cgroup.procs" for d in unique_dirs(self._dirs)]
        return [str(d / "cgroup.procs") for d in unique_dirs(self.paths)]

    def vacancy_files(self) -> list[list[str]]:
        """What `populated` and `pids` read, as [path, "events" | "procs"]: the launcher checks them itself before
        it respawns a task (see isolation/launcher.c, vacant)."""
        events = self.events_file()
        return ([[events, "events"]] if events else []) + [[p, "procs"] for p in self.procs_files()]

    def pids(self) -> set[int]:
        """Live members (the kernel drops a process from cgroup.procs when it exits, before it is reaped)."""
        found: set[int] = set()
        for d in unique_dirs(self.paths):
            found |= read_pids(d / "cgroup.procs")
        return found

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.paths.values())

    @abstractmethod
    def populated(self) -> bool: ...

    @abstractmethod
    def events_file(self) -> str | None: ...

    @abstractmethod
    def kill(self, timeout: float = 5.0) -> None: ...

    @abstractmethod
    def oom_kills(self) -> int: ...

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    @abstractmethod
    def update(self, limits: CgroupLimits, fresh: bool = False) -> None:
        """Write every limit. fresh: every directory was made just now and holds the kernel's defaults, so only
        the limits that differ from those need a write (a start makes a fresh cgroup; a restart reuses one)."""

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir in every hierarchy. Idempotent. Members must be gone (call kill() first)."""
        deadline = time.monotonic() + timeout
        for d in unique_dirs(self.paths):
            rmdir_retrying(d, deadline)
