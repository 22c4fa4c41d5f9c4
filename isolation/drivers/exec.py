"""exec: a chroot of read-only bind mounts, private mount/pid/ipc/uts namespaces, a reduced capability set.

Differences from Nomad, on purpose: the chroot is bind mounts (no copying), no_new_privs is always set (a setuid
binary gains nothing), and the task gets a pids limit.
"""
from __future__ import annotations

import os
from dataclasses import replace

from isolation import taskdir
from isolation.childplan import root_mount_points
from isolation.drivers.base import Health, StartError, TaskContext
from isolation.drivers.common import CommonDriver, Identity, network_for
from isolation.launchspec import BindMount, LaunchSpec, Namespaces, RootFS
from isolation.taskenv import TaskPaths

READONLY_PROC = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
MASKED = ("/proc/kcore", "/sys/firmware")
CHROOT_SEARCH = ("/usr/local/bin", "/usr/bin", "/bin")


class ExecDriver(CommonDriver):
    name = "exec"
    passes_host_env = True
    chroot = True

    def plugin(self):
        return self.config.exec

    def fingerprint(self) -> Health:
        return self.isolated_health("namespaces, mounts, cgroups") or Health(True)

    def identity(self, ctx: TaskContext) -> Identity:
        return self.allowed_user(ctx.task.user or "nobody")

    def task_paths(self, td: taskdir.TaskDir) -> TaskPaths:
        return TaskPaths("/alloc", "/local", "/secrets", "/tmp")

    def _host_path(self, td: taskdir.TaskDir, inside: str) -> str | None:
        """Map a path inside the chroot to the host (through chroot_env binds, /alloc, or the task dir)."""
        if inside == "/alloc" or inside.startswith("/alloc/"):
            return str(td.shared) + inside[len("/alloc"):]
        for src, dst in self.config.chroot_env:
            if inside == dst or inside.startswith(dst.rstrip("/") + "/"):
                return src.rstrip("/") + inside[len(dst.rstrip("/")):]
        return str(td.dir) + inside

    def resolve_command(self, ctx: TaskContext, td: taskdir.TaskDir, command: str, env: dict) -> str:
        """Nomad's lookup inside the chroot: local/, the task dir, /usr/local/bin, /usr/bin, /bin."""
        if "/" in command:
            inside = command if command.startswith("/") else "/" + command
            host = self._host_path(td, inside)
            if host and os.path.isfile(host):
                return inside
            raise StartError(f"file {command} not found under path {td.dir}")
        for d in ("/local", "/", *CHROOT_SEARCH):
            inside = os.path.join(d, command)
            host = self._host_path(td, inside)
            if host and os.path.isfile(host) and os.access(host, os.X_OK):
                return inside
        raise StartError(f"file {command} not found under path {td.dir}")

    def spare_kind(self, ctx: TaskContext) -> str:
        """Spares whose task dir holds the chroot's mount points already (isolation.spares), for tasks whose root
        and task dir are the driver's alone. Not for a task with its own `mounts` (they come before /dev, /proc
        and /sys in its plan), artifacts or templates (written into the task dir before the spawn, possibly
        through a mount point's path), nor with the Python child, which makes its mount points its own way.
        The list is made again at each start from the host as the plan will see it (a chroot_env source that
        appeared, vanished or changed from file to directory) and the current chroot_env; a kind defined anew
        drops the spares made for the old list."""
        pool = self.runtime.spares
        task = ctx.task
        if pool is None or getattr(task.config, "mounts", None) or task.artifacts or task.templates \
                or self.runtime.client.child != "c":
            return ""
        # "/" stands in for the task dir and the alloc dir (the source of /alloc): directories, as those are.
        points = root_mount_points(self._rootfs("/", "/", ()), premounted=("secrets", "private"))
        if not points:
            return ""
        try:
            pool.define("chroot", points)
        except ValueError:  # nothing a spare can hold: the start makes them itself
            return ""
        return "chroot"

    def work_dir(self, cfg, td: taskdir.TaskDir) -> str:
        return cfg.work_dir or "/"

    def caps(self, ctx: TaskContext, uid: int) -> frozenset[int]:
        from isolation import caps

        cfg = ctx.task.config
        try:
            return caps.for_user(caps.compute_caps(self.config.exec.allow_caps, cfg.cap_add, cfg.cap_drop), uid,
                                 cfg.cap_add)
        except ValueError as e:
            raise StartError(str(e)) from None

    def _rootfs(self, task_dir: str, alloc_dir: str, mounts) -> RootFS:
        """The chroot: chroot_env, the alloc dir as /alloc, then the task's own mounts (see spare_kind)."""
        binds = [BindMount(src, dst, True) for src, dst in self.config.chroot_env]
        binds.append(BindMount(alloc_dir, "/alloc", False))
        binds += [BindMount(m.source, m.target, m.readonly) for m in mounts]
        return RootFS(root=task_dir, binds=tuple(binds), pivot_root=not self.config.exec.no_pivot_root,
                      readonly_paths=READONLY_PROC, masked_paths=MASKED)

    def isolate(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, spec: LaunchSpec) -> LaunchSpec:
        cfg, plugin = ctx.task.config, self.config.exec
        pid_mode = cfg.pid_mode or plugin.default_pid_mode
        ipc_mode = cfg.ipc_mode or plugin.default_ipc_mode
        rootfs = self._rootfs(str(td.dir), str(td.shared), getattr(cfg, "mounts", ()) or ())
        ns = Namespaces(mount=True, pid=pid_mode == "private", ipc=ipc_mode == "private", uts=True,
                        net=network_for(ctx))
        return replace(spec, rootfs=rootfs, namespaces=ns, no_new_privs=True,
                       caps=tuple(sorted(self.caps(ctx, ident.uid))))
