"""`tasksctl exec`'s wire protocol: JSON lines on a unix stream socket next to the API socket, with the caller's
stdio passed as SCM_RIGHTS on the request.

Why not an HTTP endpoint: the API's HTTP handler reads through a buffered file and never sees ancillary data, and
passing the real fds (a terminal, a pipe, or the slave side of a pty that tasksctl relays) means the process in the
task writes straight to them: no byte copying in the daemon, and `exec -t` gets a real controlling terminal.

Exchange, one connection per exec:
  client -> {"v": 1, "task": ID, "argv": [...], "tty": bool}\\n   with exactly 3 fds (stdin, stdout, stderr)
  server -> {"started": true, "task_id": ..., "key": ...}\\n    or {"error": msg, "status": 4xx|5xx}\\n and close
  server -> {"exit_code": n|null, "signal": n|null}\\n          when the process ends, then close
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any

VERSION = 1
MAX_REQUEST = 64 * 1024
NFDS = 3


class ExecProtocolError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def exec_socket_path(api_socket: str) -> str:
    """The exec socket lives beside the API socket, so one --socket / TASKSD_SOCKET names both."""
    head, ext = os.path.splitext(api_socket)
    return f"{head}-exec{ext}" if ext == ".sock" else f"{api_socket}.exec"


def send_msg(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read the request line and the fds that came with it. The caller owns (and must close) the fds, also when
    this raises."""
    buf = b""
    fds: list[int] = []
    try:
        while b"\n" not in buf:
            data, got, _flags, _addr = socket.recv_fds(sock, 65536, 16)
            fds += got
            if not data:
                raise ExecProtocolError("connection closed before the request was complete")
            buf += data
            if len(buf) > MAX_REQUEST:
                raise ExecProtocolError("exec request too large", 413)
        line = buf.split(b"\n", 1)[0]
        try:
            req = json.loads(line)
        except ValueError:
            raise ExecProtocolError("exec request is not valid JSON") from None
        validate_request(req, len(fds))
        return req, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def validate_request(req: Any, nfds: int) -> None:
    if not isinstance(req, dict):
        raise ExecProtocolError("exec request must be a JSON object")
    if req.get("v") != VERSION:
        raise ExecProtocolError(f"unsupported exec protocol version {req.get('v')!r} (this tasksd speaks {VERSION})")
    if not isinstance(req.get("task"), str) or not req["task"]:
        raise ExecProtocolError("exec request needs a task id")
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ExecProtocolError("argv must be a non-empty list of strings")
    if not isinstance(req.get("tty", False), bool):
        raise ExecProtocolError("tty must be true or false")
    if nfds != NFDS:
        raise ExecProtocolError(f"exec needs exactly {NFDS} file descriptors (stdin, stdout, stderr) passed with "
                                f"the request, got {nfds}")


class LineReader:
    """Reads the server's JSON lines one at a time from a socket that may also be polled by the caller."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def feed(self) -> bool:
        """One recv; False at EOF."""
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def pop(self) -> dict[str, Any] | None:
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def next(self) -> dict[str, Any] | None:
        """Block until a whole line is there; None at EOF."""
        while True:
            msg = self.pop()
            if msg is not None:
                return msg
            if not self.feed():
                return None


def exit_status(msg: dict[str, Any]) -> int:
    """A shell's convention: the code, or 128 + the signal that killed it."""
    if msg.get("signal"):
        return 128 + int(msg["signal"])
    code = msg.get("exit_code")
    return int(code) if code is not None else 1
