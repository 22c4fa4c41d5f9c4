"""A task's environment and `${...}` interpolation, with Nomad's precedence.

Precedence (lowest first): built-in NOMAD_* variables < meta (NOMAD_META_*) < the host's environment (drivers
without a chroot, filtered by denied_envvars) < the task's `env`. `${NAME}` looks names up in that map plus node
attributes (`${node.*}`, `${attr.*}`, `${meta.*}`) and `${env["X"]}`; unknown references stay literal, as in Nomad.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Mapping

_REF = re.compile(r"\$\{\s*(env\[\"([^\"]*)\"\]|[a-zA-Z0-9_\-\.]+)\s*\}")


@dataclass(frozen=True)
class TaskPaths:
    """Where the task sees its directories (host paths for raw_exec/exec2, /alloc etc. inside exec's chroot)."""

    alloc_dir: str
    task_dir: str  # NOMAD_TASK_DIR is the task's local/ dir
    secrets_dir: str
    tmp_dir: str


_HOST_FACTS_TTL = 30.0  # Nomad fingerprints a node periodically too; a hostname change shows up within this
_host_facts: tuple[float, dict[str, str]] | None = None


def _fingerprint() -> dict[str, str]:
    u = os.uname()  # platform.uname() gives the same three fields here, for 0.05 MB of module
    try:
        machine_id = open("/etc/machine-id").read().strip()
    except OSError:
        machine_id = ""
    release = _os_release()
    return {
        "node.unique.name": socket.gethostname(),
        "node.unique.id": machine_id,
        "node.datacenter": "dc1",
        "node.region": "global",
        "node.class": "",
        "node.pool": "default",
        "attr.kernel.name": u.sysname.lower(),
        "attr.kernel.version": u.release,
        "attr.cpu.arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(u.machine, u.machine),
        "attr.unique.hostname": socket.gethostname(),
        "attr.os.name": release.get("ID", ""),
        "attr.os.version": release.get("VERSION_ID", ""),
        "attr.cpu.numcores": str(os.cpu_count() or 1),
    }


def node_attributes(node_meta: Mapping[str, str] = {}) -> dict[str, str]:
    """Nomad's node attributes for interpolation. The host facts are read at most every _HOST_FACTS_TTL seconds:
    reading them (two files, uname, hostname) on every start was a visible share of starting 1000 tasks."""
    global _host_facts
    now = time.monotonic()
    if _host_facts is None or now - _host_facts[0] > _HOST_FACTS_TTL:
        _host_facts = (now, _fingerprint())
    attrs = dict(_host_facts[1])
    for k, v in node_meta.items():
        attrs[f"meta.{k}"] = v
    return attrs


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in open("/etc/os-release"):
            k, _, v = line.strip().partition("=")
            out[k] = v.strip('"')
    except OSError:
        pass
    return out


def interpolate(text: str, variables: Mapping[str, str], host_env: Mapping[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(2) is not None:
            return host_env.get(m.group(2), m.group(0))
        return variables.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


@functools.lru_cache(maxsize=64)
def _glob_matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match | None] | None:
    # One compiled regex for all globs: every start checks each host variable against them (~50 variables times
    # a few patterns), and fnmatch per pair was a visible share of a start.
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def denied(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    match = _glob_matcher(tuple(patterns))
    return match is not None and match(name) is not None


_environ_cache: tuple[dict, dict[str, str]] | None = None


def host_environ() -> dict[str, str]:
    """A copy of os.environ. Decoding it (os.environ stores bytes and decodes each item on access) was 3% of a
    start, so the decoded copy is kept and reused while the raw items are unchanged."""
    global _environ_cache
    raw = getattr(os.environ, "_data", None)
    if not isinstance(raw, dict):
        return dict(os.environ)
    cached = _environ_cache
    if cached is None or cached[0] != raw:
        cached = _environ_cache = (dict(raw), dict(os.environ))
    return dict(cached[1])


def builtin_env(*, job: str, group: str, task: str, alloc_id: str, index: int, paths: TaskPaths,
                memory_mb: int, memory_max_mb: int, cpu_mhz: int | None, cores: str | None) -> dict[str, str]:
    env = {
        "NOMAD_ALLOC_DIR": paths.alloc_dir,
        "NOMAD_TASK_DIR": paths.task_dir,
        "NOMAD_SECRETS_DIR": paths.secrets_dir,
        "NOMAD_TASK_NAME": task,
        "NOMAD_GROUP_NAME": group,
        "NOMAD_JOB_NAME": job,
        "NOMAD_JOB_ID": job,
        "NOMAD_ALLOC_ID": alloc_id,
        "NOMAD_SHORT_ALLOC_ID": alloc_id[:8],
        "NOMAD_ALLOC_NAME": f"{job}.{group}[{index}]",
        "NOMAD_ALLOC_INDEX": str(index),
        "NOMAD_MEMORY_LIMIT": str(memory_mb),
        "NOMAD_NAMESPACE": "default",
        "NOMAD_REGION": "global",
        "NOMAD_DC": "dc1",
    }
    if memory_max_mb and memory_max_mb > 0:
        env["NOMAD_MEMORY_MAX_LIMIT"] = str(memory_max_mb)
    if cpu_mhz is not None:
        env["NOMAD_CPU_LIMIT"] = str(cpu_mhz)
    if cores:
        env["NOMAD_CPU_CORES"] = cores
    return env


def meta_env(meta: Mapping[str, str]) -> dict[str, str]:
    """NOMAD_META_<key> as written and upper-cased (dots and dashes become underscores, as Nomad does)."""
    env: dict[str, str] = {}
    for k, v in meta.items():
        env[f"NOMAD_META_{k}"] = str(v)
        env[f"NOMAD_META_{re.sub(r'[^A-Za-z0-9_]', '_', k).upper()}"] = str(v)
    return env


def build_env(*, builtins: Mapping[str, str], meta: Mapping[str, str], task_env: Mapping[str, str],
              host_env: Mapping[str, str] | None, denied_envvars: tuple[str, ...] | list[str],
              node_attrs: Mapping[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The final environment. `host_env` is None for drivers that do not pass the host's environment through."""
    host = dict(os.environ if host_env is None else host_env)
    env: dict[str, str] = dict(builtins)
    env.update(meta_env(meta))
    if host_env is not None:
        match = _glob_matcher(tuple(denied_envvars) + tuple(drop))
        env.update(host if match is None else {k: v for k, v in host.items() if match(k) is None})
    variables = {**node_attrs, **env}
    for k, v in task_env.items():
        env[k] = interpolate(str(v), variables, host)
    drop_denied(env, denied_envvars, drop)
    return env


def drop_denied(env: dict[str, str], denied_envvars: tuple[str, ...] | list[str], drop: tuple[str, ...]) -> None:
    """Remove what `denied_envvars` and the driver's own drop list (exec2's LD_*) name, whatever set it."""
    match = _glob_matcher(tuple(denied_envvars) + tuple(drop))  # one regex for both lists, looked up once
    if match is None:
        return
    for k in [k for k in env if match(k) is not None]:
        del env[k]
