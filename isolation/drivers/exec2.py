"""exec2: no chroot; the host filesystem is unveiled path by path with Landlock, the task runs as a dynamic user
in private pid, ipc and mount namespaces (with its own /proc).

When Landlock is unavailable the driver is unhealthy and refuses tasks: an exec2 task never runs unconfined.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

from isolation import landlock, taskdir
from isolation.drivers.base import Health, StartError, TaskContext, TaskHandle
from isolation.drivers.common import CommonDriver, Identity
from isolation.drivers.exec import _net_for
from isolation.launchspec import LaunchSpec, Namespaces
from isolation.users import DynamicUserPool

DROPPED_ENV = ("LD_*", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "DBUS_SESSION_BUS_ADDRESS", "XDG_*")
UNVEIL_REFUSED = "task set unveil paths but driver config does not allow this"


class Exec2Driver(CommonDriver):
    name = "exec2"
    passes_host_env = True

    def __init__(self, runtime, config):
        super().__init__(runtime, config)
        self._pool_lock = threading.Lock()
        self._pool_file = Path(runtime.state_dir) / "dynamic-users.json"
        self._pool = self._load_pool()

    # ---- dynamic users -----------------------------------------------------------------------------------
    def _load_pool(self) -> DynamicUserPool:
        try:
            return DynamicUserPool.from_dict(json.loads(self._pool_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return DynamicUserPool(self.config.dynamic_user_min, self.config.dynamic_user_max)

    def _save_pool(self) -> None:
        tmp = self._pool_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._pool.to_dict()))
        os.replace(tmp, self._pool_file)

    def release(self, handle: TaskHandle) -> None:
        if handle.dynamic_uid and handle.uid is not None:
            with self._pool_lock:
                self._pool.release(handle.uid)
                self._save_pool()

    def release_identity(self, ident: Identity) -> None:
        if ident.dynamic:
            with self._pool_lock:
                self._pool.release(ident.uid)
                self._save_pool()

    # ---- driver ------------------------------------------------------------------------------------------
    def plugin(self):
        return self.config.exec2

    def fingerprint(self) -> Health:
        if not self.config.exec2.enabled:
            return Health(False, "exec2 is disabled in the plugin config")
        if os.geteuid() != 0:
            return Health(False, "exec2 needs root (namespaces, cgroups, dynamic users)")
        abi = landlock.abi_version()
        if abi < 1:
            return Health(False, "Landlock is not available on this kernel (exec2 never runs a task unconfined)")
        return Health(True)

    def identity(self, ctx: TaskContext) -> Identity:
        user = ctx.task.user
        if user:
            if user in self.config.user_denylist:
                raise StartError(f"running as user {user!r} is disallowed by the client's user denylist")
            return self.host_user(user)
        owner = ctx.task_id
        with self._pool_lock:
            uid = self._pool.allocate(owner, in_use=set())
            self._save_pool()
        return Identity(uid, uid, (uid,), f"nomad-{uid}", "/nonexistent", dynamic=True)

    def dropped_env(self) -> tuple[str, ...]:
        return DROPPED_ENV

    def extra_env(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity) -> dict[str, str]:
        return {"USER": ident.name, "HOME": ident.home, "TMPDIR": str(td.tmp)}

    def resolve_command(self, ctx: TaskContext, td: taskdir.TaskDir, command: str, env: dict) -> str:
        import shutil

        if os.path.isabs(command):
            return command  # a missing command fails at execve and is reported with the step
        for base in (td.local, td.dir):
            if (base / command).is_file():
                return str(base / command)
        found = shutil.which(command, path=env.get("PATH") or "/usr/local/bin:/usr/bin:/bin")
        if not found:
            raise StartError(f"command {command!r} not found")
        return found

    def unveils(self, ctx: TaskContext, td: taskdir.TaskDir) -> tuple[tuple[str, str], ...]:
        cfg, plugin = ctx.task.config, self.config.exec2
        task_unveil = tuple(getattr(cfg, "unveil", ()) or ())
        if task_unveil and not plugin.unveil_by_task:
            raise StartError(UNVEIL_REFUSED)
        rules: list[tuple[str, str]] = [
            ("rwxc", str(td.dir)), ("rwxc", str(td.shared)), ("rwxc", str(td.secrets)), ("rwxc", str(td.tmp)),
            ("rx", str(td.logs)),
        ]
        if plugin.unveil_defaults:
            rules += [(m, p) for m, p in landlock.EXEC2_DEFAULT_UNVEILS if os.path.exists(p)]
        for entry in (*plugin.unveil_paths, *task_unveil):
            modes, path = landlock.parse_unveil(entry)
            rules.append((modes, path))
        return tuple(rules)

    def isolate(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, spec: LaunchSpec) -> LaunchSpec:
        rules = self.unveils(ctx, td)
        ns = Namespaces(mount=True, pid=True, ipc=True, mount_proc=True, net=_net_for(ctx))
        return replace(spec, namespaces=ns, landlock=rules, landlock_skip_missing=True, no_new_privs=True,
                       caps=(), cwd=ctx.task.config.work_dir or str(td.dir))
