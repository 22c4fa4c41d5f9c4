"""Semantic rules on model objects, as pure functions.

Each check returns `(field, message)` pairs, field relative to the checked object ("memory_max", "unveil[1]").
The decoder (build.py) calls them while it walks the manifest, because it knows where each field was written
and can attach a `where` and a line number; the rules themselves stay independent of any syntax.
"""
from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Mapping

from manifests.durations import format_duration
from manifests.model import (
    ARTIFACT_MODES,
    LIFECYCLE_HOOKS,
    NAMESPACE_MODES,
    NETWORK_MODES,
    RESTART_MODES,
    TEMPLATE_CHANGE_MODES,
    Artifact,
    Exec2Config,
    ExecConfig,
    Group,
    Job,
    LogConfig,
    Mount,
    Resources,
    RestartPolicy,
    Template,
)

Finding = tuple[str, str]

MAX_NAME = 128
MIN_MEMORY_MB = 10
MIN_RESTART_INTERVAL = 5.0
RESERVED_TASK_NAMES = frozenset({"alloc"})  # the alloc dir holds alloc/ next to the task dirs
_CHECKSUM_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_UNVEIL_MODES = frozenset("rwxc")


def check_name(kind: str, name: str) -> list[str]:
    """Job, group and task names become directory, cgroup and log file names: keep them path-safe."""
    out = []
    if not name:
        return [f"{kind} name must not be empty"]
    if len(name) > MAX_NAME:
        out.append(f"{kind} name is longer than {MAX_NAME} characters")
    if "/" in name:
        out.append(f"{kind} name {name!r} must not contain '/'")
    if "\0" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        out.append(f"{kind} name {name!r} must not contain control characters or NUL")
    if name.startswith("."):
        out.append(f"{kind} name {name!r} must not start with '.' (hidden files, '..')")
    elif ".." in name:
        out.append(f"{kind} name {name!r} must not contain '..'")
    if kind == "task" and name in RESERVED_TASK_NAMES:
        out.append(f"task name {name!r} is reserved (it would collide with the shared alloc directory)")
    return out


def check_resources(r: Resources) -> list[Finding]:
    out: list[Finding] = []
    if r.cpu is not None and r.cpu < 1:
        out.append(("cpu", f"cpu must be at least 1 MHz, got {r.cpu}"))
    if r.cores is not None and r.cores < 1:
        out.append(("cores", f"cores must be at least 1, got {r.cores}"))
    if r.memory < MIN_MEMORY_MB:
        out.append(("memory", f"memory must be at least {MIN_MEMORY_MB} MB, got {r.memory}"))
    if r.memory_max not in (0, -1) and r.memory_max < r.memory:
        out.append(
            ("memory_max", f"memory_max ({r.memory_max} MB) must be >= memory ({r.memory} MB), or -1 for no limit")
        )
    if r.memory_max < -1:
        out.append(("memory_max", f"memory_max must be -1 (no limit), 0 (unset) or >= memory, got {r.memory_max}"))
    if r.secrets is not None and r.secrets < 1:
        out.append(("secrets", f"secrets must be at least 1 MB, got {r.secrets}"))
    return out


def check_restart(p: RestartPolicy) -> list[Finding]:
    out: list[Finding] = []
    if p.mode not in RESTART_MODES:
        out.append(("mode", f"mode must be one of {', '.join(RESTART_MODES)}, got {p.mode!r}"))
    if p.attempts < 0:
        out.append(("attempts", f"attempts must be >= 0, got {p.attempts}"))
    if p.attempts == 0 and p.mode == "delay":
        out.append(("attempts", 'attempts = 0 is only valid with mode = "fail"'))
    if p.interval < MIN_RESTART_INTERVAL:
        out.append(("interval", f"interval must be at least {format_duration(MIN_RESTART_INTERVAL)}, "
                                f"got {format_duration(p.interval)}"))
    if p.delay < 0:
        out.append(("delay", f"delay must not be negative, got {format_duration(p.delay)}"))
    if p.attempts > 0 and p.attempts * p.delay > p.interval:
        out.append(
            (
                "delay",
                f"attempts x delay ({p.attempts} x {format_duration(p.delay)}) must not exceed "
                f"interval ({format_duration(p.interval)})",
            )
        )
    return out


def check_logs(logs: LogConfig) -> list[Finding]:
    out: list[Finding] = []
    if logs.max_files < 1:
        out.append(("max_files", f"max_files must be at least 1, got {logs.max_files}"))
    if logs.max_file_size < 1:
        out.append(("max_file_size", f"max_file_size must be at least 1 MB, got {logs.max_file_size}"))
    return out


def check_env(env: Mapping[str, str]) -> list[Finding]:
    """Names and values the kernel's environment block can carry (a "=" in a name, or a NUL, cannot be)."""
    out: list[Finding] = []
    for k, v in env.items():
        if not k or "=" in k or "\0" in k:
            out.append(("env", f"env name {k!r} must be non-empty and contain no '=' or NUL byte"))
        elif "\0" in v:
            out.append(("env", f"env {k!r}: the value contains a NUL byte"))
    return out


def check_kill_timeout(seconds: float) -> list[Finding]:
    return [("kill_timeout", "kill_timeout must not be negative")] if seconds < 0 else []


def check_common_config(config: ExecConfig | Exec2Config | object) -> list[Finding]:
    out: list[Finding] = []
    command = getattr(config, "command", "")
    if not command or not command.strip():
        out.append(("command", "command is required"))
    work_dir = getattr(config, "work_dir", None)
    if work_dir is not None and not work_dir.startswith("/"):
        out.append(("work_dir", f"work_dir must be an absolute path, got {work_dir!r}"))
    adj = getattr(config, "oom_score_adj", 0)
    if not 0 <= adj <= 1000:
        out.append(("oom_score_adj", f"oom_score_adj must be between 0 and 1000, got {adj}"))
    pids = getattr(config, "pids_limit", None)
    if pids is not None and pids < 1:
        out.append(("pids_limit", f"pids_limit must be at least 1, got {pids}"))
    return out


def check_exec_config(config: ExecConfig) -> list[Finding]:
    out = check_common_config(config)
    for field in ("pid_mode", "ipc_mode"):
        value = getattr(config, field)
        if value is not None and value not in NAMESPACE_MODES:
            out.append((field, f"{field} must be one of {', '.join(NAMESPACE_MODES)}, got {value!r}"))
    for i, m in enumerate(config.mounts):
        out.extend((f"mount[{i}].{f}", msg) for f, msg in check_mount(m))
    return out


def check_mount(m: Mount) -> list[Finding]:
    out: list[Finding] = []
    for field in ("source", "target"):
        value = getattr(m, field)
        if not value.startswith("/"):
            out.append((field, f"{field} must be an absolute path, got {value!r}"))
        elif ".." in value.split("/"):
            out.append((field, f"{field} must not contain '..', got {value!r}"))
    return out


def check_exec2_config(config: Exec2Config) -> list[Finding]:
    out = check_common_config(config)
    for i, entry in enumerate(config.unveil):
        msg = check_unveil(entry)
        if msg:
            out.append((f"unveil[{i}]", msg))
    return out


def check_unveil(entry: str) -> str | None:
    """`MODES:PATH`, split at the last ':' as exec2 does; MODES a non-empty subset of r, w, x, c."""
    modes, sep, path = entry.rpartition(":")
    if not sep:
        return f"unveil entry {entry!r} must look like MODES:PATH, e.g. \"r:/etc/mime.types\""
    if not modes or not set(modes) <= _UNVEIL_MODES:
        return f"unveil entry {entry!r}: modes must be a non-empty combination of r, w, x, c"
    if not path.startswith("/"):
        return f"unveil entry {entry!r}: path must be absolute"
    return None


def check_artifact(a: Artifact) -> list[Finding]:
    out: list[Finding] = []
    if not a.source:
        out.append(("source", "source is required"))
    if _escapes_alloc(a.destination):
        out.append(("destination", f"destination {a.destination!r} escapes the allocation directory"))
    if a.mode not in ARTIFACT_MODES:
        out.append(("mode", f"mode must be one of {', '.join(ARTIFACT_MODES)}, got {a.mode!r}"))
    checksum = a.options.get("checksum")
    if checksum is not None:
        kind, sep, digest = str(checksum).partition(":")
        if not sep or kind not in _CHECKSUM_LENGTHS:
            out.append(("options.checksum", f"checksum must be TYPE:HEX with TYPE one of "
                                             f"{', '.join(_CHECKSUM_LENGTHS)}, got {checksum!r}"))
        elif len(digest) != _CHECKSUM_LENGTHS[kind] or not re.fullmatch(r"[0-9a-fA-F]+", digest):
            out.append(("options.checksum", f"{kind} checksum must be {_CHECKSUM_LENGTHS[kind]} hex digits"))
    return out


def check_template(t: Template) -> list[Finding]:
    out: list[Finding] = []
    if t.data is None and t.source is None:
        out.append(("data", "a template needs data or source"))
    if t.data is not None and t.source is not None:
        out.append(("source", "a template takes data or source, not both"))
    if not t.destination:
        out.append(("destination", "destination is required"))
    elif _escapes_alloc(t.destination):
        out.append(("destination", f"destination {t.destination!r} escapes the allocation directory"))
    if not re.fullmatch(r"0?[0-7]{3}", t.perms):
        out.append(("perms", f"perms must be an octal mode such as \"0644\", got {t.perms!r}"))
    if t.change_mode not in TEMPLATE_CHANGE_MODES:
        out.append(("change_mode", f"change_mode must be one of {', '.join(TEMPLATE_CHANGE_MODES)}, "
                                   f"got {t.change_mode!r}"))
    if t.change_mode == "script":
        out.append(("change_mode", 'change_mode = "script" is not supported by tasksd (use "signal", "noop" '
                                   'or "restart")'))
    if t.change_mode == "signal" and not t.change_signal:
        out.append(("change_signal", 'change_mode = "signal" needs change_signal'))
    if not t.left_delimiter or not t.right_delimiter:
        out.append(("left_delimiter", "template delimiters must not be empty"))
    elif t.data:
        for name in sorted(template_calls(t.data, t.left_delimiter, t.right_delimiter)):
            if (msg := forbidden_template_function(name)) is not None:
                out.append(("data", msg))
    return out


TEMPLATE_FORBIDDEN: dict[str, str] = {
    **{f: "Consul" for f in ("key", "keyExists", "keyOrDefault", "ls", "safeLs", "tree", "safeTree", "service",
                             "services", "connect", "caLeaf", "caRoots", "node", "nodes", "datacenters")},
    **{f: "Vault" for f in ("secret", "secrets", "pkiCert")},
    **{f: "the Nomad servers" for f in ("nomadVar", "nomadVarList", "nomadVarListSafe", "nomadVarExists",
                                         "nomadService", "nomadServices", "nomadNamespaces")},
}
# The daemon renders templates as root: functions that would act on the host are refused, not emulated.
TEMPLATE_UNSAFE: dict[str, str] = {
    "file": "reads host files as root", "writeToFile": "writes host files as root",
    "executeTemplate": "is not supported", "plugin": "runs host programs as root", "sockaddr": "is not supported",
    "timestamp": "is not supported (templates render deterministically)"}


def forbidden_template_function(name: str) -> str | None:
    if name in TEMPLATE_FORBIDDEN:
        return (f"template function {name!r} needs {TEMPLATE_FORBIDDEN[name]}, which tasksd does not have; "
                f"put the value in the job (env, meta) or an artifact instead")
    if name in TEMPLATE_UNSAFE:
        return f"template function {name!r} {TEMPLATE_UNSAFE[name]}"
    return None


def template_calls(text: str, left: str = "{{", right: str = "}}") -> set[str]:
    """Bare identifiers inside the template's actions (string literals and comments removed): the functions it
    calls, found without parsing so validation can reject cluster-only functions early."""
    names: set[str] = set()
    pattern = re.escape(left) + r"(.*?)" + re.escape(right)
    for m in re.finditer(pattern, text, re.S):
        body = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`|/\*.*?\*/', " ", m.group(1), flags=re.S)
        names.update(re.findall(r"(?<![\w.$])[A-Za-z_]\w*", body))
    return names


def _escapes_alloc(dest: str) -> bool:
    # Relative to <alloc>/<task>/; one level up is the alloc dir itself, which is allowed ("../alloc/data").
    norm = posixpath.normpath(posixpath.join("task", dest.lstrip("/")))
    return norm == ".." or norm.startswith("../")


def check_lifecycle_hook(hook: str) -> list[Finding]:
    if hook not in LIFECYCLE_HOOKS:
        return [("hook", f"hook must be one of {', '.join(LIFECYCLE_HOOKS)}, got {hook!r}")]
    return []


def check_network_mode(mode: str) -> list[Finding]:
    if mode in NETWORK_MODES or (mode.startswith("cni/") and len(mode) > 4):
        return []
    return [("mode", f"network mode must be one of {', '.join(NETWORK_MODES)} or cni/<name>, got {mode!r}")]


def check_group(g: Group) -> list[Finding]:
    """Rules across the tasks of a group (each task's own rules are checked where it is decoded)."""
    out: list[Finding] = []
    if g.count < 0:
        out.append(("count", f"count must be >= 0, got {g.count}"))
    for name, n in Counter(t.name for t in g.tasks).items():
        if n > 1:
            out.append((f'task "{name}"', f"task name {name!r} is used {n} times in this group"))
    leaders = [t.name for t in g.tasks if t.leader]
    if len(leaders) > 1:
        out.append(("leader", f"only one task may be the leader, got {', '.join(leaders)}"))
    return out


def check_job(j: Job) -> list[Finding]:
    out: list[Finding] = []
    if not j.groups:
        out.append(("group", "a job needs at least one group"))
    for name, n in Counter(g.name for g in j.groups).items():
        if n > 1:
            out.append((f'group "{name}"', f"group name {name!r} is used {n} times in this job"))
    return out
