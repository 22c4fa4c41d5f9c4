"""Which attributes and blocks each jobspec block accepts, and which Nomad ones tasksd ignores.

Ignored names are Nomad features that mean nothing on one node (placement, rollout, service discovery,
secrets backends): they load with a warning so real Nomad jobspecs keep working.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockSchema:
    attrs: frozenset[str]
    blocks: frozenset[str] = frozenset()
    repeated: frozenset[str] = frozenset()  # blocks that may appear more than once
    maps: frozenset[str] = frozenset()  # map fields: `env { ... }` and `env = { ... }` both work
    ignored: frozenset[str] = frozenset()
    hints: dict[str, str] = field(default_factory=dict)  # a better word than "ignored" for some names

    @property
    def known(self) -> frozenset[str]:
        return self.attrs | self.blocks | self.repeated | self.maps


def _s(words: str) -> frozenset[str]:
    return frozenset(words.split())


ROOT = BlockSchema(attrs=frozenset(), repeated=_s("job task"))

JOB = BlockSchema(
    attrs=_s("type"),
    repeated=_s("group"),
    maps=_s("meta"),
    ignored=_s(
        "datacenters region namespace priority all_at_once node_pool constraint affinity spread update migrate "
        "reschedule periodic parameterized multiregion vault consul vault_token consul_token ui id name "
        "vault_policies"
    ),
    hints={
        "periodic": "periodic is ignored by tasksd: the job runs as soon as it is loaded, not on a schedule",
        "parameterized": "parameterized is ignored by tasksd: the job runs as soon as it is loaded, "
        "without waiting for a dispatch",
    },
)

GROUP = BlockSchema(
    attrs=_s("count"),
    blocks=_s("network restart"),
    repeated=_s("task"),
    maps=_s("meta"),
    ignored=_s(
        "constraint affinity spread update migrate reschedule ephemeral_disk service volume scaling consul "
        "vault shutdown_delay stop_after_client_disconnect max_client_disconnect prevent_reschedule_on_lost "
        "disconnect"
    ),
)

NETWORK = BlockSchema(attrs=_s("mode"), ignored=_s("port dns hostname mbits"))

TASK = BlockSchema(
    attrs=_s("driver user kill_timeout kill_signal leader"),
    blocks=_s("config resources restart logs lifecycle"),
    repeated=_s("artifact template"),
    maps=_s("env meta"),
    ignored=_s(
        "constraint affinity service vault consul identity csi_plugin volume_mount scaling dispatch_payload "
        "shutdown_delay kind action schedule"
    ),
)

RESOURCES = BlockSchema(attrs=_s("cpu cores memory memory_max secrets"), ignored=_s("device network numa disk iops"))
RESTART = BlockSchema(attrs=_s("attempts interval delay mode render_templates"))
LOGS = BlockSchema(attrs=_s("max_files max_file_size disabled enabled"))
LIFECYCLE = BlockSchema(attrs=_s("hook sidecar"))
ARTIFACT = BlockSchema(attrs=_s("source destination mode chown"), maps=_s("options headers"))
TEMPLATE = BlockSchema(
    attrs=_s("data source destination perms env change_mode change_signal left_delimiter right_delimiter"),
    ignored=_s("splay wait vault_grace uid gid error_on_missing_key change_script once"),
)
MOUNT = BlockSchema(attrs=_s("source target readonly"))

_COMMON_CONFIG = "command args work_dir oom_score_adj pids_limit denied_envvars"
CONFIG = {
    "raw_exec": BlockSchema(attrs=_s(_COMMON_CONFIG), ignored=_s("cgroup_v2_override cgroup_v1_override")),
    "exec": BlockSchema(attrs=_s(_COMMON_CONFIG + " pid_mode ipc_mode cap_add cap_drop"), repeated=_s("mount")),
    "exec2": BlockSchema(attrs=_s(_COMMON_CONFIG + " unveil")),
}

# Drivers people will try, to say "not supported" rather than "unknown".
OTHER_NOMAD_DRIVERS = frozenset(
    "docker podman java qemu containerd-driver containerd nspawn lxc rkt singularity firecracker "
    "iis pot jail-task-driver ecs".split()
)
