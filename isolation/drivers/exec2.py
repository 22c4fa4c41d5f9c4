"""exec2: no chroot; the host filesystem is unveiled path by path with Landlock, the task runs as a dynamic user
in private pid, ipc and mount namespaces (with its own /proc).

When Landlock is unavailable the driver is unhealthy and refuses tasks: an exec2 task never runs unconfined.
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from isolation import landlock, safefile, taskdir
from isolation.drivers.base import Health, StartError, TaskContext, TaskHandle
from isolation.drivers.common import CommonDriver, Identity, network_for
from isolation.launchspec import LaunchSpec, Namespaces
from isolation.users import DYNAMIC_USER_HOME, DynamicUserPool, PoolExhausted, dynamic_user

DROPPED_ENV = ("LD_*", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "DBUS_SESSION_BUS_ADDRESS", "XDG_*")
UNVEIL_REFUSED = "task set unveil paths but driver config does not allow this"
POOL_FILE = "dynamic-users.json"

T = TypeVar("T")
log = logging.getLogger(__name__)


class Exec2Driver(CommonDriver):
    name = "exec2"
    passes_host_env = True

    def __init__(self, runtime, config):
        super().__init__(runtime, config)
        self._pool_file = Path(runtime.state_dir) / POOL_FILE
        self._stash = threading.local()
        self._purge_lock = threading.Lock()
        self._purges: list[threading.Thread] = []
        self._resume_give_backs()

    # ---- dynamic users -----------------------------------------------------------------------------------
    def _with_pool(self, fn: Callable[[DynamicUserPool], T]) -> T:
        """Run `fn` on the pool as stored on disk, under an exclusive lock, and store the result.

        The file, not memory, is the truth: a restarted daemon (or a second driver over the same state dir) sees
        every id still held, so a live task's uid is never handed out twice."""
        self._pool_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self._pool_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pool, clean = self._load_pool()
            before = pool.to_dict()
            result = fn(pool)
            if clean and pool.to_dict() == before:
                return result  # nothing changed (an instance asking for the uid it holds): no rewrite
            tmp = self._pool_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(pool.to_dict()))
            os.replace(tmp, self._pool_file)
            return result

    def _load_pool(self) -> tuple[DynamicUserPool, bool]:
        """The pool, and whether the file held it as is (a missing or damaged file must be (re)written)."""
        lo, hi = self.config.dynamic_user_min, self.config.dynamic_user_max
        try:
            data = json.loads(self._pool_file.read_text())
        except FileNotFoundError:
            return DynamicUserPool(lo, hi), False
        except (OSError, ValueError):
            return self._rebuilt_pool(lo, hi), False
        try:
            return DynamicUserPool.from_dict(data, lo, hi), True
        except (ValueError, KeyError, TypeError):
            return self._rebuilt_pool(lo, hi), False

    def _rebuilt_pool(self, lo: int, hi: int) -> DynamicUserPool:
        """The pool file is damaged: reserve the uids of every process still in one of our task cgroups, so
        starting afresh cannot collide with a live task."""
        owners: dict[str, int] = {}
        for name in self.runtime.cgroups.names():
            cg = self.runtime.cgroups.open(name)
            for pid in cg.pids() if cg is not None else ():
                try:
                    uid = os.stat(f"/proc/{pid}").st_uid
                except OSError:
                    continue
                if lo <= uid <= hi and uid not in owners.values():
                    owners[f"recovered:{name}"] = uid
        return DynamicUserPool.from_dict({"min": lo, "max": hi, "owners": owners}, lo, hi)

    def release(self, handle: TaskHandle) -> None:
        if handle.dynamic_uid and handle.uid is not None:
            # Only while this task (or the cgroup it ran in, for a pool rebuilt from cgroups) still holds it: a
            # stale handle must not take a uid, and its files, from whoever holds it now.
            if self._begin_give_back((handle.task_id, f"recovered:{handle.cgroup}"), handle.uid) is not None:
                self._finish_give_back(handle.uid)

    def forget(self, task_id: str, background: bool = True) -> None:
        """The instance is gone for good: give its uid back. Called on the controller's loop, so the walk of the
        shared directories runs on a thread of its own unless `background` is False."""
        uid = self._begin_give_back((task_id,))
        if uid is None:
            return
        if not background:
            self._finish_give_back(uid)
        else:
            self._give_back_on_thread(uid)

    def _resume_give_backs(self) -> None:
        """Finish what a tasksd killed in the middle of giving uids back left held as "releasing:<uid>"."""
        if not self._pool_file.exists():
            return
        try:
            stale = self._with_pool(
                lambda pool: [uid for owner, uid in pool.allocations().items() if owner.startswith("releasing:")])
        except OSError as e:
            log.warning("dynamic user pool unreadable: %s", e)
            return
        for uid in stale:
            self._give_back_on_thread(uid)

    def _give_back_on_thread(self, uid: int) -> None:
        # Not a daemon thread: tasksd's exit waits for it (cut short, the uid would stay held until the next start).
        t = threading.Thread(target=self._finish_give_back, args=(uid,), name=f"exec2-uid-{uid}", daemon=False)
        with self._purge_lock:
            self._purges = [p for p in self._purges if p.is_alive()] + [t]
        t.start()

    def wait_give_backs(self, timeout: float | None = None) -> None:
        """Wait for uids being given back on threads (forget) to be done: for drains and tests."""
        with self._purge_lock:
            pending = list(self._purges)
        for t in pending:
            t.join(timeout)

    def _begin_give_back(self, owners: tuple[str, ...], uid: int | None = None) -> int | None:
        """Re-key `uid` (by default the one owners[0] holds) to "releasing:<uid>" if one of `owners` holds it, and
        return it; None when none of them does. A task instance that starts again meanwhile gets another uid; a
        crash before _finish_give_back leaves it held, never handed on, until the next driver (the next start of
        tasksd) finishes it."""
        def begin(pool: DynamicUserPool) -> int | None:
            held = pool.allocations().get(owners[0]) if uid is None else uid
            if held is None or pool.owner_of(held) not in owners:
                return None
            pool.rekey(held, f"releasing:{held}")
            return held
        return self._with_pool(begin)

    def _finish_give_back(self, uid: int) -> None:
        """Remove what `uid` left in shared host directories, then return it to the pool: a file a task made in
        /tmp would otherwise belong to whichever task gets the id next (systemd's DynamicUser= avoids this with a
        private /tmp; exec2 shares the host's). If anything it owns could not be removed, it stays held as
        "quarantined:<uid>" instead."""
        roots = set(self._with_pool(lambda pool: pool.roots_of(uid))) | set(self._creatable_roots(()))
        skip = set()
        try:
            st = os.stat(self.runtime.state_dir)
            skip.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        removed = left = 0
        for root in sorted(roots):
            r, n = safefile.remove_owned(root, uid, frozenset(skip))
            removed, left = removed + r, left + n
        if removed:
            log.info("dynamic uid %d: removed %d entries it left in %s", uid, removed, ", ".join(sorted(roots)))

        def finish(pool: DynamicUserPool) -> None:
            if pool.owner_of(uid) != f"releasing:{uid}":
                return
            if left:
                pool.rekey(uid, f"quarantined:{uid}")
            else:
                pool.release(uid)
        self._with_pool(finish)
        if left:
            log.warning("dynamic uid %d stays out of the pool: %d entries it owns below %s could not be removed",
                        uid, left, ", ".join(sorted(roots)))

    def _creatable_roots(self, requested: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
        """Existing host directories an exec2 task may make entries in ("c"), the defaults' and `requested`,
        resolved as Landlock resolves them. tasksd's own state dir is left out (alloc dirs go with their alloc)."""
        rules = [*(landlock.EXEC2_DEFAULT_UNVEILS if self.config.exec2.unveil_defaults else ()), *requested]
        state = os.path.realpath(self.runtime.state_dir)
        out = set()
        for modes, path in rules:
            if "c" not in modes:
                continue
            real = os.path.realpath(path)
            if real == state or real.startswith(state.rstrip("/") + "/") or not os.path.isdir(real):
                continue
            out.add(real)
        return tuple(sorted(out))

    # ---- driver ------------------------------------------------------------------------------------------
    def plugin(self):
        return self.config.exec2

    def fingerprint(self) -> Health:
        problem = self.isolated_health("namespaces, cgroups, dynamic users")
        if problem:
            return problem
        if landlock.abi_version() < 1:
            why = landlock.probe()[1] or "Landlock is not available on this kernel"
            return Health(False, f"{why}; exec2 never runs a task unconfined")
        return Health(True)

    def start(self, ctx: TaskContext) -> TaskHandle:
        # Everything that can refuse the task is checked before a dynamic uid is taken. A start that fails after
        # that gives the uid back only if this start took it: an instance that already held one (a restart) keeps
        # it, since it owns the files the last run left in local/ and alloc/data.
        health = self.fingerprint()
        if not health.healthy:
            raise StartError(health.reason)
        requested = self.requested_unveils(ctx)
        network_for(ctx)
        held = True
        if not ctx.task.user:
            roots = self._creatable_roots(requested)

            # One trip to the pool file takes the uid and says whether this instance held it already; identity()
            # picks it up from this thread's stash (the controller's workers share this driver).
            def take(pool: DynamicUserPool) -> tuple[bool, int]:
                had = ctx.task_id in pool.allocations()
                uid = pool.allocate(ctx.task_id)
                pool.note_roots(uid, roots)
                return had, uid
            try:
                held, uid = self._with_pool(take)
            except PoolExhausted as e:
                raise StartError(str(e)) from None
            self._stash.taken = (ctx.task_id, uid)
        try:
            return super().start(ctx)
        except BaseException:
            if not held:
                self.forget(ctx.task_id, background=False)  # a worker thread already
            raise
        finally:
            self._stash.taken = None

    def identity(self, ctx: TaskContext) -> Identity:
        if ctx.task.user:
            return self.allowed_user(ctx.task.user)
        # The owner is the task instance: a start retried before the last run was destroyed keeps its uid (and
        # so its files in local/ and alloc/data). One instance never runs twice at once (its cgroup is emptied
        # before every launch), so no two live processes share an owner.
        taken = getattr(self._stash, "taken", None)
        if taken is not None and taken[0] == ctx.task_id:
            uid = taken[1]
        else:
            try:
                uid = self._with_pool(lambda pool: pool.allocate(ctx.task_id))
            except PoolExhausted as e:
                raise StartError(str(e)) from None
        info = dynamic_user(uid)
        return Identity(info.uid, info.gid, info.groups, info.name, DYNAMIC_USER_HOME, dynamic=True)

    def dropped_env(self) -> tuple[str, ...]:
        return DROPPED_ENV

    def extra_env(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity) -> dict[str, str]:
        return {"USER": ident.name, "HOME": ident.home, "TMPDIR": str(td.tmp)}

    def resolve_command(self, ctx: TaskContext, td: taskdir.TaskDir, command: str, env: dict) -> str:
        if os.path.isabs(command):
            return command  # a missing command fails at execve and is reported with the step
        for base in (td.local, td.dir):
            if (base / command).is_file():
                return str(base / command)
        found = shutil.which(command, path=env.get("PATH") or "/usr/local/bin:/usr/bin:/bin")
        if not found:
            raise StartError(f"command {command!r} not found")
        return found

    def requested_unveils(self, ctx: TaskContext) -> tuple[tuple[str, str], ...]:
        """The operator's and the task's unveils, checked. Unlike the defaults they must name something: an
        unveil of a path that does not exist is a mistake, and the launcher child would skip it silently."""
        plugin = self.config.exec2
        task_unveil = tuple(getattr(ctx.task.config, "unveil", ()) or ())
        if task_unveil and not plugin.unveil_by_task:
            raise StartError(UNVEIL_REFUSED)
        rules = []
        for entry in (*plugin.unveil_paths, *task_unveil):
            try:
                modes, path = landlock.parse_unveil(entry)
            except ValueError as e:
                raise StartError(str(e)) from None
            if not os.path.exists(path):
                raise StartError(f"unveil {entry}: {path} does not exist")
            rules.append((modes, path))
        return tuple(rules)

    def unveils(self, ctx: TaskContext, td: taskdir.TaskDir) -> tuple[tuple[str, str], ...]:
        rules: list[tuple[str, str]] = [
            ("rwxc", str(td.dir)), ("rwxc", str(td.shared)), ("rwxc", str(td.secrets)), ("rwxc", str(td.tmp)),
            ("rx", str(td.logs)),
        ]
        if self.config.exec2.unveil_defaults:
            # Missing ones included: the launcher's child skips what does not exist (skip_missing below).
            rules += landlock.EXEC2_DEFAULT_UNVEILS
        rules += self.requested_unveils(ctx)
        return tuple(rules)

    def isolate(self, ctx: TaskContext, td: taskdir.TaskDir, ident: Identity, spec: LaunchSpec) -> LaunchSpec:
        rules = self.unveils(ctx, td)
        if os.path.exists(spec.path) and not executable_under(spec.path, rules):
            # Otherwise the launcher would report a bare EACCES at execve, which reads like a file mode problem.
            raise StartError(f"command {spec.path} is not under an unveiled path with mode x "
                             f"(unveil x:{os.path.dirname(os.path.realpath(spec.path))} to allow it)")
        ns = Namespaces(mount=True, pid=True, ipc=True, mount_proc=True, net=network_for(ctx))
        return replace(spec, namespaces=ns, landlock=rules, landlock_skip_missing=True, no_new_privs=True,
                       caps=(), cwd=ctx.task.config.work_dir or str(td.dir))


@functools.lru_cache(maxsize=None)
def _default_real(path: str) -> str:
    # The defaults are a fixed list of system paths (/bin -> /usr/bin...): resolved once per process. A stale
    # answer could only misword or skip this early check; the kernel's Landlock decides at execve either way.
    return os.path.realpath(path)


_DEFAULT_PATHS = frozenset(p for _, p in landlock.EXEC2_DEFAULT_UNVEILS)


def executable_under(path: str, rules: tuple[tuple[str, str], ...]) -> bool:
    """Whether Landlock will let the task execute `path`: rules apply to what paths resolve to, so compare the
    resolved command with the resolved rule paths."""
    real = os.path.realpath(path)
    # The defaults first: their resolution is cached, and most commands live under them.
    for modes, rule in sorted(rules, key=lambda r: r[1] not in _DEFAULT_PATHS):
        if "x" not in modes:
            continue
        base = _default_real(rule) if rule in _DEFAULT_PATHS else os.path.realpath(rule)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False
