"""The daemon's side of the launcher protocol: start the launcher if none serves the state dir, send requests,
receive exit events on a reader thread."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from isolation.launcher_proto import encode as _encode
from isolation.launcher_proto import socket_path, via_short_path

Event = dict


class LauncherError(Exception):
    def __init__(self, message: str, step: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.step, self.errno = step, errno


class LauncherClient:
    def __init__(self, state_dir: str | os.PathLike, on_event: Callable[[Event], None] | None = None):
        self.state_dir = Path(state_dir)
        self.on_event = on_event or (lambda e: None)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, list] = {}
        self._cv = threading.Condition()
        self._reader: threading.Thread | None = None
        self.launcher_pid: int | None = None
        self.child: str | None = None  # "c" or "python": how the launcher sets tasks up (its ping says)
        # "c" (isolation/launcher.c: spawn and exec requests carry a compiled plan, see childplan.c_launcher_request)
        # or "python" (isolation/launcher.py: they carry the LaunchSpec); slots: the C launcher's descriptor slots.
        self.launcher: str | None = None
        self.slots: dict[str, int] = {}
        self.respawns = False
        # The call connection: requests whose caller reads the reply itself, without the reader thread. On this
        # VM a reply handed over by the reader thread took 110 us back to back and 350 us after 3 ms idle,
        # against 40 and 160 us read directly (a thread wake-up, the GIL, and a second wake-up). One caller at a
        # time; another one meanwhile goes through the reader thread as before.
        self._call: socket.socket | None = None
        self._call_buf = b""
        self._call_lock = threading.Lock()
        self._call_unsupported = False  # a launcher from before op "unsubscribe"

    # ---- connection --------------------------------------------------------------------------------------
    def connect(self, start: bool = True, timeout: float = 10.0) -> None:
        """Connect to the launcher of this state dir, starting one when none answers."""
        # A call connection (or the verdict that it is unsupported) belonged to the launcher we had before.
        self._drop_call()
        self._call_unsupported = False
        try:
            self._open()
        except OSError:
            if not start:
                raise
            self._start_launcher(timeout)
            self._open()
        pong = self.request("ping")
        self.launcher_pid = pong["pid"]
        self.child = pong.get("child", "python")  # a launcher from before the C child answers without it
        self.launcher = pong.get("launcher", "python")
        self.slots = dict(pong.get("fds") or {})
        # Keeps spawn requests and respawns armed runs (ops arm, disarm): the C launcher since it counts them. One
        # started by an older tasksd, still serving after an upgrade, does not.
        self.respawns = "respawns" in pong

    def _open(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        path = str(socket_path(self.state_dir))
        try:
            via_short_path(s.connect, path)
        except OSError:
            s.close()
            raise
        self._sock = s
        self._reader = threading.Thread(target=self._read_loop, args=(s,), name="launcher-reader", daemon=True)
        self._reader.start()

    def _start_launcher(self, timeout: float) -> None:
        run = self.state_dir / "run"
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(run / "launcher.log", "ab") as log:
            proc = subprocess.Popen(
                [*launcher_command(), "--state-dir", str(self.state_dir)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/",
                start_new_session=True, close_fds=True,
            )
        assert proc.stdout is not None
        # The launcher prints "ready" once its socket listens; a line (or EOF) arrives, so no polling is needed.
        ready = proc.stdout.readline()
        proc.stdout.close()
        if ready.strip() != b"ready":
            code = proc.wait(timeout)
            if code == 3:
                return  # another launcher won the race and serves this state dir: use it
            tail = (run / "launcher.log").read_bytes()[-2000:].decode(errors="replace")
            raise LauncherError(f"the launcher did not start (exit {code}): {tail}")
        # Not waited for: the launcher is meant to outlive this daemon. Popen's object is dropped without a
        # ResourceWarning because it has a returncode sentinel of None; mark it so GC does not complain.
        proc.returncode = 0

    def close(self) -> None:
        self._drop_call()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None:
            self._reader.join(5)

    # ---- requests ----------------------------------------------------------------------------------------
    def request(self, op: str, fds: list[int] | None = None, timeout: float = 60.0, body: bytes | None = None,
                **kw) -> dict:
        return self.submit(op, fds, body=body, **kw).result(timeout)

    @staticmethod
    def encode(op: str, **kw) -> bytes:
        """A request's line without its id, to send later as submit(op, body=...): a caller with time to spare
        before it sends (a start waiting for its cgroup) encodes a large request ahead."""
        return (_encode({"op": op, **kw}) + "\n").encode()

    def submit(self, op: str, fds: list[int] | None = None, body: bytes | None = None,
               **kw) -> "Pending | CallPending":
        """Send a request now and collect its reply later (result()), on the call connection when it is free,
        else through the reader thread. The reply must be collected: it holds the call connection until then.
        `body`: the request as encode() made it (then `kw` is not used)."""
        if self._sock is None:
            raise LauncherError("not connected to the launcher")
        if body is None:
            body = self.encode(op, **kw)
        if not self._call_unsupported and self._call_lock.acquire(blocking=False):
            try:
                sock = self._call_sock()
                if sock is not None:
                    rid, data = self._frame(body, None)
                    if fds:
                        socket.send_fds(sock, [data], fds)
                    else:
                        sock.sendall(data)
                    return CallPending(self, op, rid)  # releases the lock once it has the reply
            except OSError:
                self._close_call()
            self._call_lock.release()
        slot: list = []
        rid, data = self._frame(body, slot)
        with self._lock:
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.sendall(data)
        return Pending(self, op, rid, slot)

    def send_on_call(self, op: str, **kw) -> None:
        """Send a request on the call connection without collecting its reply (the next read there skips it).
        Only for the holder of an uncollected CallPending: it holds the connection, and the request is ordered
        behind its own."""
        s = self._call
        if s is None:
            return
        _, data = self._frame(self.encode(op, **kw), None)
        try:
            s.sendall(data)
        except OSError:
            pass  # the pending reply's read fails the same way and closes the connection

    def _call_sock(self) -> socket.socket | None:
        """The call connection, opened on first use (with _call_lock held)."""
        if self._call is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                via_short_path(s.connect, str(socket_path(self.state_dir)))
                self._call, self._call_buf = s, b""
                rid, data = self._frame(self.encode("unsubscribe"), None)
                s.sendall(data)
                reply = self._call_read(rid, 10.0)
            except (OSError, LauncherError):
                self._close_call()
                return None
            if not reply.get("ok"):
                self._call_unsupported = True
                self._close_call()
                return None
        return self._call

    def _call_read(self, rid: int, timeout: float) -> dict:
        """Read the call connection up to the reply to `rid` (with _call_lock held)."""
        s = self._call
        assert s is not None
        s.settimeout(timeout)
        while True:
            line, sep, rest = self._call_buf.partition(b"\n")
            if sep:
                self._call_buf = rest
                msg = json.loads(line)
                if msg.get("id") == rid and "event" not in msg:
                    return msg
                continue  # an event sent before the launcher saw our unsubscribe
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise LauncherError(f"launcher did not answer within {timeout}s") from None
            if not chunk:
                raise LauncherError("connection to the launcher was lost")
            self._call_buf += chunk

    def _drop_call(self) -> None:
        """Close the call connection, or, when a caller still reads it after 5 s, shut it down under that caller
        (who then closes it)."""
        if self._call_lock.acquire(timeout=5):
            try:
                self._close_call()
            finally:
                self._call_lock.release()
        elif (call := self._call) is not None:
            try:
                call.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_call(self) -> None:
        s, self._call, self._call_buf = self._call, None, b""
        if s is not None:
            s.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def notify(self, op: str, **kw) -> None:
        """Send a request without waiting for its reply (which the reader drops): for requests whose failure
        changes nothing for the caller, such as an ack."""
        if self._sock is None:
            raise LauncherError("not connected to the launcher")
        _, data = self._frame(self.encode(op, **kw), None)
        with self._lock:
            self._sock.sendall(data)

    def _frame(self, body: bytes, slot: list | None) -> tuple[int, bytes]:
        """A new request id and the request's line (`body` from encode() with the id put first); with `slot`,
        the reader files the reply there."""
        with self._cv:
            self._next_id += 1
            rid = self._next_id
            if slot is not None:
                self._pending[rid] = slot
        return rid, b'{"id":%d,' % rid + body[1:]

    def _read_loop(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "event" in msg:
                    try:
                        self.on_event(msg)
                    except Exception:  # noqa: BLE001 - a bad callback must not kill the reader
                        pass
                    continue
                with self._cv:
                    slot = self._pending.get(msg.get("id"))
                    if slot is not None:
                        slot.append(msg)
                        self._cv.notify_all()
        with self._cv:
            if self._sock is sock:
                self._sock = None
            self._cv.notify_all()

        try:
            self.on_event({"event": "disconnected"})
        except Exception:  # noqa: BLE001
            pass


def c_launcher_path() -> Path | None:
    """The C launcher (isolation/tasksd-launcher, built with isolation._spawn), or None: not built, or not wanted
    (TASKSD_LAUNCHER=python, or TASKSD_CHILD=python, whose Python child only the Python launcher runs)."""
    if os.environ.get("TASKSD_LAUNCHER", "c") == "python" or os.environ.get("TASKSD_CHILD", "c") == "python":
        return None
    path = Path(__file__).resolve().parent / "tasksd-launcher"
    if not os.access(path, os.X_OK):
        return None
    try:  # the daemon compiles the C launcher's plans with the extension's op codes
        from isolation import _spawn  # noqa: F401
    except ImportError:
        return None
    return path


def launcher_command() -> list[str]:
    path = c_launcher_path()
    return [str(path)] if path else [sys.executable, "-m", "isolation.launcher"]


class Pending:
    """A request sent to the launcher whose reply has not been collected yet."""

    def __init__(self, client: LauncherClient, op: str, rid: int, slot: list):
        self.client, self.op, self.rid, self.slot = client, op, rid, slot

    def result(self, timeout: float = 60.0) -> dict:
        """The reply; raises LauncherError for a failed request, a lost connection or no answer in time."""
        c, slot = self.client, self.slot
        with c._cv:
            if not c._cv.wait_for(lambda: slot or c._sock is None, timeout):
                c._pending.pop(self.rid, None)
                raise LauncherError(f"launcher did not answer {self.op} within {timeout}s")
            c._pending.pop(self.rid, None)
            if not slot:
                raise LauncherError("connection to the launcher was lost")
        return _checked(slot[0])


class CallPending:
    """A request sent on the call connection: result() reads its reply there, on the calling thread."""

    def __init__(self, client: LauncherClient, op: str, rid: int):
        self.client, self.op, self.rid = client, op, rid
        self._reply: dict | None = None
        self._error: LauncherError | None = None

    def result(self, timeout: float = 60.0) -> dict:
        c = self.client
        if self._reply is None and self._error is None:
            try:
                self._reply = c._call_read(self.rid, timeout)
            except (OSError, ValueError, LauncherError) as e:
                # Whatever is still to come on this connection would be misread by the next caller.
                c._close_call()
                self._error = e if isinstance(e, LauncherError) else LauncherError(
                    f"connection to the launcher failed: {e}")
            finally:
                c._call_lock.release()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return _checked(self._reply)


def _checked(reply: dict) -> dict:
    """The reply, or the launcher's refusal as a LauncherError."""
    if not reply.get("ok"):
        raise LauncherError(reply.get("error", "unknown error"), reply.get("step"), reply.get("errno"))
    return reply
