"""tasksctl's side of the API: HTTP over the daemon's unix socket."""
from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Iterator

DEFAULT_SOCKET = "/run/tasksd/tasksd.sock"


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if self.timeout is not None:
            s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float | None = 60.0):
        self.socket_path = socket_path or os.environ.get("TASKSD_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout

    def _open(self, method: str, path: str, body: dict | None = None, timeout: float | None = -1.0):
        conn = _UnixConnection(self.socket_path, self.timeout if timeout == -1.0 else timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ClientError(f"tasksd is not running (no socket at {self.socket_path}); start it, or pass "
                              f"--socket / TASKSD_SOCKET") from None
        except PermissionError:
            raise ClientError(f"permission denied on {self.socket_path}: run as root (or a member of the "
                              f"configured socket_group)") from None
        if resp.status >= 400:
            raw = resp.read()
            try:
                msg = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace").strip() or resp.reason
            raise ClientError(msg, resp.status)
        return conn, resp

    def get(self, path: str) -> Any:
        conn, resp = self._open("GET", path)
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def post(self, path: str, body: dict | None = None) -> Any:
        conn, resp = self._open("POST", path, body or {})
        try:
            return json.loads(resp.read())
        finally:
            conn.close()

    def stream(self, path: str) -> Iterator[bytes]:
        conn, resp = self._open("GET", path, timeout=None)
        try:
            while True:
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()
