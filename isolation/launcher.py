"""The launcher: one long-lived, single-threaded process that forks every task and outlives daemon restarts.

Why a separate process: the daemon is multi-threaded (watchdog, API), and forking a threaded Python process to run
Python setup code before exec is unsafe. The launcher has exactly one thread, so its fork + ordered child setup
(`isolation.child`) is safe. It is also the tasks' parent and a child subreaper, so it reaps orphaned grandchildren
at once (PID 1 here takes over a second) and keeps exit statuses while the daemon is down, on disk until acked.
It owns the read end of every task's stdout/stderr pipe, so a daemon restart never blocks a task's writes.

Protocol (unix stream socket, one JSON object per line, see docs/DESIGN.md): requests carry "id" and "op"; replies
carry the same "id" and "ok"; exit events {"event": "exit", ...} go to every connected client. File descriptors for
`exec` (the caller's stdio) come as SCM_RIGHTS on the request's message.
"""
from __future__ import annotations

import array
import errno
import fcntl
import gc
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from isolation import cgroups, child, childplan
# Imported here, never lazily in the child: after pivot_root the child can no longer see tasksd's own files.
from isolation import caps, landlock, mounts  # noqa: F401
from isolation import sys as ksys
from isolation.cgroups.base import rmdir_retrying
from isolation.launcher_proto import PROTOCOL_VERSION, describe_status, socket_path, via_short_path
from isolation.launcher_proto import encode as _encode
from isolation.launchspec import LaunchSpec, LogTarget
from isolation.logs import RotatingLog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (0.5 MB of the launcher's memory)
if TYPE_CHECKING:
    import subprocess  # imported when first spawning (see _spawn_fast)

MAX_LINE = 4 * 1024 * 1024
MAX_OPEN_LOG_FILES = 256  # log files kept open; quieter ones are reopened at their next output (see _log_used)
PUMP_READS_PER_WAKEUP = 16  # x 64 KiB: at most 1 MiB of one task's output per turn of the loop (see _pump)


@dataclass(slots=True)
class Task:
    key: str
    pid: int
    start_time: int
    popen: object = None  # a Popen (uid-changing fast path) must hear the exit status, or it reaps the pid itself
    logs: list = field(default_factory=list)  # fds of log pipes still open


@dataclass
class Spawning:
    """A forked child whose setup has not finished yet (no exec, no error report so far)."""

    spec: LaunchSpec
    pid: int
    start_time: int
    conn: "Conn"
    rid: object
    err_r: int
    log_ends: list
    report: bytes = b""
    status: int | None = None  # set when reaped before its error pipe was read


@dataclass
class Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    out: bytearray = field(default_factory=bytearray)
    closed: bool = False
    writing: bool = False  # registered for EVENT_WRITE (output is queued)
    events: bool = True  # exit events are sent here (a client's call connection opts out: op_unsubscribe)
    # Log files opened for the spawn that is to come next on this connection (op open_logs): (task key, writers).
    ahead: "tuple[str, dict[LogTarget, RotatingLog]] | None" = None


class LowSlots:
    """A few low descriptor numbers the launcher keeps open on /dev/null, for the descriptors of one C-child spawn.

    A plain clone copies the launcher's whole descriptor table into the child, which then closes all of it again
    one by one: with 1000 tasks (~2300 log pipes and files) that was ~12% of the launcher's CPU per restart
    (`perf`: dup_fd, close_range's filp_close). Instead the child shares the table (CLONE_FILES) and its first
    step keeps a private copy of the descriptors below `limit` only (close_range with CLOSE_RANGE_UNSHARE). So
    what it needs is dup2'ed into these slots before the clone, and the slots go back to /dev/null right after:
    a slot left holding a task's pipe would keep the launcher from ever seeing that pipe's EOF."""

    SIZE = 12  # stdin, stdout, stderr, the error pipe, and up to six namespace fds and a root for an exec

    def __init__(self) -> None:
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.slots = [os.dup(self.null) for _ in range(self.SIZE)]  # close-on-exec, as os.dup makes them
        self.limit = max(self.slots) + 1
        self.used: list[int] = []

    def place(self, fds: dict, enter: dict | None) -> tuple[dict, dict | None] | None:
        """`fds` and `enter` with every descriptor moved into a slot; None when there are too many to place."""
        distinct = list(dict.fromkeys([*fds.values(), *(enter or {}).values()]))
        if len(distinct) > len(self.slots):
            return None
        where = {}
        for fd, slot in zip(distinct, self.slots):
            self.used.append(slot)
            os.dup2(fd, slot, inheritable=False)
            where[fd] = slot
        return ({k: where[v] for k, v in fds.items()},
                None if enter is None else {k: where[v] for k, v in enter.items()})

    def reset(self) -> None:
        for slot in self.used:
            os.dup2(self.null, slot, inheritable=False)
        self.used.clear()


class Launcher:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.exits_dir = self.run_dir / "exits"
        self.sel = selectors.DefaultSelector()
        self.tasks: dict[str, Task] = {}
        self.by_pid: dict[int, str] = {}
        self.spawning: dict[int, Spawning] = {}
        self.exits: dict[str, dict] = {}
        self.logs: dict[int, tuple[RotatingLog, str]] = {}  # pipe read fd -> (log, task key)
        # Log files with an open descriptor, least recently written first (see _log_used).
        self.open_logs: OrderedDict[int, RotatingLog] = OrderedDict()
        # Log files opened ahead (op open_logs) for a spawn that is under way: task key -> target -> writer.
        self.logs_ahead: dict[str, dict[LogTarget, RotatingLog]] = {}
        self.conns: dict[int, Conn] = {}
        self.running = True
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        layout = cgroups.detect()
        hierarchies = ([cgroups.UNIFIED] if layout.v2_mount else []) + list(layout.v1_mounts)
        self.own_cgroups = [(str(layout.mount(h)), str(layout.own_dir(h))) for h in hierarchies]
        self.cgroup_mode = layout.mode
        self.own_oom_score_adj = int(Path("/proc/self/oom_score_adj").read_text())
        # v1 hierarchies holding the cpu controller, joined after exec by the fast path (see _spawn_fast).
        self.late_mounts = tuple(str(layout.v1_mounts[c]) + "/" for c in ("cpu",) if c in layout.v1_mounts)
        self.boot_id = ksys.boot_id()
        # Which child sets tasks up, fixed for the launcher's life (TASKSD_CHILD is read from its environment).
        self.c_child = childplan.available()
        # Made now, while the numbers are low: the C child copies only the descriptors below these (see LowSlots).
        self.low = LowSlots() if self.c_child else None
        # The C child is cloned straight into the task's cgroup v2 directory (clone3 CLONE_INTO_CGROUP) instead
        # of writing its pid into cgroup.procs. A migration takes the kernel's cgroup_threadgroup_rwsem for
        # writing, and the first one after a quiet spell waits a whole RCU grace period for it (5-16 ms here); a
        # clone into the cgroup takes it for reading only. On pure v2 a task then needs no migration at all; on
        # hybrid its v1 hierarchies still do. Off when the build lacks it, when the kernel refuses it (found by
        # _probe_clone_into or at a spawn), or with TASKSD_CLONE_INTO_CGROUP=0.
        #
        # Kernels with the fork/cgroup.kill race fix (6.14, and the stable lines it went back to) read, for
        # CLONE_INTO_CGROUP, the kill counter of the parent's cgroup instead of the target's, and SIGKILL the new
        # child at birth whenever the target was ever sent cgroup.kill (6.18 here; see _probe_clone_into).
        # On those, only a cgroup made by op_cgroup for this very start (never killed) is cloned into; a restart
        # into a reused one joins by writing.
        self.v2_prefix = str(layout.v2_mount) + "/" if layout.v2_mount else None
        self.clone_into = bool(self.c_child and self.v2_prefix and childplan.clone_into_cgroup_built()
                               and os.environ.get("TASKSD_CLONE_INTO_CGROUP", "1") != "0")
        self.fresh_v2: set[str] = set()  # v2 dirs op_cgroup made that no spawn went into yet
        self.killed_clone_ok: bool | None = None  # see _probe_clone_into; None: not asked yet
        self.joins = {"clone": 0, "pid": 0}  # how C children got into their v2 cgroup (ping)

    # ---- setup -------------------------------------------------------------------------------------------
    def listen(self) -> socket.socket:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.exits_dir.mkdir(mode=0o700, exist_ok=True)
        self._load_exits()
        path = socket_path(self.state_dir)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket is created 0600: only root may ask for a process
        try:
            via_short_path(srv.bind, str(path))
        finally:
            os.umask(old)
        srv.listen(16)
        srv.setblocking(False)
        self.sel.register(srv, selectors.EVENT_READ, ("accept", None))
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        # A ^C meant for a foreground tasksd must not stop us. A Python handler rather than SIG_IGN: ignored
        # signals survive execve, handled ones are reset, and tasks spawned without Python in the child
        # (the raw_exec fast path) must start with SIGINT and SIGHUP at their defaults.
        signal.signal(signal.SIGINT, lambda *_: None)
        signal.signal(signal.SIGHUP, lambda *_: None)
        self.sel.register(r, selectors.EVENT_READ, ("signal", None))
        return srv

    def _on_term(self, *_):
        self.running = False

    def _load_exits(self) -> None:
        for p in self.exits_dir.glob("*.json"):
            try:
                rec = json.loads(p.read_text())
                self.exits[rec["key"]] = rec
            except (OSError, ValueError, KeyError):
                p.unlink(missing_ok=True)

    # ---- main loop ---------------------------------------------------------------------------------------
    def serve(self) -> None:
        self._reap()
        while self.running:
            for key, mask in self.sel.select(timeout=None):
                kind, obj = key.data
                try:
                    if kind == "accept":
                        self._accept(key.fileobj)
                    elif kind == "signal":
                        try:
                            os.read(key.fd, 4096)
                        except BlockingIOError:
                            pass
                        self._reap()
                    elif kind == "log":
                        self._pump(key.fd)
                    elif kind == "spawn":
                        self._spawn_progress(obj)
                    elif kind == "conn":
                        if mask & selectors.EVENT_READ:
                            self._read_conn(obj)
                        if mask & selectors.EVENT_WRITE and obj.sock.fileno() in self.conns:
                            self._flush(obj)
                except Exception as e:  # noqa: BLE001 - the launcher must never die on one bad request
                    _log(f"launcher: {kind}: {type(e).__name__}: {e}")
        for fd in list(self.logs):
            self._pump(fd, final=True)

    def _accept(self, srv: socket.socket) -> None:
        try:
            s, _ = srv.accept()
        except BlockingIOError:
            return
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):
            s.close()
            return
        s.setblocking(False)
        conn = Conn(s)
        self.conns[s.fileno()] = conn
        self.sel.register(s, selectors.EVENT_READ, ("conn", conn))

    def _close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._close_ahead(conn)
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        # Cleared, not only closed: the numbers are reused at once (a spawn's pipes), and a request still queued
        # in this connection's buffer must not hand them to an exec'd child or close them a second time.
        fds, conn.fds = conn.fds, []
        for fd in fds:
            os.close(fd)
        conn.buf = bytearray()
        conn.sock.close()

    def _read_conn(self, conn: Conn) -> None:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = conn.sock.recvmsg(65536, socket.CMSG_SPACE(16 * fds.itemsize))
        except BlockingIOError:
            return
        except OSError:
            self._close_conn(conn)
            return
        for level, type_, cdata in ancdata:
            if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
        for fd in fds:
            os.set_inheritable(fd, False)
        conn.fds.extend(fds)
        if not data:
            self._close_conn(conn)
            return
        conn.buf += data
        if len(conn.buf) > MAX_LINE:
            self._close_conn(conn)
            return
        while not conn.closed and b"\n" in conn.buf:
            line, _, rest = bytes(conn.buf).partition(b"\n")
            conn.buf = bytearray(rest)
            self._handle(conn, line)

    def _send(self, conn: Conn, obj: dict) -> None:
        conn.out += _encode(obj).encode() + b"\n"
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._close_conn(conn)
            return
        want = bool(conn.out)
        if want != conn.writing:  # only on a change: nearly every reply goes out whole
            conn.writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(conn.sock, events, ("conn", conn))

    def _broadcast(self, obj: dict) -> None:
        for conn in list(self.conns.values()):
            if conn.events:
                self._send(conn, obj)

    # ---- requests ----------------------------------------------------------------------------------------
    def _handle(self, conn: Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
            rid, op = req.get("id"), req["op"]
        except (ValueError, KeyError, AttributeError, RecursionError):  # RecursionError: "[[[[..." nested deep
            self._send(conn, {"id": None, "ok": False, "error": "malformed request"})
            return
        if conn.ahead is not None and op != "spawn":
            self._close_ahead(conn)  # they were for a spawn that is not coming (see op_open_logs)
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            self._send(conn, {"id": rid, "ok": False, "error": f"unknown op {op!r}"})
            return
        try:
            reply = handler(req, conn)
            if reply is None:
                return  # deferred: the handler answers later
            reply.update(id=rid, ok=True)
        except LaunchError as e:
            reply = {"id": rid, "ok": False, "error": str(e), "step": e.step, "errno": e.errno}
        except Exception as e:  # noqa: BLE001
            reply = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
        self._send(conn, reply)

    def op_ping(self, req, conn) -> dict:
        return {"pid": os.getpid(), "protocol": PROTOCOL_VERSION, "boot_id": self.boot_id,
                "child": "c" if self.c_child else "python", "clone_into_cgroup": self.clone_into,
                "clone_into_killed_cgroup": self.killed_clone_ok, "cgroup_joins": dict(self.joins)}

    def op_list(self, req, conn) -> dict:
        return {
            "tasks": [{"key": t.key, "pid": t.pid, "start_time": t.start_time} for t in self.tasks.values()],
            "exits": list(self.exits.values()),
        }

    def op_unsubscribe(self, req, conn) -> dict:
        """No exit events on this connection: a client reads its replies there itself, and unread events would
        pile up in it."""
        conn.events = False
        return {}

    def op_ack(self, req, conn) -> dict:
        key = req["key"]
        self.exits.pop(key, None)
        (self.exits_dir / f"{_safe_key(key)}.json").unlink(missing_ok=True)
        return {}

    def op_signal(self, req, conn) -> dict:
        task = self.tasks.get(req["key"])
        if task is None:
            raise LaunchError(f"task {req['key']} is not running", "signal", errno.ESRCH)
        # Safe against pid reuse: we are the parent and have not reaped it, so the pid is still this task.
        os.kill(task.pid, int(req["signal"]))
        return {}

    def op_shutdown(self, req, conn) -> dict:
        self.running = False
        return {}

    def op_cgroup(self, req, conn) -> dict:
        """Make a task's cgroup and write its limits, for a daemon that meanwhile builds the task's directories
        (two CPUs, ~0.2 ms each on a start): see Runtime.prepare_cgroup. The daemon names the directories (it
        knows its parent and which hierarchies the limits need); they must lie in this host's cgroup mounts."""
        if req.get("mode") != self.cgroup_mode:
            raise LaunchError(f"cgroup mode {req.get('mode')!r} is not this host's ({self.cgroup_mode})", "cgroup",
                              errno.EINVAL)
        dirs: dict[str, str] = {}
        for h, p in dict(req["paths"]).items():
            p = str(p)
            if "/../" in p + "/" or not any(p.startswith(mount + "/") for mount, _ in self.own_cgroups):
                raise LaunchError(f"{p} is not in a cgroup hierarchy", "cgroup", errno.EINVAL)
            dirs[str(h)] = p
        task = cgroups.task_cgroup_class(self.cgroup_mode).at(str(req["name"]), dirs)
        limits = cgroups.CgroupLimits(**dict(req["limits"]))
        try:
            cgroups.make(task, limits, bool(req.get("rewrite", True)))
        except cgroups.ParentMissing as e:
            raise LaunchError(str(e), "cgroup", errno.ENOENT) from None
        except (cgroups.CgroupError, OSError) as e:
            raise LaunchError(str(e), "cgroup", getattr(e, "errno", None) or errno.EIO) from None
        if self.clone_into:
            for p in dirs.values():
                if p.startswith(self.v2_prefix):
                    if self.killed_clone_ok is None:
                        self._probe_clone_into(os.path.dirname(p))
                    if task.existed:
                        self.fresh_v2.discard(p)
                    elif len(self.fresh_v2) < 4096:  # made for starts that never came: bounded
                        self.fresh_v2.add(p)
        return {"existed": task.existed}

    def op_open_logs(self, req, conn) -> dict:
        """Open a starting task's log files now, while the daemon finishes its task dir and spec, for the spawn
        of the same key that comes next on this connection (see _spawn_succeeded). Any other request on the
        connection first, or its end, closes them: a start that failed before its spawn needs no message to
        say so. Nothing here is an error: the spawn opens whatever could not be opened now."""
        self._close_ahead(conn)
        opened: dict[LogTarget, RotatingLog] = {}
        for t in req.get("logs") or []:
            if t is None:
                continue
            try:
                target = LogTarget(str(t[0]), str(t[1]), int(t[2]), int(t[3]))
                opened[target] = RotatingLog(target.dir, target.base, target.max_files, target.max_file_size)
            except (ValueError, TypeError, IndexError, OSError):
                pass
        if opened:
            conn.ahead = (str(req.get("key")), opened)
        return {}

    @staticmethod
    def _close_ahead(conn: Conn) -> None:
        ahead, conn.ahead = conn.ahead, None
        for log in (ahead[1].values() if ahead else ()):
            log.close()

    def _close_logs_ahead(self, key: str) -> None:
        for log in self.logs_ahead.pop(key, {}).values():
            log.close()

    def op_spawn(self, req, conn) -> dict | None:
        # The request's descriptors are taken first, whatever happens next: left queued on the connection, they
        # would become the next request's.
        passed = self._take_fds(conn, int(req.get("nfds", 0)))
        spec = None
        took_ahead = False
        try:
            spec = LaunchSpec.from_dict(req["spec"])
            if conn.ahead is not None and conn.ahead[0] == spec.key and spec.key not in self.logs_ahead:
                self.logs_ahead[spec.key] = conn.ahead[1]  # taken by _spawn_succeeded, closed on failure
                conn.ahead = None
                took_ahead = True
            self._close_ahead(conn)  # opened for another key
            if spec.key in self.tasks:
                t = self.tasks[spec.key]
                if took_ahead:
                    self._close_logs_ahead(spec.key)
                return {"pid": t.pid, "start_time": t.start_time, "existing": True}
            if any(p.spec.key == spec.key for p in self.spawning.values()):
                raise LaunchError(f"task {spec.key} is already being spawned", "spawn", errno.EALREADY)
            self._spawn(spec, passed, conn, req.get("id"))
        except BaseException:
            if took_ahead:  # (not another spawn's, under way for the same key)
                self._close_logs_ahead(spec.key)
            raise
        finally:
            for fd in passed:
                os.close(fd)
        return None  # answered once the child has exec'd (or failed), see _spawn_done

    def op_exec(self, req, conn) -> dict | None:
        """Start a process inside a running task's namespaces (tasksctl exec); its stdio are the passed fds."""
        passed = self._take_fds(conn, int(req.get("nfds", 0)))  # first: see op_spawn
        try:
            spec = LaunchSpec.from_dict(req["spec"])
            target = int(req["target_pid"])
            # The pid alone could by now name another process (the task exited, the pid was reused): joining
            # its namespaces would run the command in a stranger's. Its start time tells them apart.
            expected = req.get("target_start_time")
            if expected is not None:
                try:
                    alive = ksys.process_start_time(target) == int(expected)
                except OSError:
                    alive = False
                if not alive:
                    raise LaunchError(f"the task's process {target} has exited", "exec", errno.ESRCH)
            self._spawn(spec, passed, conn, req.get("id"), enter_pid=target)
        finally:
            for fd in passed:
                os.close(fd)
        return None

    def _take_fds(self, conn: Conn, n: int) -> list[int]:
        if n > len(conn.fds):
            # Taken and closed all the same: left queued, they would become the next request's (an exec's stdio).
            have, conn.fds = conn.fds, []
            for fd in have:
                os.close(fd)
            raise LaunchError(f"expected {n} file descriptors, got {len(have)}", "request", errno.EINVAL)
        taken, conn.fds = conn.fds[:n], conn.fds[n:]
        return taken

    # ---- spawning ----------------------------------------------------------------------------------------
    def _fast_path_ok(self, spec: LaunchSpec, passed: list[int], enter_pid: int | None) -> bool:
        """Without the C child: raw_exec-style tasks need nothing Python must do between fork and exec except
        joining the cgroup, which the launcher can do for them (see _spawn_fast). Anything else goes through
        isolation.child."""
        ns = spec.namespaces
        return (enter_pid is None and not passed and spec.rootfs is None
                and spec.landlock is None and spec.caps is None and not spec.no_new_privs and not spec.ctty
                and spec.setsid and not (ns.mount or ns.pid or ns.ipc or ns.uts or ns.mount_proc)
                and ns.net == "host" and spec.oom_score_adj == self.own_oom_score_adj
                and all(self._own_procs_for(p) for p in spec.cgroup_procs))

    def _own_procs_for(self, procs: str) -> str | None:
        """Our own cgroup.procs in the hierarchy that `procs` belongs to."""
        for mount, own_dir in self.own_cgroups:
            if procs.startswith(mount + "/"):
                return f"{own_dir}/cgroup.procs"
        return None

    def _spawn_fast(self, spec: LaunchSpec, conn: Conn, rid) -> None:
        """Spawn without running Python in the child: subprocess's C fork/exec (vfork when no uid change).

        The child must be in the task's cgroups before its first instruction, so the launcher itself joins them,
        spawns (the child inherits them), and goes back: safe because the launcher is single-threaded.
        oom_score_adj is inherited too, so this path is taken only when the task's value equals ours (see
        _fast_path_ok for what else the path requires).

        One exception to "before": the v1 cpu hierarchy is joined right after the exec. A process that calls
        setsid() while in a non-root v1 cpu cgroup makes its execve ~0.2 ms slower (measured here; autogroup
        bookkeeping), which was a tenth of a start. cpu.shares is a weight, not a containment boundary, and
        `_join_late` also moves anything the task forked before its own move."""
        import subprocess

        opened: list[int] = []
        parent_ends: list[tuple[int, LogTarget | None]] = []
        early = [p for p in spec.cgroup_procs if not p.startswith(self.late_mounts)] or list(spec.cgroup_procs)
        late = [p for p in spec.cgroup_procs if p not in early]
        moved: list[str] = []
        pid = popen = None
        try:
            stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            opened.append(stdin)
            stdout = self._log_pipe(spec.stdout, opened, parent_ends)
            stderr = self._log_pipe(spec.stderr, opened, parent_ends)
            step = "join cgroup"
            try:
                for procs in early:
                    child.write_procs(procs)
                    moved.append(procs)
                # Not os.posix_spawn, though ~0.1 ms cheaper: glibc's leaves its two internal signals (32, 33)
                # ignored in the child, and an ignored signal stays ignored in the task.
                ids = {} if _same_credentials(spec) else {
                    "user": spec.uid, "group": spec.gid,
                    "extra_groups": list(spec.groups) if spec.groups is not None else None}
                step = "execve"
                popen = subprocess.Popen(
                    list(spec.argv), executable=spec.path, env=dict(spec.env), cwd=spec.cwd,
                    stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True, restore_signals=True,
                    start_new_session=True, umask=spec.umask, **ids)
                pid = popen.pid
            finally:
                for procs in reversed(moved):
                    own = self._own_procs_for(procs)
                    if own:
                        child.write_procs(own)
            if late:
                self._join_late(pid, late, early[0])
        except OSError as e:
            # If it started, its cgroups could not be completed: it must not run outside its limits.
            self._abandon_spawn(parent_ends, pid, popen)
            if pid is None and not moved and e.errno not in (errno.ENOENT, errno.EACCES):
                raise
            name = e.filename or (spec.path if step == "execve" else None)
            raise LaunchError(f"spawn failed at step {step}: {e.strerror or e}" + (f": {name}" if name else ""),
                              step, e.errno or errno.EIO) from None
        except Exception as e:
            # Popen refuses some input before forking (an env name with "=", a NUL byte): the pipes made for
            # the task must not leak, once per restart attempt, into the launcher.
            self._abandon_spawn(parent_ends, pid, popen)
            raise LaunchError(f"spawn failed at step {step}: {e}", step, errno.EINVAL) from None
        finally:
            for fd in opened:
                os.close(fd)
        pending = Spawning(spec=spec, pid=pid, start_time=ksys.process_start_time(pid), conn=conn,
                           rid=rid, err_r=-1, log_ends=parent_ends)
        self._spawn_succeeded(pending, popen)

    @staticmethod
    def _abandon_spawn(parent_ends: list, pid: int | None, popen: subprocess.Popen | None) -> None:
        """Undo a fast-path spawn that failed: close the task's pipe ends, and kill and reap it if it started."""
        for fd, _ in parent_ends:
            os.close(fd)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if popen is not None:
                popen.returncode = status

    @staticmethod
    def _join_late(pid: int, late: list[str], members_of: str) -> None:
        """Move a just-spawned task into the `late` cgroups, with whatever it forked before its move (read from
        a hierarchy it was born in). A fork after a process's move lands in the new cgroup, so each round can only
        find processes forked before the previous round's moves; three rounds cover any real task."""
        moved: set[int] = set()
        todo = {pid}
        for _ in range(3):
            for m in sorted(todo):
                for procs in late:
                    try:
                        child.write_procs(procs, m)
                    except ProcessLookupError:
                        pass  # it exited meanwhile
            moved |= todo
            with open(members_of) as f:
                todo = {int(x) for x in f.read().split()} - moved
            if not todo:
                return

    def _spawn(self, spec: LaunchSpec, passed: list[int], conn: Conn, rid, enter_pid: int | None = None) -> None:
        """Start the child. The C child (isolation/_spawn.c, every kind of task when built) shares our memory
        until its execve, so we are suspended until then and answer at once. The Python fallback forks and
        returns at once; the reply waits for the error pipe (EOF without a report means the child exec'd), so
        the slow part of one child's setup overlaps with the next spawn. Either way the reply comes only after
        the task's execve."""
        vfork = self.c_child
        if not vfork and self._fast_path_ok(spec, passed, enter_pid):
            self._spawn_fast(spec, conn, rid)
            return
        opened: list[int] = []
        parent_ends: list[tuple[int, LogTarget | None]] = []
        try:
            if passed:
                stdin, stdout, stderr = (passed + passed[-1:] * 3)[:3]
            else:
                stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                opened.append(stdin)
                stdout = self._log_pipe(spec.stdout, opened, parent_ends)
                stderr = self._log_pipe(spec.stderr, opened, parent_ends)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            opened.append(err_w)
            enter = None
            began = time.monotonic()
            try:
                # Inside the try: the target may have exited (an exec racing its end), and err_r must not leak.
                enter = _open_ns_fds(enter_pid) if enter_pid else None
                pid = self._fork(spec, {"stdin": stdin, "stdout": stdout, "stderr": stderr, "errpipe": err_w},
                                 enter)
            except BaseException:
                os.close(err_r)
                raise
            finally:
                for fd in (enter or {}).values():
                    os.close(fd)
        except BaseException:
            for fd, _ in parent_ends:
                os.close(fd)
            raise
        finally:
            for fd in opened:
                os.close(fd)
        pending = Spawning(spec=spec, pid=pid, start_time=ksys.process_start_time(pid), conn=conn, rid=rid,
                           err_r=err_r, log_ends=parent_ends)
        if vfork:
            # clone(CLONE_VFORK) returned: the child has exec'd or written its report and exited, and every
            # write end of the pipe is closed, so these reads cannot block.
            while chunk := os.read(err_r, 4096):
                pending.report += chunk
            if not pending.report and time.monotonic() - began >= childplan.SETUP_DEADLINE_S:
                self._check_setup_deadline(pending)
            self._spawn_done(pending)
            return
        self.spawning[pid] = pending
        os.set_blocking(err_r, False)
        self.sel.register(err_r, selectors.EVENT_READ, ("spawn", pending))

    @staticmethod
    def _check_setup_deadline(pending: "Spawning") -> None:
        """A child that took the whole deadline either exec'd just in time or was killed by its timer (stopped by
        someone, or stuck): the second one never ran the task and must be reported as a failed start.
        clone(CLONE_VFORK) returns once the child lets go of its memory, which a killed child does on its way out,
        before it is a zombie: a dying child is waited for (under load a WNOHANG wait right away missed it, and
        the killed start was reported as running)."""
        pidfd = None
        try:
            while True:
                try:
                    pid, status = os.waitpid(pending.pid, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid:
                    # Reaped here, so reported from here: a task that exec'd in time and exited already has its
                    # status in `pending` (the reaper will not see it again).
                    pending.status = status
                    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                        pending.report = json.dumps({
                            "step": "setup", "errno": errno.ETIMEDOUT,
                            "message": f"the child did not reach execve within {childplan.SETUP_DEADLINE_S} s "
                                       "(stopped or stuck; killed)"}).encode()
                    return
                if not ksys.process_exiting(pending.pid):
                    return  # it exec'd and runs
                if pidfd is None:
                    pidfd = os.pidfd_open(pending.pid)
                # Readable once it is a zombie; bounded, though an exiting process gets there without waiting on
                # anything but the CPU.
                if not select.select([pidfd], [], [], 5)[0]:
                    return
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _spawn_progress(self, pending: "Spawning") -> None:
        try:
            chunk = os.read(pending.err_r, 4096)
        except BlockingIOError:
            return
        if chunk:
            pending.report += chunk
            return
        # EOF: the child either exec'd (close-on-exec) or wrote its report and exited.
        self.sel.unregister(pending.err_r)
        self.spawning.pop(pending.pid, None)
        self._spawn_done(pending)

    def _spawn_done(self, pending: "Spawning") -> None:
        os.close(pending.err_r)
        if pending.report:
            if pending.status is None:
                os.waitpid(pending.pid, 0)  # it exits right after writing the report
            for fd, _ in pending.log_ends:
                os.close(fd)
            try:
                info = json.loads(pending.report)
                step, err = info["step"], info["errno"]
                # The C child reports errno and path only (strerror is not safe there); the Python child a message.
                message = info.get("message") or _c_child_message(step, err, info.get("path"))
                msg = f"spawn failed at step {step}: {message}"
            except (ValueError, KeyError):
                msg, step, err = "spawn failed", "unknown", errno.EIO
            # Closed before the caller hears of the failure: once it has, the launcher holds nothing of that start.
            self._close_logs_ahead(pending.spec.key)
            self._reply(pending.conn, {"id": pending.rid, "ok": False, "error": msg, "step": step, "errno": err})
            return
        self._spawn_succeeded(pending)

    def _spawn_succeeded(self, pending: "Spawning", popen: object = None) -> None:
        spec = pending.spec
        task = Task(spec.key, pending.pid, pending.start_time, popen=popen)
        self.tasks[spec.key] = task
        self.by_pid[pending.pid] = spec.key
        ahead = self.logs_ahead.pop(spec.key, {})  # opened by op open_logs
        later: list[tuple[int, LogTarget]] = []
        for fd, target in pending.log_ends:
            os.set_blocking(fd, False)
            task.logs.append(fd)
            log = ahead.pop(target, None)
            if log is None:
                if os.path.lexists(f"{target.dir}/{target.base}"):
                    later.append((fd, target))
                else:
                    log = self._open_log(spec.key, target)
            self.logs[fd] = (log, spec.key)
            if log is not None:
                self._log_used(fd, log)
            self.sel.register(fd, selectors.EVENT_READ, ("log", None))
        for log in ahead.values():  # opened for targets the spawn did not name
            log.close()
        # Replied only now: once the caller hears "running", the task's log files exist (tail -F, tasksctl logs).
        # A file that exists already (a restart's, or a spare alloc dir's empty one) is opened right after the
        # reply instead, off the start's path: the task's output waits in its pipe until this loop reads it.
        self._reply(pending.conn, {"id": pending.rid, "ok": True, "pid": task.pid, "start_time": task.start_time})
        for fd, target in later:
            log = self._open_log(spec.key, target)
            self.logs[fd] = (log, spec.key)
            if log is not None:
                self._log_used(fd, log)
        if pending.status is not None:  # it already ran to completion (e.g. /bin/true) before we got here
            self._record_exit(task, pending.status)

    @staticmethod
    def _open_log(key: str, target: LogTarget) -> RotatingLog | None:
        try:
            return RotatingLog(target.dir, target.base, target.max_files, target.max_file_size)
        except ValueError as e:  # a spec the daemon should never send; keep the pipe drained, not blocked
            _log(f"launcher: logs of {key}: {e}")
            return None

    def _reply(self, conn: Conn, obj: dict) -> None:
        if conn.sock.fileno() in self.conns and self.conns[conn.sock.fileno()] is conn:
            self._send(conn, obj)

    def _log_pipe(self, target: LogTarget | None, opened: list, parent_ends: list) -> int:
        if target is None:
            fd = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
            opened.append(fd)
            return fd
        r, w = os.pipe2(os.O_CLOEXEC)
        opened.append(w)
        parent_ends.append((r, target))
        return w

    def _fork(self, spec: LaunchSpec, fds: dict, enter: dict | None) -> int:
        if self.low is not None:  # the C child (see LowSlots)
            placed = self.low.place(fds, enter)
            if placed is not None:
                try:
                    return self._fork_once(spec, placed[0], placed[1], self.low.limit)
                finally:
                    self.low.reset()
        return self._fork_once(spec, fds, enter, 0)

    def _fork_once(self, spec: LaunchSpec, fds: dict, enter: dict | None, fd_limit: int) -> int:
        """Fork the child. A new (or entered) pid namespace applies to children only, so switch before the fork and
        switch back right after: the task is our direct child (we keep its exit status) and PID 1 of its namespace."""
        use_c = self.c_child
        switched = False
        if enter and "pid" in enter:
            ksys.setns(enter["pid"], ksys.CLONE_NEWPID)
            switched = True
        elif spec.namespaces.pid and not use_c:  # the C child gets CLONE_NEWPID from clone() itself
            ksys.unshare(ksys.CLONE_NEWPID)
            switched = True
        try:
            if use_c:
                return self._spawn_c(spec, fds, enter, fd_limit)
            pid = os.fork()
        finally:
            if switched and os.getpid() == _launcher_pid:
                ksys.setns(self.own_pidns, ksys.CLONE_NEWPID)
        if pid == 0:
            fds["enter"] = enter
            child.run(spec, fds)  # never returns
        return pid

    def _spawn_c(self, spec: LaunchSpec, fds: dict, enter: dict | None, fd_limit: int) -> int:
        born_in = self._cgroup_to_clone_into(spec) if self.clone_into else None
        if born_in is not None:
            try:
                pid = childplan.spawn(spec, fds, enter, fd_limit, born_in)
                self.joins["clone"] += 1
                return pid
            except OSError as e:
                # No child was made. Whatever the clone into the cgroup refused is tried once the old way, which
                # reports a cgroup's own problem at its step ("join cgroup") and anything else as before. A build,
                # kernel or seccomp policy that refuses clone3 itself turns the way off.
                if e.errno in (errno.ENOSYS, errno.E2BIG, errno.EPERM, errno.EINVAL):
                    self.clone_into = False
                    _log(f"launcher: clone3 CLONE_INTO_CGROUP refused ({e.strerror}); tasks join their cgroup by pid")
            finally:
                os.close(born_in[1])
        pid = childplan.spawn(spec, fds, enter, fd_limit)
        self.joins["pid"] += 1
        return pid

    def _cgroup_to_clone_into(self, spec: LaunchSpec) -> tuple[str, int] | None:
        """The task's cgroup.procs in the v2 hierarchy and an O_PATH descriptor of its directory, or None (no v2
        cgroup in the spec, a reused cgroup on a kernel that kills children cloned into those, or it cannot be
        opened: then the child's write reports what is wrong)."""
        for procs in spec.cgroup_procs:
            if procs.startswith(self.v2_prefix):
                d = os.path.dirname(procs)
                fresh = d in self.fresh_v2
                self.fresh_v2.discard(d)  # from now on it may be killed: only op_cgroup makes it fresh again
                if not fresh and not self.killed_clone_ok:
                    return None
                try:
                    return procs, os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError:
                    return None
        return None

    def _probe_clone_into(self, parent: str) -> None:
        """Ask the kernel once, in a scratch cgroup below `parent` (the tasks' parent), with a child that can only
        fail its execve (exit 127): is a child cloned into a new cgroup born alive, and into a cgroup that was
        once sent cgroup.kill? Run from op_cgroup, in the launcher's own namespaces, before any spawn uses it."""
        d = f"{parent}/.clone-probe-{os.getpid()}"
        try:
            os.mkdir(d)
        except OSError as e:
            _log(f"launcher: cannot probe clone3 into a cgroup ({e.strerror}); reused cgroups are joined by pid")
            self.killed_clone_ok = False
            return
        try:
            if not self._born_alive(d):
                self.clone_into = False
                _log("launcher: a child cloned into a new cgroup did not live; tasks join their cgroup by pid")
                return
            with open(f"{d}/cgroup.kill", "w") as f:
                f.write("1")
            self.killed_clone_ok = self._born_alive(d)
        except OSError as e:
            _log(f"launcher: probing clone3 into a cgroup failed ({e.strerror}); reused cgroups are joined by pid")
            self.killed_clone_ok = False
        finally:
            try:
                rmdir_retrying(Path(d), time.monotonic() + 1)
            except cgroups.CgroupError as e:
                _log(f"launcher: {e}")

    @staticmethod
    def _born_alive(d: str) -> bool:
        # The child's failure report stays unread in the pipe: its exit status is the answer.
        r, w = os.pipe2(os.O_CLOEXEC)
        fd = -1
        try:
            fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            pid = childplan.probe_spawn(w, fd)
        finally:
            for x in (r, w, fd):
                if x >= 0:
                    os.close(x)
        _, status = os.waitpid(pid, 0)
        return not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)

    # ---- exits and logs ----------------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.spawning:
                self.spawning[pid].status = status  # reported once its error pipe says how the spawn went
                continue
            key = self.by_pid.get(pid)
            if key is None:
                continue  # an orphaned grandchild we adopted as subreaper: reaped, nothing to report
            self._record_exit(self.tasks[key], status)

    def _record_exit(self, task: Task, status: int) -> None:
        if task.popen is not None:
            task.popen.returncode = status  # we reaped it; Popen must not try (or warn) later
        self.by_pid.pop(task.pid, None)
        self.tasks.pop(task.key, None)
        for fd in list(task.logs):
            self._pump(fd, final=False)
        rec = {"key": task.key, "pid": task.pid, "start_time": task.start_time, "finished_at": time.time(),
               **describe_status(status)}
        self.exits[task.key] = rec
        # The daemon hears of it first (a restart waits on this), then it goes to disk for a daemon that is down.
        # The file survives our own crash without an fsync (the page cache does not die with a process), and a
        # machine crash makes every record moot: after a reboot, recovery reports "the machine rebooted".
        self._broadcast({"event": "exit", **rec})
        try:
            _write_atomic(self.exits_dir / f"{_safe_key(task.key)}.json", json.dumps(rec))
        except OSError as e:
            # A full or read-only state dir: the record stays in memory until acked, which covers every case
            # but a launcher crash while the daemon is also down.
            _log(f"launcher: cannot persist exit of {task.key}: {e}")

    def _pump(self, fd: int, final: bool = False) -> None:
        entry = self.logs.get(fd)
        if entry is None:
            return
        log, key = entry
        # A bounded amount per wakeup: a task writing as fast as it can (cat /dev/zero) refills the pipe faster
        # than a read and a file write empty it, and reading until empty would never return to the loop: no
        # reaping, no requests, no other task's output. The selector is level-triggered, so what is left is read
        # after everything else had its turn. After the process exited (final) a writer still flooding past the
        # bound is cut off, as one still holding the pipe is.
        for _ in range(PUMP_READS_PER_WAKEUP):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                if final:
                    break
                return
            except OSError:
                data = b""
            if not data:
                break
            if log is not None:
                log.write(data)
                self._log_used(fd, log)
        else:
            if not final:
                return
        # EOF (every writer, the task and anything it forked, closed the pipe), or the final read is done.
        self.sel.unregister(fd)
        os.close(fd)
        if log is not None:
            log.close()
        del self.logs[fd]
        self.open_logs.pop(fd, None)
        task = self.tasks.get(key)
        if task and fd in task.logs:
            task.logs.remove(fd)

    def _log_used(self, fd: int, log: RotatingLog) -> None:
        """Keep at most MAX_OPEN_LOG_FILES log files open. Every descriptor we hold is copied into each child at
        spawn and closed there again before exec: with 1000 tasks (2000 pipes, 2000 files) that was ~0.5 ms of
        every start. A quiet task's file is closed, and reopened at its next output (~10 us)."""
        self.open_logs[fd] = log
        self.open_logs.move_to_end(fd)
        while len(self.open_logs) > MAX_OPEN_LOG_FILES:
            _, oldest = self.open_logs.popitem(last=False)
            oldest.release()


class LaunchError(Exception):
    def __init__(self, message: str, step: str, err: int):
        super().__init__(message)
        self.step, self.errno = step, err


def _open_ns_fds(pid: int) -> dict[str, int]:
    fds: dict[str, int] = {}
    try:
        for n in childplan.namespaces_to_enter(pid):
            fds[n] = os.open(f"/proc/{pid}/ns/{n}", os.O_RDONLY | os.O_CLOEXEC)
        # The root directory matters for chroot'ed tasks: keep a handle to it to chroot after setns(mnt).
        fds["root"] = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        for fd in fds.values():  # the target exited midway: what was opened must not leak
            os.close(fd)
        raise
    return fds


def _c_child_message(step: str, err: int, path: str | None) -> str:
    if path is not None:
        try:  # the C child wrote each byte >= 0x80 as \u00XX: back to the bytes, then as os.fsdecode reads them
            path = os.fsdecode(path.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    if step.startswith("mounts") and err in (errno.EXDEV, errno.ELOOP):
        # openat2 RESOLVE_BENEATH refused a path component: a symlink leading out of the task root.
        return f"mount target {path} escapes the task root (through a symlink)"
    return os.strerror(err) + (f": {path}" if path else "")


def _log(message: str) -> None:
    """stderr is a file in the state dir, which may be full or read-only: logging must never raise here."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def _same_credentials(spec: LaunchSpec) -> bool:
    """The task would run with exactly our ids and groups (raw_exec without `user`, the usual case). Then Popen
    is given none of them: asking for a uid or gid change makes it fork instead of vfork, which costs a copy of
    the launcher's page tables and fd table per spawn, ~1 ms more once the launcher holds a thousand tasks' log
    pipes (measured)."""
    if spec.uid is not None and not (os.getuid() == os.geteuid() == spec.uid):
        return False
    if spec.gid is not None and not (os.getgid() == os.getegid() == spec.gid):
        return False
    return spec.groups is None or set(spec.groups) == set(os.getgroups())


def _safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


_launcher_pid = os.getpid()


def _state_dir_arg(argv: list[str]) -> str | None:
    """--state-dir DIR or --state-dir=DIR, and nothing else (argparse would cost the launcher 0.4 MB)."""
    if len(argv) == 2 and argv[0] == "--state-dir" and argv[1]:
        return argv[1]
    if len(argv) == 1 and argv[0].startswith("--state-dir=") and len(argv[0]) > len("--state-dir="):
        return argv[0].split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    global _launcher_pid
    state_dir = _state_dir_arg(sys.argv[1:] if argv is None else argv)
    if state_dir is None:
        print("usage: python -m isolation.launcher --state-dir DIR  (tasksd's single-threaded task launcher, started"
              " by tasksd)", file=sys.stderr)
        return 2
    _launcher_pid = os.getpid()
    state = Path(state_dir)
    (state / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(state / "run" / "launcher.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("launcher: another launcher already serves this state dir", file=sys.stderr)
        return 3
    ksys.set_child_subreaper()
    # Not dumpable: the C child shares our memory until its execve, and a root task with the same capabilities
    # could otherwise ptrace it or write /proc/<child>/mem, i.e. write into the launcher. execve resets the flag,
    # so tasks are unaffected.
    ksys.prctl(ksys.PR_SET_DUMPABLE, 0, step="prctl(PR_SET_DUMPABLE)")
    # Tasks inherit our dispositions: whatever our parent ignored (a CI runner, a shell with `trap '' ...`, a
    # posix_spawn from glibc ignoring 32 and 33) goes back to default. SIGPIPE and SIGXFSZ stay ignored for us
    # (Python's choice); every spawn path resets those two in the child.
    ksys.reset_ignored_signals(keep=(signal.SIGPIPE, signal.SIGXFSZ))
    # The blocked mask survives fork and execve as well (a CI runner here started us with nearly every signal
    # blocked, so a task's SIGTERM would have waited forever). The vfork fast path hands the task our mask as is.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    launcher = Launcher(state)
    launcher.listen()
    # Everything imported so far lives as long as we do: move it out of the collector's sight, so neither our
    # collections nor a forked child's touch (and copy) those pages.
    gc.collect()
    gc.freeze()
    # Readiness on stdout, then close it: the daemon waits for this line instead of polling the socket.
    os.write(1, b"ready\n")
    devnull = os.open("/dev/null", os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    launcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
