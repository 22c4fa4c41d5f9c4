"""raw_exec: no namespaces, no chroot; the task runs as tasksd's user unless `user` is set.

It still gets a cgroup (limits, OOM reporting, kill of every descendant), its own session, a reset
oom_score_adj, and its logs — everything but isolation. Disabled unless the plugin config enables it.
"""
from __future__ import annotations

import os
import shutil

from isolation import taskdir
from isolation.drivers.base import Health, StartError, TaskContext
from isolation.drivers.common import CommonDriver, Identity
from isolation.launchspec import LaunchSpec


class RawExecDriver(CommonDriver):
    name = "raw_exec"
    passes_host_env = True

    def plugin(self):
        return self.config.raw_exec

    def fingerprint(self) -> Health:
        if not self.config.raw_exec.enabled:
            return Health(False, "raw_exec is disabled")
        return Health(True)

    def identity(self, ctx: TaskContext) -> Identity:
        return self.host_user(ctx.task.user)

    def extra_env(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity) -> dict[str, str]:
        if not ctx.task.user:
            return {}
        return {"USER": ident.name, "LOGNAME": ident.name, "HOME": ident.home}

    def resolve_command(self, ctx: TaskContext, td: taskdir.TaskDir, command: str, env: dict) -> str:
        """Nomad's order: <task>/local/<cmd>, <task>/<cmd>, the absolute path, then PATH."""
        if os.path.isabs(command):
            if os.path.exists(command):
                return command
            raise StartError(f"command {command!r} not found")
        for base in (td.local, td.dir):
            candidate = base / command
            if candidate.is_file():
                return str(candidate)
        if "/" not in command:
            found = shutil.which(command, path=env.get("PATH") or os.environ.get("PATH", "/usr/bin:/bin"))
            if found:
                return found
        raise StartError(f"command {command!r} not found in the task dir or PATH")

    def isolate(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, spec: LaunchSpec) -> LaunchSpec:
        return spec
