"""What the three drivers share: the start pipeline (user, dirs, cgroup, env, command, spawn), stop, recover.

A driver subclass supplies only what differs: whether it is allowed, who the task runs as, where it looks for the
command and what the child's isolation looks like (`isolate`).
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal as _signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from isolation import cgroups, netns, taskdir, taskenv
from isolation.drivers.base import (UNKNOWN_EXIT, Driver, ExitResult, Health, StartError, TaskContext, TaskHandle,
                                    respawn_key)
from isolation.launchspec import LaunchSpec, LogTarget
from isolation.runtime import CgroupTicket, Runtime
from isolation.users import lookup_user
from manifests.agent_config import AgentConfig
from manifests.signals import signal_number

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    dynamic: bool = False


@functools.lru_cache(maxsize=16)
def parse_id_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """Nomad's denied_host_uids syntax: "0,10-15". Cached: the plugin config's string is parsed once, not per start."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a > b:
            raise ValueError(f"invalid range {part!r}: lower bound greater than upper bound")
        out.append((a, b))
    return tuple(out)


def in_ranges(value: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= value <= b for a, b in ranges)


def task_cgroup(alloc_id: str, task: str) -> str:
    """The name of a task's cgroup below the parent; it outlives single runs (restarts reuse it)."""
    return f"{alloc_id}.{task}"


def new_key(alloc_id: str, task: str) -> str:
    return f"{alloc_id}.{task}.{os.urandom(4).hex()}"


class CommonDriver(Driver):
    name = "common"
    passes_host_env = True
    chroot = False

    def __init__(self, runtime: Runtime, config: AgentConfig):
        self.runtime = runtime
        self.config = config

    # ---- hooks for subclasses ----------------------------------------------------------------------------
    def plugin(self) -> Any:
        raise NotImplementedError

    def identity(self, ctx: TaskContext) -> Identity:
        raise NotImplementedError

    def task_paths(self, td: taskdir.TaskDir) -> taskenv.TaskPaths:
        return taskenv.TaskPaths(*td.env_dirs())

    def resolve_command(self, ctx: TaskContext, td: taskdir.TaskDir, command: str, env: dict) -> str:
        raise NotImplementedError

    def isolate(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, spec: LaunchSpec) -> LaunchSpec:
        return spec

    def extra_env(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity) -> dict[str, str]:
        return {}

    def spare_kind(self, ctx: TaskContext) -> str:
        """The kind of spare alloc dir this task's start takes (isolation.spares): the plain one."""
        return ""

    def release(self, handle: TaskHandle) -> None:
        """Give back per-task resources (a dynamic uid) once the task is destroyed."""

    # ---- start -------------------------------------------------------------------------------------------
    def start(self, ctx: TaskContext) -> TaskHandle:
        health = self.fingerprint()
        if not health.healthy:
            raise StartError(health.reason)
        task = ctx.task
        ident = self.identity(ctx)
        self.check_ids(ident)
        res = task.resources
        cfg = task.config
        pids_limit = cfg.pids_limit if cfg.pids_limit is not None else (self.plugin().pids_limit or None)
        cpuset = ctx.cpuset
        limits = cgroups.limits_for(res.memory, res.memory_max, res.cpu, cpuset, pids_limit)
        cg_name = task_cgroup(ctx.alloc_id, task.name)
        key = ctx.key or new_key(ctx.alloc_id, task.name)
        # The launcher makes the cgroup while we make the task's directories (two CPUs).
        ticket = self.runtime.prepare_cgroup(cg_name, limits)
        ticket.send()
        try:
            td, spec, spec_dict, body = self._prepare(ctx, ident, ticket, key)
            cg = ticket.result()
        except BaseException:
            ticket.discard()
            raise
        if cg.existed and not ctx.cgroup_empty:
            cg.kill()  # anything left in the cgroup from an earlier life of this task dies before we launch
        # A cgroup made just now counts from 0; only a reused one (an earlier life of this task) has a past to skip.
        baseline = cg.oom_kills() if cg.existed else 0
        # Armed only where the launcher keeps requests for respawns (the C one, of this version or later).
        respawn = ({"next_key": respawn_key(key), "vacant": cg.vacancy_files()}
                   if ctx.arm and self.runtime.client.respawns else None)
        try:
            if body is None:  # the C launcher's request names the cgroup's freshness (known only now)
                body = self.runtime.spawn_body(spec, spec_dict, fresh=not cg.existed, respawn=respawn)
            reply = self.runtime.client.request("spawn", body=body)
        except Exception as e:
            # The request may have failed after the launcher forked (a reply that timed out): whatever runs in
            # the task's cgroup now has no handle, and the identity it runs as may be given back by the caller.
            # Disarmed first, or the kill would have the launcher respawn it (a respawn made before lands in the
            # same cgroup, and dies with it).
            if respawn is not None:
                try:
                    self.runtime.disarm(key, timeout=5.0)
                except Exception:  # noqa: BLE001 - a launcher that does not answer respawns nothing either
                    pass
            try:
                cg.kill()
            except OSError:
                pass
            raise StartError(str(e)) from e
        handle = TaskHandle(
            key=spec.key, task_id=ctx.task_id, driver=self.name, pid=reply["pid"], start_time=reply["start_time"],
            boot_id=self.runtime.boot_id, cgroup=cg_name, alloc_id=ctx.alloc_id, alloc_dir=str(td.alloc_dir),
            task_dir=str(td.dir), started_at=time.time(), oom_baseline=baseline, uid=ident.uid,
            dynamic_uid=ident.dynamic, netns=ctx.netns, pid_ns=spec.namespaces.pid, cpuset=cpuset,
            armed=bool(reply.get("armed")), exec_env={"spec": {**spec_dict, "stdout": None, "stderr": None}},
        )
        self.runtime.register(handle)
        return handle

    def _prepare(self, ctx: TaskContext, ident: Identity, ticket: CgroupTicket,
                 key: str) -> tuple[taskdir.TaskDir, LaunchSpec, dict, bytes | None]:
        """Everything a start needs before the spawn request: the task dir, environment, command, the launch
        spec and the encoded request, all while the launcher makes the cgroup (its directories are known up
        front, so nothing here waits for its reply); the launcher opens the log files as soon as their directory
        exists."""
        task = ctx.task
        res = task.resources
        logs = task.logs
        log_dir = taskdir.logs_dir(self.runtime.alloc_root, ctx.alloc_id)
        stdout = LogTarget(log_dir, f"{task.name}.stdout", logs.max_files, logs.max_file_size * MB)
        stderr = LogTarget(log_dir, f"{task.name}.stderr", logs.max_files, logs.max_file_size * MB)
        td = taskdir.build(self.runtime.alloc_root, ctx.alloc_id, task.name, ident.uid, ident.gid,
                           secrets_mb=res.secrets or 1, logs_ready=lambda: ticket.open_logs(key, (stdout, stderr)),
                           spares=self.runtime.spares, log_names=(stdout.base, stderr.base),
                           spare_kind=self.spare_kind(ctx))
        paths = self.task_paths(td)
        cpuset = ctx.cpuset
        builtins = taskenv.builtin_env(
            job=ctx.job.name, group=ctx.group.name, task=task.name, alloc_id=ctx.alloc_id, index=ctx.index,
            paths=paths, memory_mb=res.memory, memory_max_mb=res.memory_max, cpu_mhz=res.cpu, cores=cpuset)
        meta = {**dict(ctx.job.meta), **dict(ctx.group.meta), **dict(task.meta)}
        cfg = task.config
        denied = tuple(self.plugin().denied_envvars) + tuple(getattr(cfg, "denied_envvars", ()) or ())
        node_attrs = taskenv.node_attributes(dict(self.config.meta))
        env = taskenv.build_env(
            builtins=builtins, meta=meta, task_env=dict(task.env),
            host_env=taskenv.host_environ() if self.passes_host_env else {}, denied_envvars=denied,
            node_attrs=node_attrs, drop=self.dropped_env())
        env.update(self.extra_env(ctx, td, ident))
        variables = {**node_attrs, **env}
        if task.artifacts or task.templates:
            ticket.result()  # a fetch can take long: give the launcher's call connection back first
            env.update(self.prestart_files(ctx, td, ident, variables, env))
            # An env template's output may come from a file the task writes (local/): it gets the same filter.
            taskenv.drop_denied(env, denied, self.dropped_env())
            variables = {**node_attrs, **env}
        command = taskenv.interpolate(cfg.command, variables, os.environ)
        args = [taskenv.interpolate(a, variables, os.environ) for a in cfg.args]
        path = self.resolve_command(ctx, td, command, env)
        argv0 = path if self.chroot else command
        spec = LaunchSpec(
            key=key, path=path, argv=(argv0, *args), env=tuple(sorted(env.items())),
            cwd=self.work_dir(cfg, td), cgroup_procs=tuple(ticket.task.procs_files()),
            uid=ident.uid, gid=ident.gid, groups=ident.groups, oom_score_adj=cfg.oom_score_adj,
            stdout=stdout, stderr=stderr,
        )
        spec = self.isolate(ctx, td, ident, spec)
        spec_dict = spec.to_dict()
        if self.runtime.client.launcher == "c":
            return td, spec, spec_dict, None  # encoded by start() once the cgroup is made
        return td, spec, spec_dict, self.runtime.client.encode("spawn", spec=spec_dict)

    # ---- prestart: artifacts and templates ---------------------------------------------------------------
    def prestart_files(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, variables: dict[str, str],
                       env: dict[str, str]) -> dict[str, str]:
        """Fetch artifacts, then render templates (a template may read an artifact), as Nomad's task runner does
        before the driver starts the task. Returns what `env = true` templates add to the environment; like
        Nomad, those override the task's own `env`."""
        # Imported here: only tasks with artifacts or templates pay for these modules (0.4 MB with theirs).
        from isolation import artifacts, templates

        task = ctx.task
        try:
            artifacts.fetch_all(
                task.artifacts, lambda s: taskenv.interpolate(s, variables, os.environ), alloc_dir=td.alloc_dir,
                task=task.name, state_dir=self.runtime.state_dir, uid=ident.uid, gid=ident.gid)
        except artifacts.ArtifactError as e:
            raise type(e)(f"prestart: {e}") from e  # the class says whether retrying can help
        added: dict[str, str] = {}
        for i, t in enumerate(task.templates):
            where = f"template[{i}] ({t.destination})"
            try:
                dest, out = self._render_template(t, td.alloc_dir, task.name, env, variables)
                artifacts.write_beneath(td.alloc_dir, task.name, dest, out.encode(), int(t.perms, 8),
                                        ident.uid, ident.gid)
                if t.env:
                    added.update(templates.parse_env_file(out))
            except artifacts.ArtifactError as e:
                raise type(e)(f"prestart: {where}: {e}") from e
            except (templates.TemplateError, UnicodeDecodeError) as e:
                raise artifacts.PermanentArtifactError(f"prestart: {where}: {e}") from e
            except OSError as e:
                raise StartError(f"prestart: {where}: {e}") from e
        return added

    def rerender(self, handle: TaskHandle, task_name: str, to_render: list[Any]) -> list[Any]:
        """Render `to_render` (the caller's choice: templates whose change_mode applies them to a running task)
        again with the environment the task was started with; write only those whose output changed, owned by
        the task's user. Returns the changed templates."""
        from isolation import artifacts

        spec = handle.exec_env.get("spec") or {}
        env = {k: v for k, v in spec.get("env", ())}
        variables = {**taskenv.node_attributes(dict(self.config.meta)), **env}
        uid = handle.uid if handle.uid is not None else 0
        gid = spec.get("gid") if spec.get("gid") is not None else 0
        alloc_dir = Path(handle.alloc_dir)
        changed = []
        for t in to_render:
            dest, text = self._render_template(t, alloc_dir, task_name, env, variables)
            out = text.encode()
            try:
                if artifacts.read_beneath(alloc_dir, task_name, dest) == out:
                    continue
            except (OSError, artifacts.ArtifactError):
                pass  # missing or unreadable: write it
            artifacts.write_beneath(alloc_dir, task_name, dest, out, int(t.perms, 8), uid, gid)
            changed.append(t)
        return changed

    @staticmethod
    def _render_template(t: Any, alloc_dir: Path, task_name: str, env: dict[str, str],
                         variables: dict[str, str]) -> tuple[str, str]:
        """(destination, rendered text) of one template; a `source` is read beneath the task's directory."""
        from isolation import artifacts, templates

        if t.source is not None:
            src = taskenv.interpolate(t.source, variables, os.environ)
            text = artifacts.read_beneath(alloc_dir, task_name, src).decode()
        else:
            text = t.data or ""
        out = templates.render(text, env, left=t.left_delimiter, right=t.right_delimiter)
        return taskenv.interpolate(t.destination, variables, os.environ), out

    def dropped_env(self) -> tuple[str, ...]:
        return ()

    def work_dir(self, cfg: Any, td: taskdir.TaskDir) -> str:
        return cfg.work_dir or str(td.dir)

    def check_ids(self, ident: Identity) -> None:
        p = self.plugin()
        uids = parse_id_ranges(getattr(p, "denied_host_uids", "") or "")
        gids = parse_id_ranges(getattr(p, "denied_host_gids", "") or "")
        if in_ranges(ident.uid, uids):
            raise StartError(f"running as uid {ident.uid} is disallowed by the {self.name} plugin config")
        for g in (ident.gid, *ident.groups):
            if in_ranges(g, gids):
                raise StartError(f"running as gid {g} is disallowed by the {self.name} plugin config")

    def isolated_health(self, needs: str) -> Health | None:
        """The checks exec and exec2 share; None when they pass."""
        if not self.plugin().enabled:
            return Health(False, f"{self.name} is disabled in the plugin config")
        if os.geteuid() != 0:
            return Health(False, f"{self.name} needs root ({needs})")
        return None

    def allowed_user(self, user: str) -> Identity:
        """A named host user, refused when on the client's denylist (by name, or as uid 0 when root is)."""
        if user in self.config.user_denylist:
            raise StartError(f"running as user {user!r} is disallowed by the client's user denylist")
        ident = self.host_user(user)
        if ident.uid == 0 and "root" in self.config.user_denylist:
            raise StartError(f"user {user!r} has uid 0, which the client's user denylist refuses")
        return ident

    def host_user(self, name: str | None) -> Identity:
        if not name:
            return _own_identity()
        try:
            info = lookup_user(name)
        except KeyError:
            raise StartError(f"user {name!r} does not exist on this host") from None
        return Identity(info.uid, info.gid, tuple(info.groups), info.name, info.home)

    # ---- wait / stop / destroy ---------------------------------------------------------------------------
    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        return self.runtime.wait(handle.key, timeout)

    def signal(self, handle: TaskHandle, signal: str) -> None:
        if not self.runtime.send_signal(handle, signal_number(signal)):
            raise ProcessLookupError(f"task {handle.task_id} is not running")

    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> ExitResult:
        timeout = min(timeout, self.config.max_kill_timeout)
        # First of all: the launcher must not restart what we stop. If the run exited before the disarm, the
        # launcher has started its successor already: that is the run to stop.
        try:
            successor = self.runtime.disarm(handle.key)
        except Exception as e:  # noqa: BLE001 - a lost launcher respawns nothing; the kill below must still happen
            log.warning("disarm of %s: %s", handle.key, e)
            successor = None
        if successor is not None:
            try:
                return self.stop(successor, signal, timeout)
            finally:
                self.runtime.ack(successor)
        result = self.runtime.result(handle.key)
        signum = signal_number(signal)
        if result is None and _dropped_by_pid1(handle, signum):
            # PID 1 of a pid namespace does not die from a signal it has no handler for: the kernel drops it.
            # Outside a namespace that signal would have killed it, so do what it would have done, now,
            # instead of waiting out kill_timeout (Nomad's exec drivers wait).
            timeout = 0.0
        elif result is None and self.runtime.send_signal(handle, signum):
            result = self.runtime.wait(handle.key, timeout)
        cg = self.runtime.cgroups.open(handle.cgroup)
        if result is None:
            if cg is not None:
                cg.kill()  # SIGKILL for the main process and everything it forked, at once
            # Not waited for when nobody can report it (the launcher is gone): the kill has waited for the cgroup.
            result = self.runtime.wait(handle.key, 10.0 if self.runtime.reporting(handle.key) else 0.0)
        if cg is not None:
            cg.kill()  # the main process is gone; daemonised grandchildren in its cgroup go with it
        return result or ExitResult(exit_code=None, error="the task did not exit after SIGKILL")

    def forget(self, task_id: str) -> None:
        """The task instance is gone for good (its manifest is removed): give back what outlives single runs."""

    def destroy(self, handle: TaskHandle, keep_identity: bool = False, known_empty: bool = False) -> None:
        """Kill what is left in the task's cgroup and remove it. keep_identity: the task will run again (restart
        policy), so its cgroup, tmpfs mounts and dynamic uid stay for the next run (which starts faster and still
        owns its files); whatever is left is removed with the alloc (GC) or by a later full destroy."""
        # Kept and known empty (the usual restart): nothing to kill or remove, so not even looked up.
        cg = None if keep_identity and known_empty else self.runtime.cgroups.open(handle.cgroup)
        if not keep_identity:
            self.runtime.cgroups.forget(handle.cgroup)
        if cg is not None:
            if not known_empty:
                cg.kill()
            if not keep_identity:
                cg.remove()
        if not keep_identity:
            taskdir.unmount_task(taskdir.TaskDir(Path(handle.alloc_dir), handle.task_id.rsplit("/", 1)[1]))
        self.runtime.ack(handle)
        if not keep_identity:
            self.release(handle)

    def left_nothing(self, handle: TaskHandle) -> bool:
        cg = self.runtime.cgroups.open(handle.cgroup)
        return cg is None or (not cg.populated() and not cg.pids())

    def stats(self, handle: TaskHandle) -> dict[str, Any]:
        cg = self.runtime.cgroups.open(handle.cgroup)
        if cg is None:
            return {}
        s = cg.stats()
        return {"cpu_usage_ns": s.cpu_usage_ns, "memory_current": s.memory_current,
                "memory_peak": s.memory_peak, "pids": s.pids_current, "oom_kills": cg.oom_kills()}

    def recover(self, handle: TaskHandle) -> ExitResult | None:
        if handle.boot_id != self.runtime.boot_id:
            return ExitResult(exit_code=None, error="unknown: the machine rebooted while tasksd was down")
        view = self.runtime.launcher_view()
        for t in view["tasks"]:
            if t["key"] == handle.key and t["pid"] == handle.pid and t["start_time"] == handle.start_time:
                self.runtime.register(handle)
                return self.runtime.result(handle.key)
        if any(rec["key"] == handle.key for rec in view["exits"]):
            self.runtime.register(handle)
            return self.runtime.wait(handle.key, 5.0)
        if self.runtime.adopt(handle):
            return None
        return ExitResult(exit_code=None, error=UNKNOWN_EXIT)

    # ---- exec --------------------------------------------------------------------------------------------
    def exec(self, handle: TaskHandle, argv: list[str], fds: list[int], tty: bool = False) -> str:
        if not handle.exec_env.get("spec"):
            raise StartError("the task's exec environment is not known (its start was not fully recorded); "
                             "restart the task to exec into it")
        base = LaunchSpec.from_dict(handle.exec_env["spec"])
        key = f"{handle.key}.exec.{os.urandom(4).hex()}"
        path = self.exec_path(handle, base, argv[0])
        spec = replace(base, key=key, path=path, argv=tuple(argv), rootfs=None,
                       namespaces=replace(base.namespaces, mount=False, pid=False, ipc=False, uts=False,
                                          net="host", mount_proc=False),
                       stdout=None, stderr=None, setsid=True, ctty=tty)
        self.runtime.exec_in(spec, handle.pid, handle.start_time, fds)
        return key

    def exec_path(self, handle: TaskHandle, base: LaunchSpec, command: str) -> str:
        if "/" in command:
            return command
        env = dict(base.env)
        found = shutil.which(command, path=env.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
        if not found:
            raise StartError(f"{command}: command not found in the task's PATH")
        return found


@functools.lru_cache(maxsize=1)
def _own_identity() -> Identity:
    """Exactly tasksd's own credentials, as Nomad's raw_exec inherits the agent's: also its (maybe empty)
    supplementary groups, so the launcher spawns these tasks without any credential change. Fixed for the life of
    the process, so looked up once: the account lookup (passwd and group files) was 4% of a start."""
    uid, gid = os.getuid(), os.getgid()
    info = lookup_user(uid)
    return Identity(uid, gid, tuple(os.getgroups()), info.name, info.home)


def network_for(ctx: TaskContext) -> str:
    """The launch spec's network namespace for the group's network mode (a StartError when it cannot be met)."""
    mode = getattr(ctx.group.network, "mode", "host") or "host"
    try:
        return netns.namespace_for_mode(mode, ctx.netns)
    except ValueError as e:
        raise StartError(str(e)) from None


_DEFAULT_NOT_FATAL = {_signal.SIGCHLD, _signal.SIGCONT, _signal.SIGURG, _signal.SIGWINCH, _signal.SIGSTOP,
                      _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU}


def _dropped_by_pid1(handle: TaskHandle, signum: int) -> bool:
    """True when the task is PID 1 of its own pid namespace and neither catches nor ignores `signum`."""
    if not handle.pid_ns or signum in _DEFAULT_NOT_FATAL or signum == _signal.SIGKILL:
        return False
    try:
        fields = dict(line.split(":\t", 1) for line in open(f"/proc/{handle.pid}/status").read().splitlines()
                      if ":\t" in line)
        caught, ignored = int(fields["SigCgt"], 16), int(fields["SigIgn"], 16)
    except (OSError, KeyError, ValueError):
        return False
    bit = 1 << (signum - 1)
    return not (caught & bit) and not (ignored & bit)


