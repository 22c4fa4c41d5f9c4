"""The daemon's own configuration (a Nomad-agent-style file): pure data with Nomad's defaults.

Parsing lives in `manifests.agent_config_load` so this module stays importable everywhere without the HCL parser.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from manifests.capabilities import NOMAD_EXEC_DEFAULT_CAPS

# Nomad's default chroot_env for the exec driver (drivers/shared/executor). Source -> destination inside the task.
DEFAULT_CHROOT_ENV: tuple[tuple[str, str], ...] = (
    ("/bin", "/bin"),
    ("/etc", "/etc"),
    ("/lib", "/lib"),
    ("/lib32", "/lib32"),
    ("/lib64", "/lib64"),
    ("/run/resolvconf", "/run/resolvconf"),
    ("/sbin", "/sbin"),
    ("/usr", "/usr"),
    ("/run/systemd/resolve", "/run/systemd/resolve"),
)

# Nomad's default allow list, in the config file's spelling ("net_bind_service").
NOMAD_DEFAULT_ALLOW_CAPS: tuple[str, ...] = tuple(sorted(c.removeprefix("CAP_").lower() for c in NOMAD_EXEC_DEFAULT_CAPS))


@dataclass(frozen=True)
class RawExecPlugin:
    enabled: bool = False
    denied_host_uids: str = ""
    denied_host_gids: str = ""
    denied_envvars: tuple[str, ...] = ()
    pids_limit: int = 0  # 0: none (raw_exec is the trusted driver); a task's pids_limit still applies


@dataclass(frozen=True)
class ExecPlugin:
    enabled: bool = True
    no_pivot_root: bool = False
    default_pid_mode: str = "private"
    default_ipc_mode: str = "private"
    allow_caps: tuple[str, ...] = NOMAD_DEFAULT_ALLOW_CAPS
    denied_host_uids: str = ""
    denied_host_gids: str = ""
    denied_envvars: tuple[str, ...] = ()
    pids_limit: int = 4096  # tasksd extension: Nomad sets none, so a fork bomb is not contained there


@dataclass(frozen=True)
class Exec2Plugin:
    enabled: bool = True
    unveil_defaults: bool = True
    unveil_paths: tuple[str, ...] = ()
    unveil_by_task: bool = False
    denied_envvars: tuple[str, ...] = ()
    pids_limit: int = 4096


@dataclass(frozen=True)
class AgentConfig:
    chroot_env: tuple[tuple[str, str], ...] = DEFAULT_CHROOT_ENV
    cgroup_parent: str = "tasksd"  # relative: below tasksd's own cgroup; absolute: from each hierarchy's root
    max_kill_timeout: float = 30.0
    gc_grace: float = 300.0
    resync_interval: float = 60.0
    spare_alloc_dirs: int = 2  # new alloc dirs made while idle, so a start renames one instead of ten mkdirs
    dynamic_user_min: int = 80000
    dynamic_user_max: int = 89999
    user_denylist: tuple[str, ...] = ("root",)  # exec/exec2 refuse these users (Nomad's default)
    meta: tuple[tuple[str, str], ...] = ()  # node meta, for ${meta.X}
    bridge_name: str = "tasksd0"
    bridge_subnet: str = "172.26.64.0/20"
    # A manifest is root's command line: by default refuse files writable by group/others or owned by another
    # user. Test setups may relax this.
    strict_manifest_permissions: bool = True
    socket_group: str | None = None
    metrics_address: str | None = None  # "127.0.0.1:9110" to also serve /metrics on TCP
    raw_exec: RawExecPlugin = field(default_factory=RawExecPlugin)
    exec: ExecPlugin = field(default_factory=ExecPlugin)
    exec2: Exec2Plugin = field(default_factory=Exec2Plugin)
    source: str | None = None
