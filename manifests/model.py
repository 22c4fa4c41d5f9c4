"""The manifest model: frozen dataclasses that say what to run, nothing about how.

Units: durations are float seconds, sizes are MB (ints). Equality means "same spec": the controller compares two
Task objects to decide whether a running task must restart, and caches parsed jobs as JSON (`to_dict` /
`Job.from_dict` round-trip exactly).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from manifests.frozendict import FrozenDict
from manifests.sharing import shared, short

JOB_TYPES = ("service", "batch")
RESTART_MODES = ("fail", "delay")
LIFECYCLE_HOOKS = ("prestart", "poststart", "poststop")
NETWORK_MODES = ("host", "none", "bridge")  # plus "cni/<name>", as in Nomad
ARTIFACT_MODES = ("any", "file", "dir")
TEMPLATE_CHANGE_MODES = ("noop", "restart", "signal", "script")
NAMESPACE_MODES = ("private", "host")


class _Plain:
    """to_dict/from_dict for the dataclasses below, driven by their type hints."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kwargs[f.name] = _from_plain(hints[f.name], data[f.name])
        return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    # get_type_hints re-evaluates every annotation string on each call: the daemon decodes thousands of cached
    # jobs at start, so evaluate once per class.
    return typing.get_type_hints(cls)


def _to_plain(value: Any) -> Any:
    if isinstance(value, _Plain):
        return value.to_dict()
    if isinstance(value, FrozenDict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _from_plain(args[0], value)
        return value  # unions of plain scalars (int | float): JSON already has the right type
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        return tuple(_from_plain(item_tp, v) for v in value)
    # Equal values shared and short strings interned, as the parser does (manifests.sharing): a re-adopting
    # daemon decodes every job from the store, and held 2.9 MB more at 1000 tasks than one that parsed them.
    if tp is FrozenDict:
        return shared(FrozenDict({short(k): short(v) if type(v) is str else v for k, v in value.items()}))
    if isinstance(tp, type) and issubclass(tp, _Plain):
        obj = tp.from_dict(value)
        return shared(obj) if tp in _SHARED_TYPES else obj
    if tp is float and isinstance(value, int):
        return float(value)
    if type(value) is str:
        return short(value)
    return value


@dataclass(frozen=True, slots=True)
class Mount(_Plain):
    """A host path bind-mounted into an exec task's chroot (tasksd extension, like Docker's volume mounts)."""

    source: str
    target: str
    readonly: bool = True


@dataclass(frozen=True, slots=True)
class RawExecConfig(_Plain):
    command: str
    args: tuple[str, ...] = ()
    work_dir: str | None = None
    oom_score_adj: int = 0
    pids_limit: int | None = None
    denied_envvars: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecConfig(_Plain):
    command: str
    args: tuple[str, ...] = ()
    work_dir: str | None = None
    oom_score_adj: int = 0
    pids_limit: int | None = None
    pid_mode: str | None = None  # None: the client's default_pid_mode decides
    ipc_mode: str | None = None
    cap_add: tuple[str, ...] = ()  # normalized: "CAP_NET_ADMIN" or "all"
    cap_drop: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    denied_envvars: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Exec2Config(_Plain):
    command: str
    args: tuple[str, ...] = ()
    work_dir: str | None = None
    oom_score_adj: int = 0
    pids_limit: int | None = None
    unveil: tuple[str, ...] = ()  # "MODES:PATH", checked by validation
    denied_envvars: tuple[str, ...] = ()


DriverConfig = RawExecConfig | ExecConfig | Exec2Config
CONFIG_TYPES: dict[str, type] = {"raw_exec": RawExecConfig, "exec": ExecConfig, "exec2": Exec2Config}


@dataclass(frozen=True, slots=True)
class Resources(_Plain):
    cpu: int | None = 100  # MHz; None when cores is set
    cores: int | None = None
    memory: int = 300  # MB
    memory_max: int = 0  # MB; 0 = unset, -1 = no hard limit
    secrets: int | None = None  # MB of the secrets tmpfs; None = the runtime default


@dataclass(frozen=True, slots=True)
class RestartPolicy(_Plain):
    attempts: int
    interval: float
    delay: float
    mode: str
    render_templates: bool = False

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "service": {"attempts": 2, "interval": 1800.0, "delay": 15.0, "mode": "fail"},
        "batch": {"attempts": 3, "interval": 86400.0, "delay": 15.0, "mode": "fail"},
    }

    @classmethod
    def default_for(cls, job_type: str) -> RestartPolicy:
        return cls(**cls.DEFAULTS.get(job_type, cls.DEFAULTS["service"]))


@dataclass(frozen=True, slots=True)
class LogConfig(_Plain):
    max_files: int = 10
    max_file_size: int = 10  # MB
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Artifact(_Plain):
    source: str
    destination: str = "local/"
    mode: str = "any"
    options: FrozenDict = field(default_factory=FrozenDict)
    headers: FrozenDict = field(default_factory=FrozenDict)
    chown: bool = False


@dataclass(frozen=True, slots=True)
class Template(_Plain):
    destination: str
    data: str | None = None
    source: str | None = None
    perms: str = "0644"
    env: bool = False
    change_mode: str = "restart"
    change_signal: str | None = None
    left_delimiter: str = "{{"
    right_delimiter: str = "}}"


@dataclass(frozen=True, slots=True)
class Lifecycle(_Plain):
    hook: str
    sidecar: bool = False


@dataclass(frozen=True, slots=True)
class Network(_Plain):
    mode: str = "host"


@dataclass(frozen=True, slots=True)
class Task(_Plain):
    name: str
    driver: str
    config: DriverConfig
    user: str | None = None
    env: FrozenDict = field(default_factory=FrozenDict)
    meta: FrozenDict = field(default_factory=FrozenDict)
    resources: Resources = field(default_factory=Resources)
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy.default_for("service"))
    kill_timeout: float = 5.0
    kill_signal: str = "SIGINT"
    logs: LogConfig = field(default_factory=LogConfig)
    artifacts: tuple[Artifact, ...] = ()
    templates: tuple[Template, ...] = ()
    lifecycle: Lifecycle | None = None
    leader: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        # The config's class is chosen by the driver, which type hints alone cannot express.
        config = CONFIG_TYPES[data["driver"]].from_dict(data["config"])
        task = _Plain.from_dict.__func__(cls, {**data, "config": None})  # type: ignore[attr-defined]
        return dataclasses.replace(task, config=config)


@dataclass(frozen=True, slots=True)
class Group(_Plain):
    name: str
    count: int = 1
    meta: FrozenDict = field(default_factory=FrozenDict)
    network: Network = field(default_factory=Network)
    # The group's restart block merged over the job type's defaults; None when the group has none. Tasks carry
    # the effective policy, so runtime code reads Task.restart, never this.
    restart: RestartPolicy | None = None
    tasks: tuple[Task, ...] = ()


@dataclass(frozen=True, slots=True)
class Job(_Plain):
    name: str
    type: str = "service"
    meta: FrozenDict = field(default_factory=FrozenDict)
    groups: tuple[Group, ...] = ()
    source: str | None = None


# What the parser shares too (manifests.build): values most tasks leave at a few common settings.
_SHARED_TYPES = (Resources, RestartPolicy, LogConfig, Network)
