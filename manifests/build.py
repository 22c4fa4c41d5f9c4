"""RawBlock tree -> model, collecting every problem in one pass.

Decoding checks types and names (unknown attributes, cluster-only ones, durations, signals, capabilities) and
calls the pure rules of validate.py on each object as soon as it exists, attaching the `where` and the line the
field was written on.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from manifests import schema, validate
from manifests.capabilities import normalize_cap
from manifests.durations import parse_duration
from manifests.frozendict import FrozenDict
from manifests.model import (
    CONFIG_TYPES,
    JOB_TYPES,
    Artifact,
    Group,
    Job,
    Lifecycle,
    LogConfig,
    Mount,
    Network,
    Resources,
    RestartPolicy,
    Task,
    Template,
)
from manifests.problems import ERROR, WARNING, Problem
from manifests.raw import RawAttr, RawBlock, block_where, join_where
from manifests.sharing import shared
from manifests.signals import normalize_signal

_MISSING = object()
_JOB_TYPE_ALIASES = {"system": "service", "sysbatch": "batch"}


class _Reader:
    """One block being decoded: typed getters that report problems instead of raising."""

    def __init__(self, raw: RawBlock, where: str, problems: list[Problem], sch: schema.BlockSchema) -> None:
        self.raw, self.where, self.problems, self.schema = raw, where, problems, sch
        self._check_names()

    # -- reporting -------------------------------------------------------------------------------------------
    def error(self, field: str, message: str, node: RawAttr | RawBlock | None = None) -> None:
        self._add(field, message, node, ERROR)

    def warn(self, field: str, message: str, node: RawAttr | RawBlock | None = None) -> None:
        self._add(field, message, node, WARNING)

    def _add(self, field: str, message: str, node: RawAttr | RawBlock | None, severity: str) -> None:
        if node is None:
            node = self._node_for(field)
        where = join_where(self.where, field) if field else self.where
        self.problems.append(Problem(message, where, node.line, node.column, severity))

    def _node_for(self, field: str) -> RawAttr | RawBlock:
        head = field.split(".", 1)[0].split("[", 1)[0].split(" ", 1)[0]
        if head in self.raw.attrs:
            return self.raw.attrs[head]
        for b in self.raw.blocks:
            if b.type == head:
                return b
        return self.raw

    def report(self, findings: Iterable[tuple[str, str]]) -> None:
        for field, message in findings:
            self.error(field, message)

    # -- names -----------------------------------------------------------------------------------------------
    def _check_names(self) -> None:
        sch = self.schema
        for name, attr in self.raw.attrs.items():
            if name in sch.attrs or name in sch.maps:
                continue
            if name in sch.ignored:
                self.warn(name, sch.hints.get(name, f"{name} is ignored by tasksd"), attr)
            elif name in sch.blocks or name in sch.repeated:
                self.error(name, f"{name} is a block: write `{name} {{ ... }}`", attr)
            else:
                self.error(name, f"unknown attribute {name!r}{self._hint(name)}", attr)
        counts: dict[str, int] = {}
        for b in self.raw.blocks:
            counts[b.type] = counts.get(b.type, 0) + 1
            if b.type in sch.blocks or b.type in sch.repeated or b.type in sch.maps:
                if b.type in sch.maps and b.type in self.raw.attrs:
                    self.error(b.type, f"{b.type} is set twice (as a block and as an attribute)", b)
                if counts[b.type] == 2 and b.type not in sch.repeated:
                    self.error(b.type, f"only one {b.type} block is allowed here", b)
            elif b.type in sch.ignored:
                if counts[b.type] == 1:
                    self.warn(b.type, sch.hints.get(b.type, f"{b.type} is ignored by tasksd"), b)
            elif b.type in sch.attrs:
                self.error(b.type, f"{b.type} is an attribute: write `{b.type} = ...`", b)
            else:
                self.error(b.type, f"unknown block {b.type!r}{self._hint(b.type)}", b)

    def _hint(self, name: str) -> str:
        candidates = sorted(self.schema.known | self.schema.ignored)
        import difflib  # only for a manifest with a mistake

        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return f" (did you mean {close[0]!r}?)" if close else ""

    # -- getters ---------------------------------------------------------------------------------------------
    def _get(self, name: str) -> Any:
        attr = self.raw.attrs.get(name)
        return _MISSING if attr is None else attr.value

    def has(self, name: str) -> bool:
        return name in self.raw.attrs

    def str(self, name: str, default: Any = None) -> Any:
        v = self._get(name)
        if v is _MISSING or v is None:
            return default
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if not isinstance(v, str):
            self.error(name, f"{name} must be a string, got {_kind(v)}")
            return default
        return v

    def int(self, name: str, default: Any = None) -> Any:
        v = self._get(name)
        if v is _MISSING or v is None:
            return default
        out = _as_int(v)
        if out is None:
            self.error(name, f"{name} must be a whole number, got {v!r}")
            return default
        return out

    def bool(self, name: str, default: bool = False) -> bool:
        v = self._get(name)
        if v is _MISSING or v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        self.error(name, f"{name} must be true or false, got {v!r}")
        return default

    def duration(self, name: str, default: Any = None) -> Any:
        v = self._get(name)
        if v is _MISSING or v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            self.error(name, f"{name} must be a duration such as \"30s\", got {_kind(v)}")
            return default
        if not isinstance(v, str):
            self.warn(name, f"{name} = {v} is taken as {v} seconds; write it as a duration such as \"{v}s\"")
            return float(v)
        try:
            return parse_duration(v)
        except ValueError as e:
            self.error(name, str(e))
            return default

    def str_list(self, name: str) -> tuple[str, ...]:
        v = self._get(name)
        if v is _MISSING or v is None:
            return ()
        if not isinstance(v, list):
            self.error(name, f"{name} must be a list of strings, got {_kind(v)}")
            return ()
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                out.append(str(item))  # as Nomad's type conversion does: args = [8080] means "8080"
            else:
                self.error(f"{name}[{i}]", f"{name}[{i}] must be a string, got {_kind(item)}")
        return tuple(out)

    def map(self, name: str) -> FrozenDict:
        """A map of strings, written as an attribute (`env = {...}`) or a block (`env { ... }`)."""
        items: dict[str, Any] = {}
        v = self._get(name)
        if v is not _MISSING and v is not None:
            if not isinstance(v, dict):
                self.error(name, f"{name} must be a map of strings, got {_kind(v)}")
            else:
                items.update(v)
        for b in self.raw.blocks_of(name):
            for sub in b.blocks:
                self.error(f"{name}.{sub.type}", f"{name} holds only key = value pairs, not blocks", sub)
            items.update({k: a.value for k, a in b.attrs.items()})
        out = {}
        for k, value in items.items():
            if isinstance(value, bool):
                out[k] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                out[k] = str(value)
            else:
                self.error(f"{name}.{k}", f"{name}.{k} must be a string, got {_kind(value)}")
        return shared(FrozenDict(out))

    def block(self, name: str) -> RawBlock | None:
        found = self.raw.blocks_of(name)
        return found[0] if found else None

    def blocks(self, name: str) -> list[RawBlock]:
        return self.raw.blocks_of(name)

    def child(self, raw: RawBlock, sch: schema.BlockSchema, field: str | None = None) -> _Reader:
        where = join_where(self.where, field) if field else block_where(self.where, raw)
        return _Reader(raw, where, self.problems, sch)


def _kind(v: Any) -> str:
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a map"
    if v is None:
        return "null"
    return repr(v)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


# -- the jobspec ------------------------------------------------------------------------------------------------


def build_jobs(root: RawBlock, source: str | None, problems: list[Problem]) -> list[Job]:
    """Decode the root of one manifest file: one `job`, or any number of bare `task` blocks."""
    top = _Reader(root, "", problems, schema.ROOT)
    jobs_raw = top.blocks("job")
    tasks_raw = top.blocks("task")
    if not jobs_raw and not tasks_raw:
        if not root.attrs and not root.blocks:
            problems.append(Problem("the manifest is empty: expected a job block or task blocks", line=None))
        return []
    if jobs_raw and tasks_raw:
        top.error("task", "a file holds either one job or bare task blocks, not both", tasks_raw[0])
    for extra in jobs_raw[1:]:
        top.error("job", "only one job per file (split the file, one job each)", extra)
    if jobs_raw:
        job = _job(jobs_raw[0], source, problems)
        return [job] if job is not None else []
    jobs = []
    for raw in tasks_raw:
        job = _bare_task(raw, source, problems)
        if job is not None:
            jobs.append(job)
    seen: dict[str, int] = {}
    for raw in tasks_raw:
        name = raw.labels[0] if raw.labels else ""
        if name in seen:
            top.error(f'task "{name}"', f"task {name!r} is defined twice in this file", raw)
        seen[name] = 1
    return jobs


def _label(r: _Reader, kind: str) -> str:
    labels = r.raw.labels
    if len(labels) != 1:
        r.error("", f'{kind} needs exactly one name, as in {kind} "name" {{ ... }}')
        return labels[0] if labels else ""
    for msg in validate.check_name(kind, labels[0]):
        r.error("", msg)
    return labels[0]


def _job(raw: RawBlock, source: str | None, problems: list[Problem]) -> Job | None:
    r = _Reader(raw, block_where("", raw), problems, schema.JOB)
    name = _label(r, "job")
    job_type = r.str("type", "service")
    if job_type in _JOB_TYPE_ALIASES:
        alias = _JOB_TYPE_ALIASES[job_type]
        r.warn("type", f'type "{job_type}" runs as "{alias}" on a single node')
        job_type = alias
    elif job_type not in JOB_TYPES:
        r.error("type", f"type must be service or batch (system, sysbatch accepted), got {job_type!r}")
        job_type = "service"
    meta = r.map("meta")
    groups = tuple(g for g in (_group(r.child(b, schema.GROUP), job_type) for b in r.blocks("group")) if g)
    job = Job(name=name, type=job_type, meta=meta, groups=groups, source=source)
    r.report(validate.check_job(job))
    return job


def _bare_task(raw: RawBlock, source: str | None, problems: list[Problem]) -> Job | None:
    r = _Reader(raw, block_where("", raw), problems, schema.TASK)
    name = _label(r, "task")
    task = _task(r, "service", None, name)
    if task is None:
        return None
    return Job(name=name, type="service", groups=(Group(name=name, tasks=(task,)),), source=source)


def _group(r: _Reader, job_type: str) -> Group | None:
    name = _label(r, "group")
    count = r.int("count", 1)
    meta = r.map("meta")
    network = Network()
    if (nb := r.block("network")) is not None:
        nr = r.child(nb, schema.NETWORK)
        network = Network(mode=nr.str("mode", "host"))
        nr.report(validate.check_network_mode(network.mode))
    group_restart_fields: dict[str, Any] | None = None
    group_restart: RestartPolicy | None = None
    if (rb := r.block("restart")) is not None:
        rr = r.child(rb, schema.RESTART)
        group_restart_fields = _restart_fields(rr)
        group_restart = _merge_restart(job_type, group_restart_fields)
        rr.report(validate.check_restart(group_restart))
    tasks = []
    for tb in r.blocks("task"):
        tr = r.child(tb, schema.TASK)
        tname = _label(tr, "task")
        task = _task(tr, job_type, group_restart_fields, tname)
        if task is not None:
            tasks.append(task)
    group = Group(name=name, count=count, meta=meta, network=shared(network), restart=group_restart,
                  tasks=tuple(tasks))
    if not r.blocks("task"):
        # Checked on the blocks, not the built tasks: when task blocks exist but none built, their own errors
        # say why and "needs a task" would only be noise.
        r.error("task", "a group needs at least one task")
    r.report(validate.check_group(group))
    return group


def _restart_fields(r: _Reader) -> dict[str, Any]:
    """Only the fields written in this block: merging is field by field, as Nomad merges restart policies."""
    fields: dict[str, Any] = {}
    if (v := r.int("attempts")) is not None:
        fields["attempts"] = v
    for name in ("interval", "delay"):
        if (d := r.duration(name)) is not None:
            fields[name] = d
    if (m := r.str("mode")) is not None:
        fields["mode"] = m
    if r.has("render_templates"):
        fields["render_templates"] = r.bool("render_templates")
    return fields


def _merge_restart(job_type: str, *layers: dict[str, Any] | None) -> RestartPolicy:
    merged: dict[str, Any] = dict(RestartPolicy.DEFAULTS[job_type])
    for layer in layers:
        if layer:
            merged.update(layer)
    return shared(RestartPolicy(**merged))


def _task(r: _Reader, job_type: str, group_restart: dict[str, Any] | None, name: str) -> Task | None:
    driver = r.str("driver")
    config = None
    if driver is None:
        r.error("driver", "driver is required (raw_exec, exec or exec2)")
    elif driver not in CONFIG_TYPES:
        if driver in schema.OTHER_NOMAD_DRIVERS:
            r.error("driver", f"driver {driver!r} is not supported by tasksd (use raw_exec, exec or exec2)")
        else:
            import difflib

            hint = difflib.get_close_matches(driver, list(CONFIG_TYPES), n=1, cutoff=0.6)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            r.error("driver", f"driver {driver!r} is not supported by tasksd{more}; use raw_exec, exec or exec2")
    else:
        cb = r.block("config")
        if cb is None:
            r.error("config", "a config block with a command is required")
        else:
            config = _config(r.child(cb, schema.CONFIG[driver]), driver)

    resources = Resources()
    if (b := r.block("resources")) is not None:
        resources = _resources(r.child(b, schema.RESOURCES))

    task_restart_fields = None
    if (b := r.block("restart")) is not None:
        rr = r.child(b, schema.RESTART)
        task_restart_fields = _restart_fields(rr)
        restart = _merge_restart(job_type, group_restart, task_restart_fields)
        # Checked on the effective policy: a task's delay may break the group's interval and vice versa.
        rr.report(validate.check_restart(restart))
    else:
        restart = _merge_restart(job_type, group_restart)

    kill_timeout = r.duration("kill_timeout", 5.0)
    r.report(validate.check_kill_timeout(kill_timeout))
    kill_signal = "SIGINT"
    if (sig := r.str("kill_signal")) is not None:
        try:
            kill_signal = normalize_signal(sig)
        except ValueError as e:
            r.error("kill_signal", str(e))

    logs = shared(LogConfig())
    if (b := r.block("logs")) is not None:
        lr = r.child(b, schema.LOGS)
        disabled = lr.bool("disabled", False)
        if lr.has("enabled"):
            disabled = not lr.bool("enabled", True)
        logs = shared(LogConfig(lr.int("max_files", 10), lr.int("max_file_size", 10), disabled))
        lr.report(validate.check_logs(logs))

    artifacts = tuple(_artifact(r.child(b, schema.ARTIFACT, f"artifact[{i}]")) for i, b in
                      enumerate(r.blocks("artifact")))
    templates = tuple(t for t in (_template(r.child(b, schema.TEMPLATE, f"template[{i}]")) for i, b in
                                  enumerate(r.blocks("template"))) if t)
    lifecycle = None
    if (b := r.block("lifecycle")) is not None:
        lr = r.child(b, schema.LIFECYCLE)
        hook = lr.str("hook")
        if hook is None:
            lr.error("hook", "hook is required (prestart, poststart or poststop)")
        else:
            lifecycle = Lifecycle(hook=hook, sidecar=lr.bool("sidecar"))
            lr.report(validate.check_lifecycle_hook(hook))

    if config is None:
        # Keep decoding the rest so every problem is reported, but there is no task to return.
        r.map("env"), r.map("meta"), r.str("user"), r.bool("leader")
        return None
    env = r.map("env")
    r.report(validate.check_env(env))
    return Task(
        name=name,
        driver=driver,
        config=config,
        user=r.str("user"),
        env=env,
        meta=r.map("meta"),
        resources=resources,
        restart=restart,
        kill_timeout=kill_timeout,
        kill_signal=kill_signal,
        logs=logs,
        artifacts=artifacts,
        templates=templates,
        lifecycle=lifecycle,
        leader=r.bool("leader"),
    )


def _config(r: _Reader, driver: str):
    command = r.str("command", "")
    common = dict(
        command=command,
        args=r.str_list("args"),
        work_dir=r.str("work_dir"),
        oom_score_adj=r.int("oom_score_adj", 0),
        pids_limit=r.int("pids_limit"),
        denied_envvars=r.str_list("denied_envvars"),
    )
    if driver == "raw_exec":
        config = CONFIG_TYPES[driver](**common)
        r.report(validate.check_common_config(config))
    elif driver == "exec":
        mounts = []
        for i, b in enumerate(r.blocks("mount")):
            mr = r.child(b, schema.MOUNT, f"mount[{i}]")
            source, target = mr.str("source"), mr.str("target")
            if source is None or target is None:
                mr.error("", "a mount needs source and target")
                continue
            mounts.append(Mount(source=source, target=target, readonly=mr.bool("readonly", True)))
        config = CONFIG_TYPES[driver](
            **common,
            pid_mode=r.str("pid_mode"),
            ipc_mode=r.str("ipc_mode"),
            cap_add=_caps(r, "cap_add"),
            cap_drop=_caps(r, "cap_drop"),
            mounts=tuple(mounts),
        )
        r.report(validate.check_exec_config(config))
    else:
        config = CONFIG_TYPES[driver](**common, unveil=r.str_list("unveil"))
        r.report(validate.check_exec2_config(config))
    return config


def _caps(r: _Reader, name: str) -> tuple[str, ...]:
    out = []
    for i, cap in enumerate(r.str_list(name)):
        try:
            out.append(normalize_cap(cap))
        except ValueError as e:
            r.error(f"{name}[{i}]", f"{e}: use a Linux capability name such as \"net_bind_service\", or \"all\"")
    return tuple(out)


def _resources(r: _Reader) -> Resources:
    cpu, cores = r.int("cpu"), r.int("cores")
    if cpu is not None and cores is not None:
        r.error("cores", "set cpu or cores, not both")
    res = Resources(
        cpu=None if cores is not None else (100 if cpu is None else cpu),
        cores=cores,
        memory=r.int("memory", 300),
        memory_max=r.int("memory_max", 0),
        secrets=r.int("secrets"),
    )
    r.report(validate.check_resources(res))
    return shared(res)


def _artifact(r: _Reader) -> Artifact:
    a = Artifact(
        source=r.str("source") or "",
        destination=r.str("destination", "local/"),
        mode=r.str("mode", "any"),
        options=r.map("options"),
        headers=r.map("headers"),
        chown=r.bool("chown"),
    )
    r.report(validate.check_artifact(a))
    return a


def _template(r: _Reader) -> Template | None:
    signal = r.str("change_signal")
    if signal is not None:
        try:
            signal = normalize_signal(signal)
        except ValueError as e:
            r.error("change_signal", str(e))
    perms = r._get("perms")
    if isinstance(perms, int) and not isinstance(perms, bool):
        # YAML reads an unquoted 0644 as the octal number 420: the intent is lost, so ask for quotes.
        r.error("perms", f"perms must be a quoted string such as \"0644\", got the number {perms}")
        perms = "0644"
    else:
        perms = r.str("perms", "0644")
    t = Template(
        destination=r.str("destination", ""),
        data=r.str("data"),
        source=r.str("source"),
        perms=perms,
        env=r.bool("env"),
        change_mode=r.str("change_mode", "restart"),
        change_signal=signal,
        left_delimiter=r.str("left_delimiter", "{{"),
        right_delimiter=r.str("right_delimiter", "}}"),
    )
    r.report(validate.check_template(t))
    return t
