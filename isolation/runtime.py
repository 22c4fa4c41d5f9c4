"""What all drivers share at run time: the launcher connection, the cgroup manager, exit bookkeeping.

Exit notifications are event-driven: the launcher pushes an exit event the moment it reaps a task (it is the
parent); tasks adopted without the launcher (it was restarted) are watched through pidfds on one thread. No per-task
polling anywhere.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import select
import signal as _signal
import threading
import time
from pathlib import Path
from typing import Callable

from isolation import cgroups, childplan
from isolation import sys as ksys
from isolation.cgroups.warm import MigrationWarmer, own_procs_file
from isolation.drivers.base import UNKNOWN_EXIT, ExitResult, TaskHandle, respawn_key
from isolation.launcher_proto import describe_status
from isolation.launcher_client import CallPending, LauncherClient, LauncherError
from isolation.launchspec import LaunchSpec, LogTarget
from isolation.spares import SparePool

log = logging.getLogger("tasksd.runtime")

# Well past the spawn request's timeout: an exit unclaimed for this long has no handle coming (see sweep).
UNCLAIMED_EXIT_AGE = 600.0

ExitCallback = Callable[[TaskHandle, ExitResult], None]


class Runtime:
    def __init__(self, state_dir: str | os.PathLike, cgroup_parent: str = "tasksd",
                 on_exit: ExitCallback | None = None, layout: "cgroups.CgroupLayout | None" = None,
                 spare_dirs: int | None = None):
        self.state_dir = Path(state_dir)
        self.alloc_root = self.state_dir / "alloc"
        # New alloc dirs made ahead of need (see isolation.spares); None: every start makes its own. The daemon
        # passes its configured number, 0 included, so that a reload can change it.
        self.spares = SparePool(self.state_dir / "spare", spare_dirs) if spare_dirs is not None else None
        self.layout = layout or cgroups.detect()
        self.cgroups = cgroups.CgroupManager(self.layout, cgroup_parent)
        self.client = LauncherClient(self.state_dir, on_event=self._on_event)
        self.on_exit = on_exit
        # Called (on the client's reader thread) when the launcher's connection ends while we did not close it:
        # the launcher died, and with it the only way to spawn, signal, and hear of exits.
        self.on_launcher_lost: Callable[[], None] | None = None
        self.boot_id = ksys.boot_id()
        self._cv = threading.Condition()
        self._handles: dict[str, TaskHandle] = {}
        self._results: dict[str, ExitResult] = {}
        self._raw_exits: dict[str, dict] = {}
        self._adopted: dict[int, TaskHandle] = {}  # pidfd -> handle, for tasks that are not the launcher's children
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._watcher: threading.Thread | None = None
        self.warmer = MigrationWarmer(None)  # real once open() knows which cgroup we are in
        self._closed = False
        self._view: dict | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def open(self) -> list[str]:
        """Connect (starting the launcher when needed) and prepare the cgroup parent. Returns cgroup problems."""
        problems = self.cgroups.diagnose()
        fatal = [p.message for p in problems if p.fatal]
        if fatal:
            raise cgroups.CgroupError("; ".join(fatal))
        if self.layout.mode == "v2":
            # The no-internal-processes rule: we (and the launcher we start next) move to a leaf so that
            # controllers can be enabled for the task cgroups beside it.
            self.cgroups.move_self_to_leaf()
        self.cgroups.ensure_parent()
        self.warmer = MigrationWarmer(own_procs_file())
        self.warmer.start()
        self.client.connect()
        if self.spares is not None:
            self.spares.open()  # after the launcher, which makes the state dir
        listing = self.client.request("list")
        with self._cv:
            for rec in listing["exits"]:
                self._raw_exits[rec["key"]] = rec
        self._watcher = threading.Thread(target=self._watch_pidfds, name="pidfd-watch", daemon=True)
        self._watcher.start()
        notes = [p.message for p in problems]
        if self.client.child != "c":
            notes.append("the launcher sets tasks up with its Python child (the C extension isolation._spawn is "
                         "not built, or TASKSD_CHILD=python): every start costs a few ms more")
        elif self.client.launcher != "c":
            notes.append("the launcher is the Python one (isolation/tasksd-launcher is not built, or "
                         "TASKSD_LAUNCHER=python, or it was started by an older tasksd and still runs): ~10 MB "
                         "more memory than the C launcher")
        return notes

    def close(self) -> None:
        """Disconnect; tasks and the launcher keep running (a daemon restart must not touch workloads)."""
        self._closed = True
        self.warmer.close()
        os.write(self._wake_w, b"x")
        if self._watcher:
            self._watcher.join(5)
        self.client.close()
        for fd in list(self._adopted):
            os.close(fd)
        self._adopted.clear()

    def shutdown_launcher(self, timeout: float = 10.0) -> None:
        """Stop the launcher itself (drain, tests). Only after every task is gone: it owns their log pipes."""
        pid = self.client.launcher_pid
        try:
            self.client.request("shutdown")
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        self.close()
        if pid:
            _wait_gone(pid, timeout)

    # ---- handles and exits -------------------------------------------------------------------------------
    def register(self, handle: TaskHandle) -> None:
        handle = handle.without_exec_env()  # exit bookkeeping needs none of it, and it is KBs per task
        with self._cv:
            self._handles[handle.key] = handle
            raw = self._raw_exits.pop(handle.key, None)
        if raw is not None:
            self._finish(handle, raw)

    def registered(self, key: str) -> TaskHandle | None:
        """The handle (without exec_env) kept for `key`'s exit, so a caller holds that one instead of a copy."""
        with self._cv:
            return self._handles.get(key)

    # ---- task cgroups -------------------------------------------------------------------------------------
    def prepare_cgroup(self, name: str, limits: "cgroups.CgroupLimits") -> "CgroupTicket":
        """A ticket for task cgroup `name`: send() has the launcher make it and write its limits while the caller
        goes on (a start builds the task's directories meanwhile: ~0.2 ms each, on two CPUs; open_logs() can add
        the task's log files); result() collects it, or makes it here when it was never sent. A sent ticket must
        be collected, result() or discard(), on every path: it holds the launcher's call connection until then."""
        return CgroupTicket(self, name, limits)

    def spawn_body(self, spec: "LaunchSpec", spec_dict: dict, fresh: bool, respawn: dict | None = None) -> bytes:
        """The spawn request for whichever launcher serves us. fresh: the task's cgroup was made for this start.
        respawn (C launcher): {"next_key", "vacant"}, to keep the request for a respawn (see TaskHandle.armed)."""
        if self.client.launcher == "c":
            v2 = f"{self.layout.v2_mount}/" if self.layout.v2_mount else None
            extra = {"respawn": respawn} if respawn else {}
            req = childplan.c_launcher_request("spawn", spec, self.client.slots, v2, fresh, **extra)
            return self.client.encode(req.pop("op"), **req)
        return self.client.encode("spawn", spec=spec_dict)

    def exec_in(self, spec: "LaunchSpec", pid: int, start_time: int | None, fds: list[int]) -> None:
        """Start spec's process in the namespaces of running task `pid` (tasksctl exec), with `fds` as its stdio."""
        if self.client.launcher == "c":
            try:
                enter = childplan.namespaces_to_enter(pid)
            except OSError:
                raise LauncherError(f"the task's process {pid} has exited", "exec", errno.ESRCH) from None
            req = childplan.c_launcher_request("exec", spec, self.client.slots, enter=enter, target_pid=pid,
                                               target_start_time=start_time, nfds=len(fds))
            self.client.request(req.pop("op"), body=self.client.encode("exec", **req), fds=fds)
            return
        self.client.request("exec", spec=spec.to_dict(), target_pid=pid, target_start_time=start_time, fds=fds,
                            nfds=len(fds))

    def expect_start(self) -> None:
        """A task start is likely within tens of ms (a manifest changed, a task exited): see cgroups.warm."""
        self.warmer.poke()

    def _on_event(self, ev: dict) -> None:
        if ev.get("event") == "disconnected":
            if not self._closed and self.on_launcher_lost is not None:
                self.on_launcher_lost()
            return
        if ev.get("event") != "exit":
            return
        self.warmer.poke()  # a restart usually follows
        with self._cv:
            handle = self._handles.get(ev["key"])
            if handle is None:
                # Not registered yet (the start reply is still in flight), or an exec'd process.
                self._raw_exits[ev["key"]] = ev
                self._cv.notify_all()
                return
        self._finish(handle, ev)

    def _finish(self, handle: TaskHandle, raw: dict) -> None:
        sig = raw.get("signal")
        code = raw.get("exit_code")
        error = raw.get("error")
        ooms = self._oom_count(handle)
        successor = self._successor(handle, raw.get("respawned"), ooms)
        result = ExitResult(exit_code=code, signal=sig, oom_killed=ooms > handle.oom_baseline, error=error,
                            finished_at=raw.get("finished_at", time.time()), respawned=successor,
                            respawn_error=raw.get("respawn_error"))
        with self._cv:
            if handle.key in self._results:
                return
            self._results[handle.key] = result
            self._cv.notify_all()
        if self.on_exit:
            self.on_exit(handle, result)
        if successor is not None:
            # After on_exit: should the new run have exited already, its exit must reach the caller after this one.
            self._watch(successor, bool(raw.get("reloaded")))

    def _watch(self, successor: TaskHandle, reloaded: bool) -> None:
        """Have the new run's exit reported: by the launcher that respawned it, or, when that launcher is gone
        and this one read its exit record back (`reloaded`), by pidfd as any task an earlier launcher left."""
        if self.registered(successor.key) is not None:
            return  # the stop's disarm and the exit event both learned of it; the first one watches it
        if not reloaded:
            self.register(successor)
            return
        try:
            adopted = self.adopt(successor)
        except OSError as e:  # e.g. EMFILE: it cannot be watched, so its exit is unknown (and handled as such)
            log.warning("cannot watch %s: %s", successor.key, e)
            adopted = False
        if not adopted:
            self.register(successor)
            self._finish(successor, {"exit_code": None, "error": UNKNOWN_EXIT})

    def _oom_count(self, handle: TaskHandle) -> int:
        cg = self.cgroups.open(handle.cgroup)
        return cg.oom_kills() if cg is not None else 0

    @staticmethod
    def _successor(handle: TaskHandle, respawned: dict | None, ooms: int) -> TaskHandle | None:
        """The handle of the run the launcher started in place of `handle` (its exit record's "respawned").
        Its OOM baseline is the count read at the exit: an OOM kill of the new run in the moment between its
        start and that read would go unreported (the launcher cannot read the count for every cgroup layout)."""
        if not respawned:
            return None
        return dataclasses.replace(
            handle, key=respawned["key"], pid=respawned["pid"], start_time=respawned["start_time"],
            started_at=respawned["started_at"], oom_baseline=ooms, armed=False, exec_env={})

    def disarm(self, key: str, timeout: float = 60.0) -> TaskHandle | None:
        """Make sure the launcher does not respawn run `key` (before it is stopped or killed). Returns the handle
        of the run the launcher started in its place, should it have exited and been respawned before this."""
        if not self.client.respawns:
            return None
        reply = self.client.request("disarm", key=key, timeout=timeout)
        respawned = (reply.get("exit") or {}).get("respawned")
        if not respawned:
            return None
        with self._cv:
            handle = self._handles.get(key)
        if handle is None:
            return None  # a start lost in a crash: its caller kills the whole cgroup, the successor with it
        known = self.registered(respawned["key"])
        if known is not None:
            return known
        successor = self._successor(handle, respawned, self._oom_count(handle))
        assert successor is not None
        self._watch(successor, bool(reply["exit"].get("reloaded")))
        return successor

    def arm(self, key: str) -> None:
        """Let the launcher respawn run `key` (a run it made itself) once more, as respawn_key(key)."""
        if self.client.respawns:
            self.client.notify("arm", key=key, next_key=respawn_key(key))

    def reporting(self, key: str) -> bool:
        """Whether an exit of run `key` can still be learned: the launcher is there, or a pidfd watches it."""
        with self._cv:
            if any(h.key == key for h in self._adopted.values()):
                return True
        return self.client.connected

    def result(self, key: str) -> ExitResult | None:
        with self._cv:
            return self._results.get(key)

    def wait(self, key: str, timeout: float | None) -> ExitResult | None:
        with self._cv:
            self._cv.wait_for(lambda: key in self._results, timeout)
            return self._results.get(key)

    def wait_exec(self, key: str, timeout: float | None) -> ExitResult | None:
        """Wait for a process started by `exec` to exit; its record is acked at once (nobody else wants it)."""
        with self._cv:
            self._cv.wait_for(lambda: key in self._raw_exits, timeout)
            raw = self._raw_exits.pop(key, None)
        if raw is None:
            return None
        try:
            self.client.request("ack", key=key)
        except Exception:  # noqa: BLE001
            pass
        return ExitResult(exit_code=raw.get("exit_code"), signal=raw.get("signal"),
                          finished_at=raw.get("finished_at"))

    def sweep_unclaimed_exits(self, max_age: float = UNCLAIMED_EXIT_AGE, now: float | None = None) -> list[str]:
        """Ack and drop exit records nobody registered a handle for within `max_age` seconds of the exit.

        A record waits here for a start reply still in flight (at most the spawn timeout) or for `wait_exec`
        (which takes it at once). One older than that belongs to a spawn whose handle was never recorded (the
        daemon died between the launcher's reply and storing it; the next start killed the process): without
        this it stayed in memory here and on disk in the launcher forever."""
        now = time.time() if now is None else now
        with self._cv:
            stale = [k for k, ev in self._raw_exits.items() if (ev.get("finished_at") or now) < now - max_age]
            for k in stale:
                del self._raw_exits[k]
        for k in stale:
            try:
                self.client.notify("ack", key=k)
            except Exception as e:  # noqa: BLE001 - the next sweep does not see it, but a restart's list does
                log.debug("ack %s: %s", k, e)
        return stale

    def ack(self, handle: TaskHandle) -> None:
        """The controller persisted the exit: the launcher may forget it."""
        with self._cv:
            self._results.pop(handle.key, None)
            self._handles.pop(handle.key, None)
        try:
            # Not waited for: the restart that usually follows must not pay a round trip for it.
            self.client.notify("ack", key=handle.key)
        except Exception as e:  # noqa: BLE001 - an unacked record is re-delivered later, which is harmless
            log.debug("ack %s: %s", handle.key, e)

    def launcher_view(self) -> dict:
        if self._view is not None:
            return self._view
        return self.client.request("list")

    def begin_recovery(self) -> None:
        """Recovering N tasks asks the launcher about each: fetch its list once (O(N), not O(N^2))."""
        self._view = self.client.request("list")

    def end_recovery(self) -> None:
        self._view = None

    # ---- signals -----------------------------------------------------------------------------------------
    def send_signal(self, handle: TaskHandle, sig: int) -> bool:
        """Signal the task's main process. False when it is already gone."""
        if self.result(handle.key) is not None:
            return False
        try:
            self.client.request("signal", key=handle.key, signal=sig)
            return True
        except Exception:  # noqa: BLE001 - not the launcher's child: an adopted task, signal via its pidfd
            pass
        for fd, h in list(self._adopted.items()):
            if h.key == handle.key:
                try:
                    _signal.pidfd_send_signal(fd, sig)
                    return True
                except ProcessLookupError:
                    return False
        return False

    # ---- adoption of tasks the launcher does not know --------------------------------------------------
    def adopt(self, handle: TaskHandle) -> bool:
        """Watch a live task that is not the launcher's child. Identity is verified before anything else."""
        if not self.identity_matches(handle):
            return False
        try:
            fd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            return False
        # Re-check after opening: the pid may have been reused between the check and pidfd_open.
        if not self.identity_matches(handle):
            os.close(fd)
            return False
        handle = handle.without_exec_env()
        with self._cv:
            self._handles[handle.key] = handle
            self._adopted[fd] = handle
        os.write(self._wake_w, b"x")
        return True

    def identity_matches(self, handle: TaskHandle) -> bool:
        if handle.boot_id != self.boot_id:
            return False
        try:
            if ksys.process_start_time(handle.pid) != handle.start_time:
                return False
        except (OSError, ValueError):
            return False
        cg = self.cgroups.open(handle.cgroup)
        return bool(cg and handle.pid in cg.pids())

    def _watch_pidfds(self) -> None:
        while not self._closed:
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._cv:
                fds = list(self._adopted)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._cv:
                    handle = self._adopted.pop(fd, None)
                if handle is None:
                    continue
                threading.Thread(target=self._collect_adopted_exit, args=(fd, handle), name="pidfd-exit",
                                 daemon=True).start()

    def _collect_adopted_exit(self, fd: int, handle: TaskHandle) -> None:
        """The exit status of a task we are not the parent of. PIDFD_GET_INFO (Linux >= 6.15) has it only once
        its real parent reaped it: that is init here, which takes up to ~2 s, so ask a few times before saying
        "unknown". One short-lived thread per exit, not a poll per task."""
        info = None
        deadline = time.monotonic() + 5.0
        try:
            while info is None and time.monotonic() < deadline and not self._closed:
                try:
                    info = ksys.pidfd_get_info(fd)
                except OSError:
                    break
                if info is None:
                    time.sleep(0.05)
        finally:
            os.close(fd)
        raw: dict = {"key": handle.key, "finished_at": time.time()}
        if info is None:
            raw.update(exit_code=None, signal=None, error=UNKNOWN_EXIT)
        else:
            raw.update(describe_status(info))
        self._finish(handle, raw)


class CgroupTicket:
    """A task cgroup the launcher is asked to make (Runtime.prepare_cgroup)."""

    def __init__(self, runtime: Runtime, name: str, limits: "cgroups.CgroupLimits") -> None:
        self.runtime, self.mgr, self.name, self.limits = runtime, runtime.cgroups, name, limits
        self.task = self.mgr.planned(name, limits)  # its directories are known before it exists
        self.pending = None
        self._done: "cgroups.TaskCgroup | None" = None
        self._error: "cgroups.CgroupError | None" = None

    def send(self) -> None:
        """Ask the launcher now, unless this manager made the cgroup with these limits already (a restart): then
        it is four mkdirs that find it there, cheaper here than a round trip, and result() does them."""
        rewrite = self.mgr.needs_limits(self.name, self.limits)
        if not rewrite or self.runtime.client.launcher == "c":
            return  # the C launcher makes no cgroups: result() makes it here
        self.mgr.forget(self.name)  # unknown until the launcher says it wrote them
        try:
            self.pending = self.runtime.client.submit(
                "cgroup", name=self.name, mode=self.runtime.layout.mode, paths=self.task.dirs(),
                limits=dataclasses.asdict(self.limits), rewrite=rewrite)
        except (LauncherError, OSError):
            self.pending = None  # result() makes it here instead

    def open_logs(self, key: str, logs: "tuple[LogTarget | None, ...]") -> None:
        """Have the launcher open task `key`'s log files (their directory exists now) for its spawn, which must
        follow on the same connection: only while this ticket holds the call connection, else the spawn opens
        them itself. Ordered behind the cgroup request; its reply is skipped like any other on that connection."""
        if isinstance(self.pending, CallPending):
            self.runtime.client.send_on_call(
                "open_logs", key=key,
                logs=[None if t is None else [t.dir, t.base, t.max_files, t.max_file_size] for t in logs])

    def result(self) -> "cgroups.TaskCgroup":
        """The task cgroup, made with its limits written (`existed` says whether it was there already).

        Whatever kept the launcher from making it (a launcher from before this request, a parent removed by
        hand, a lost connection) is retried here by the manager itself, which makes a missing parent and raises
        CgroupError for what it cannot do either: one place says why a cgroup cannot be made."""
        if self._done is not None:
            return self._done
        if self._error is not None:
            raise self._error
        pending, self.pending = self.pending, None
        reply = None
        if pending is not None:
            try:
                reply = pending.result()
            except LauncherError:
                pass  # made below instead
        if reply is not None:
            self.task.existed = bool(reply.get("existed"))
            self.mgr.note_written(self.name, self.limits)
            self._done = self.task
        else:
            try:
                self._done = self.mgr.create(self.name, self.limits)
            except cgroups.CgroupError as e:
                self._error = e
                raise
        return self._done

    def discard(self) -> None:
        """The start failed before its spawn: collect the reply and remove a cgroup made for it. (Log files the
        launcher opened for the spawn are closed by its next request on the call connection.)"""
        if self.pending is None and self._done is None:
            return  # never sent (or its reply already collected and lost): nothing was made for this start
        try:
            cg = self.result()
        except Exception:  # noqa: BLE001 - nothing was made, or nothing more can be done about it here
            cg = None
        if cg is not None and not cg.existed:
            self.mgr.forget(self.name)
            try:
                cg.remove()
            except (cgroups.CgroupError, OSError):
                pass  # GC of the alloc removes it


def _wait_gone(pid: int, timeout: float) -> None:
    """Reap `pid` if it is our child, else wait for it to disappear (pidfd poll, no sleeping loop)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
