"""Load the daemon's config file (HCL in the style of a Nomad agent file, or the same tree in YAML).

Every problem names the file and the field; unknown fields are errors (a typo in a security setting must not be
silently ignored). Accepts Nomad's plugin name "nomad-driver-exec2" for exec2.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from manifests.agent_config import AgentConfig, Exec2Plugin, ExecPlugin, RawExecPlugin
from manifests.durations import parse_duration
from manifests.problems import Problem
from manifests.raw import RawBlock

# Nomad writes `chroot_env { "/src" = "/dst" }`, which python-hcl2 cannot parse (quoted attribute names);
# `chroot_env = { ... }` is the same map as an object expression.
_CHROOT_BLOCK = re.compile(r"^(\s*chroot_env)\s*\{", re.MULTILINE)


class ConfigError(Exception):
    def __init__(self, path: str, problems: list[Problem]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(p.format(path) for p in problems))


def load_agent_config(path: str | Path | None) -> AgentConfig:
    if path is None:
        return AgentConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(str(p), [Problem(f"cannot read config: {e.strerror}")]) from None
    return parse_agent_config(text, str(p))


def parse_agent_config(text: str, path: str = "<config>") -> AgentConfig:
    if path.endswith((".yaml", ".yml")):
        from manifests.yaml_loader import parse_yaml

        root, problems = parse_yaml(text)
    else:
        from manifests.hcl import parse_hcl

        root, problems = parse_hcl(_CHROOT_BLOCK.sub(r"\1 = {", text))
    if root is None or any(p.is_error for p in problems):
        raise ConfigError(path, [p for p in problems if p.is_error])
    b = _Builder()
    cfg = b.build(root)
    if b.problems:
        raise ConfigError(path, b.problems)
    return replace(cfg, source=path)


_PLUGIN_FIELDS = {
    "raw_exec": RawExecPlugin,
    "exec": ExecPlugin,
    "exec2": Exec2Plugin,
    "nomad-driver-exec2": Exec2Plugin,
}


class _Builder:
    def __init__(self):
        self.problems: list[Problem] = []

    def err(self, where: str, msg: str, node: Any = None) -> None:
        self.problems.append(Problem(msg, where, getattr(node, "line", None), getattr(node, "column", None)))

    def build(self, root: RawBlock) -> AgentConfig:
        kw: dict[str, Any] = {}
        for name, attr in root.attrs.items():
            if name in ("socket_group", "metrics_address"):
                kw[name] = self.string(name, attr)
            else:
                self.err(name, f"unknown setting {name!r} (expected client, plugin, socket_group, metrics_address)", attr)
        for block in root.blocks:
            if block.type == "client":
                kw.update(self.client(block))
            elif block.type == "plugin":
                if not block.labels or block.labels[0] not in _PLUGIN_FIELDS:
                    label = block.labels[0] if block.labels else ""
                    self.err(f'plugin "{label}"', f"unknown plugin {label!r} (tasksd has raw_exec, exec, exec2)", block)
                    continue
                name = "exec2" if block.labels[0] == "nomad-driver-exec2" else block.labels[0]
                kw[name] = self.plugin(block, _PLUGIN_FIELDS[block.labels[0]])
            else:
                self.err(block.type, f"unknown block {block.type!r}", block)
        return AgentConfig(**kw)

    def string(self, where: str, attr) -> str:
        if not isinstance(attr.value, str):
            self.err(where, "must be a string", attr)
            return ""
        return attr.value

    def duration(self, where: str, attr) -> float:
        try:
            return parse_duration(attr.value)
        except (ValueError, TypeError) as e:
            self.err(where, str(e), attr)
            return 0.0

    def integer(self, where: str, attr) -> int:
        if isinstance(attr.value, bool) or not isinstance(attr.value, int):
            self.err(where, "must be an integer", attr)
            return 0
        return attr.value

    def client(self, block: RawBlock) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        for name, attr in block.attrs.items():
            where = f"client.{name}"
            if name == "chroot_env":
                if not isinstance(attr.value, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) and k.startswith("/") and v.startswith("/")
                        and "\0" not in k + v for k, v in attr.value.items()):
                    self.err(where, 'must map absolute host paths to absolute task paths: { "/src" = "/dst" }', attr)
                else:
                    kw["chroot_env"] = tuple(attr.value.items())
            elif name in ("max_kill_timeout", "gc_grace", "resync_interval"):
                kw[name] = self.duration(where, attr)
            elif name == "spare_alloc_dirs":
                v = self.integer(where, attr)
                if not 0 <= v <= 64:
                    self.err(where, f"must be between 0 and 64 (got {v})", attr)
                kw[name] = v
            elif name == "cgroup_parent":
                v = self.string(where, attr)
                if ".." in v.split("/") or "\0" in v:
                    self.err(where, "must not contain '..'", attr)
                kw[name] = v
            elif name in ("bridge_network_name", "bridge_network_subnet"):
                kw["bridge_" + name.split("_")[-1]] = self.string(where, attr)
            elif name == "strict_manifest_permissions":
                if not isinstance(attr.value, bool):
                    self.err(where, "must be true or false", attr)
                kw[name] = bool(attr.value)
            elif name == "user_denylist":
                if not isinstance(attr.value, list) or not all(isinstance(u, str) for u in attr.value):
                    self.err(where, "must be a list of user names", attr)
                else:
                    kw[name] = tuple(attr.value)
            else:
                self.err(where, f"unknown setting {name!r}", attr)
        for sub in block.blocks:
            if sub.type == "users":
                for name, attr in sub.attrs.items():
                    if name in ("dynamic_user_min", "dynamic_user_max"):
                        kw[name] = self.integer(f"client.users.{name}", attr)
                    else:
                        self.err(f"client.users.{name}", f"unknown setting {name!r}", attr)
            elif sub.type == "meta":
                kw["meta"] = tuple((k, str(a.value)) for k, a in sub.attrs.items())
            else:
                self.err(f"client.{sub.type}", f"unknown block {sub.type!r}", sub)
        lo, hi = kw.get("dynamic_user_min", 80000), kw.get("dynamic_user_max", 89999)
        if lo > hi or lo < 1000:
            self.err("client.users", f"dynamic_user_min ({lo}) must be >= 1000 and <= dynamic_user_max ({hi})", block)
        return kw

    def plugin(self, block: RawBlock, cls: type) -> Any:
        where = f'plugin "{block.labels[0]}"'
        configs = block.blocks_of("config")
        for other in block.blocks:
            if other.type != "config":
                self.err(f"{where} > {other.type}", "unknown block (expected config)", other)
        if not configs:
            return cls()
        fields = cls.__dataclass_fields__
        kw: dict[str, Any] = {}
        for name, attr in configs[0].attrs.items():
            w = f"{where} > config.{name}"
            if name not in fields:
                self.err(w, f"unknown setting {name!r} (known: {', '.join(sorted(fields))})", attr)
                continue
            default = fields[name].default
            v = attr.value
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    self.err(w, "must be true or false", attr)
                    continue
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    self.err(w, "must be an integer", attr)
                    continue
            elif isinstance(default, tuple):
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    self.err(w, "must be a list of strings", attr)
                    continue
                v = tuple(x.lower() if name == "allow_caps" else x for x in v)
            elif isinstance(default, str):
                if not isinstance(v, str):
                    self.err(w, "must be a string", attr)
                    continue
            if name in ("default_pid_mode", "default_ipc_mode") and v not in ("private", "host"):
                self.err(w, 'must be "private" or "host"', attr)
                continue
            kw[name] = v
        return cls(**kw)
