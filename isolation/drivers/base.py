"""The driver interface, modelled on Nomad's DriverPlugin, and the plain data it exchanges.

A TaskHandle is plain data (to_dict/from_dict) so the controller persists it and, after a daemon restart, gives it
back to `recover`. Identity is boot id + pid + process start time + cgroup membership, never a pid alone.
"""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from manifests.agent_config import AgentConfig
from manifests.digest import sha256_hex


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str = ""


@dataclass(frozen=True)
class TaskContext:
    """Everything a driver needs to start one task instance."""

    job: Any  # manifests.model.Job
    group: Any  # manifests.model.Group
    task: Any  # manifests.model.Task
    index: int
    alloc_id: str
    config: AgentConfig
    cpuset: str | None = None  # exclusive cores reserved by the controller for resources.cores
    netns: str | None = None  # the group's network namespace path (bridge mode), set by the controller
    key: str | None = None  # the launcher key, chosen (and persisted) by the controller before the spawn
    # The controller saw this task's cgroup empty after its last run exited, in this daemon's lifetime: nothing
    # can have entered it since (only a member can fork into it), so the start need not kill leftovers first.
    cgroup_empty: bool = False
    # The controller's restart policy would restart this run at once whatever its exit: the launcher may do it
    # itself (see TaskHandle.armed).
    arm: bool = False

    @property
    def task_id(self) -> str:
        # Interned: the handle keeps it, and the controller's maps key on the same string.
        return sys.intern(f"{self.job.name}/{self.group.name}/{self.index}/{self.task.name}")


@dataclass(frozen=True, slots=True)
class TaskHandle:
    key: str  # the launcher's name for this spawn
    task_id: str
    driver: str
    pid: int
    start_time: int  # clock ticks since boot, /proc/PID/stat field 22
    boot_id: str
    cgroup: str  # the task cgroup's name below the parent
    alloc_id: str
    alloc_dir: str
    task_dir: str
    started_at: float
    oom_baseline: int = 0
    uid: int | None = None
    dynamic_uid: bool = False
    netns: str | None = None
    pid_ns: bool = False  # PID 1 of its own pid namespace (signals it does not handle are dropped)
    cpuset: str | None = None  # reserved cores ("0,1")
    # Its spawn was armed: the launcher starts its successor (as respawn_key(key)) itself if it exits, unless
    # disarmed since (see isolation/launcher.c on respawns). False for a run the launcher made itself; the daemon
    # re-arms those without a new handle, so this is what the spawn asked, not the launcher's state now.
    armed: bool = False
    # What `exec` into the task and re-rendering its templates need (launch spec: root, caps, Landlock, env...).
    # Several KB per task: the controller keeps it in its store and holds handles without it (see without_exec_env).
    exec_env: dict = field(default_factory=dict)

    def without_exec_env(self) -> TaskHandle:
        return replace(self, exec_env={}) if self.exec_env else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskHandle:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        env = d.get("exec_env") or {}
        if env and "pid_ns" not in d:
            # Written by a version that kept these only inside exec_env.
            d["pid_ns"] = bool(((env.get("spec") or {}).get("namespaces") or {}).get("pid"))
            d["cpuset"] = env.get("cpuset")
        for k in ("task_id", "driver", "boot_id"):  # shared with the record, or by every handle (the boot id)
            if type(d.get(k)) is str:
                d[k] = sys.intern(d[k])
        return cls(**d)


@dataclass(frozen=True)
class ExitResult:
    exit_code: int | None
    signal: int | None = None
    oom_killed: bool = False
    error: str | None = None  # set when the task never started, or its exit status is unknown
    finished_at: float | None = None
    # The launcher already started the next run (the exited one was armed): its handle, registered for its exit.
    respawned: TaskHandle | None = field(default=None, compare=False)
    respawn_error: str | None = None  # armed, but the launcher did not respawn it (why); the daemon decides

    @property
    def successful(self) -> bool:
        return self.exit_code == 0 and self.signal is None and not self.oom_killed and self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in _EXIT_FIELDS}
        if self.respawn_error is not None:
            d["respawn_error"] = self.respawn_error
        return d


_EXIT_FIELDS = ("exit_code", "signal", "oom_killed", "error", "finished_at")


def respawn_key(key: str) -> str:
    """The launcher key of the run that replaces run `key` if the launcher respawns it. Derived, not drawn: the
    daemon stores a key before its process exists, and storing `key` stores its successor's too."""
    base = key.rsplit(".", 1)[0]
    return f"{base}.{sha256_hex(key.encode())[:8]}"


UNKNOWN_EXIT = "unknown: exited while tasksd was down"


class StartError(Exception):
    """The task could not be started (bad command, refused user, missing capability...). Message is for users."""


class Driver(ABC):
    name: str

    @abstractmethod
    def fingerprint(self) -> Health: ...

    @abstractmethod
    def start(self, ctx: TaskContext) -> TaskHandle: ...

    @abstractmethod
    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None: ...

    @abstractmethod
    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> ExitResult: ...

    @abstractmethod
    def destroy(self, handle: TaskHandle, keep_identity: bool = False, known_empty: bool = False) -> None:
        """known_empty: left_nothing said so just now, so there is nothing to kill."""

    def left_nothing(self, handle: TaskHandle) -> bool:
        """True when no process of the exited task is left (nothing it forked lives on): destroy then kills
        nothing and cannot block, so a caller may run it inline. False when unsure."""
        return False

    @abstractmethod
    def signal(self, handle: TaskHandle, signal: str) -> None: ...

    @abstractmethod
    def stats(self, handle: TaskHandle) -> dict[str, Any]: ...

    @abstractmethod
    def recover(self, handle: TaskHandle) -> ExitResult | None:
        """Re-attach after a daemon restart. None: running and attached; an ExitResult: it is gone."""

    @abstractmethod
    def exec(self, handle: TaskHandle, argv: list[str], fds: list[int], tty: bool = False) -> int:
        """Start argv inside the running task with the given stdio fds; returns the pid."""
