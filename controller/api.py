"""The local API: HTTP/JSON on a unix socket (0600 root by default). Nothing listens on TCP unless configured.

Handlers never touch controller state directly: they read and change it through `Controller.call`, which runs on
the loop thread, so the API cannot race the reconcile loop. Malformed requests get a 4xx with a JSON message.
"""
from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from controller.controller import Controller


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def resolve_task_id(ctl: Controller, ident: str) -> str:
    """Canonical `job/group/index/task`, or a unique shortening: the task name alone, `job/task`..."""
    ids = list(ctl.records)
    if ident in ctl.records:
        return ident
    parts = ident.split("/")
    matches = [t for t in ids if t.split("/")[-len(parts):] == parts or
               (len(parts) == 2 and t.split("/")[0] == parts[0] and t.split("/")[3] == parts[1])]
    if not matches:
        raise ApiError(404, f"no task {ident!r} (see `tasksctl status` for ids)")
    if len(matches) > 1:
        raise ApiError(409, f"{ident!r} is ambiguous: {', '.join(sorted(matches))}; use the full id")
    return matches[0]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, handler, ctl: Controller, api: "Api"):
        self.ctl, self.api = ctl, api
        super().__init__(path, handler)


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, ctl: Controller, api: "Api"):
        self.ctl, self.api = ctl, api
        super().__init__(addr, handler)


class Handler(BaseHTTPRequestHandler):
    server_version = "tasksd"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API logs through tasksd's logger
        pass

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        body = (json.dumps(obj, default=str) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message, "status": status})

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 20:
            raise ApiError(413, "request body too large")
        if not n:
            return {}
        try:
            data = json.loads(self.rfile.read(n))
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        try:
            routes = self.server.api.routes
            if parts == ["metrics"]:
                return self.server.api.metrics(self)
            if not parts or parts[0] != "v1":
                raise ApiError(404, f"unknown path {url.path!r} (the API lives under /v1)")
            for m, pattern, fn in routes:
                if m != method or len(pattern) != len(parts[1:]) and not pattern[-1:] == ["**"]:
                    continue
                args = []
                ok = True
                for i, p in enumerate(pattern):
                    if p == "**":
                        args.append("/".join(parts[1 + i:]))
                        break
                    if i + 1 >= len(parts):
                        ok = False
                        break
                    if p == "*":
                        args.append(parts[1 + i])
                    elif p != parts[1 + i]:
                        ok = False
                        break
                if ok:
                    return fn(self, query, *args)
            raise ApiError(404, f"unknown endpoint {method} {url.path}")
        except ApiError as e:
            self._error(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - a handler bug is a 500, never a dead daemon
            try:
                self._error(500, f"{type(e).__name__}: {e}")
            except OSError:
                pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")


class Api:
    def __init__(self, ctl: Controller, socket_path: str, socket_group: str | None = None,
                 tcp_address: str | None = None):
        self.ctl = ctl
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.tcp_address = tcp_address
        self._servers: list = []
        self._threads: list[threading.Thread] = []
        self.routes = [
            ("GET", ["tasks"], self.list_tasks),
            ("GET", ["tasks", "**"], self.get_task),
            ("GET", ["manifests"], self.list_manifests),
            ("GET", ["events"], self.events),
            ("GET", ["logs", "**"], self.logs),
            ("GET", ["stats"], self.stats),
            ("GET", ["health"], self.health),
            ("POST", ["signal", "**"], self.signal),
            ("POST", ["restart", "**"], self.restart),
            ("POST", ["drain"], self.drain),
        ]
        self.extra_metrics = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        path = Path(self.socket_path)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            srv = _Server(str(path), Handler, self.ctl, self)
        finally:
            os.umask(old)
        if self.socket_group:
            import grp

            os.chown(path, 0, grp.getgrnam(self.socket_group).gr_gid)
            os.chmod(path, 0o660)
        self._serve(srv)
        if self.tcp_address:
            host, _, port = self.tcp_address.rpartition(":")
            self._serve(_TCPServer((host or "127.0.0.1", int(port)), MetricsOnlyHandler, self.ctl, self))

    def _serve(self, srv) -> None:
        self._servers.append(srv)
        t = threading.Thread(target=srv.serve_forever, name="api", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    # ---- endpoints ---------------------------------------------------------------------------------------
    def list_tasks(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.call(self.ctl.status_snapshot))

    def get_task(self, h: Handler, q: dict, ident: str) -> None:
        def one():
            tid = resolve_task_id(self.ctl, ident)
            return self.ctl.records[tid].status()

        h._send_json(200, self.ctl.call(one))

    def list_manifests(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.call(self.ctl.manifest_snapshot))

    def health(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.call(self.ctl.health_snapshot))

    def stats(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.stats_snapshot())

    def events(self, h: Handler, q: dict) -> None:
        after = _int(q.get("after", "0"), "after")
        limit = _int(q.get("limit", "1000"), "limit")
        task = q.get("task")
        if task:
            task = self.ctl.call(lambda: resolve_task_id(self.ctl, task))
        if q.get("follow") not in ("1", "true"):
            h._send_json(200, self.ctl.store_reader().events(after, limit, task))
            return
        # Follow: newline-delimited JSON, one event per line, as they happen.
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        pending: list[dict] = []
        cv = threading.Condition()

        def listener(ev: dict) -> None:
            if task and ev.get("task_id") != task:
                return
            with cv:
                pending.append(ev)
                cv.notify()

        self.ctl.listeners.append(listener)
        try:
            for ev in self.ctl.store_reader().events(after, limit, task):
                h.wfile.write((json.dumps(ev) + "\n").encode())
            h.wfile.flush()
            while True:
                with cv:
                    cv.wait_for(lambda: pending, timeout=15)
                    batch, pending[:] = list(pending), []
                for ev in batch:
                    h.wfile.write((json.dumps(ev, default=str) + "\n").encode())
                h.wfile.write(b"" if batch else b"\n")  # a keepalive line notices a gone client
                h.wfile.flush()
        finally:
            self.ctl.listeners.remove(listener)
            h.close_connection = True

    def logs(self, h: Handler, q: dict, ident: str) -> None:
        stream = q.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise ApiError(400, "stream must be stdout or stderr")
        tail = _int(q.get("tail", "-1"), "tail")
        follow = q.get("follow") in ("1", "true")

        def locate():
            tid = resolve_task_id(self.ctl, ident)
            rec = self.ctl.records[tid]
            alloc_id = self.ctl._alloc_id(tid.rsplit("/", 1)[0])
            return tid, self.ctl.runtime.alloc_root / alloc_id / "alloc" / "logs", rec.task

        tid, logdir, task = self.ctl.call(locate)
        from controller.logread import follow_log, read_log

        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        base = f"{task}.{stream}"
        data = read_log(logdir, base, tail)
        h.wfile.write(data)
        h.wfile.flush()
        if follow:
            for chunk in follow_log(logdir, base, lambda: False):
                h.wfile.write(chunk)
                h.wfile.flush()
        h.close_connection = True

    def signal(self, h: Handler, q: dict, ident: str) -> None:
        body = h._body()
        sig = body.get("signal")
        if not isinstance(sig, str):
            raise ApiError(400, 'body must be {"signal": "SIGHUP"}')
        from manifests.signals import normalize_signal

        try:
            sig = normalize_signal(sig)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        h._send_json(200, self.ctl.call(lambda: self.ctl.api_signal(resolve_task_id(self.ctl, ident), sig)))

    def restart(self, h: Handler, q: dict, ident: str) -> None:
        h._send_json(200, self.ctl.call(lambda: self.ctl.api_restart(resolve_task_id(self.ctl, ident))))

    def drain(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.call(self.ctl.api_drain))

    def metrics(self, h: Handler) -> None:
        from controller.metrics import render

        body = render(self.ctl).encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


class MetricsOnlyHandler(Handler):
    """On TCP only /metrics answers: task control stays on the root-only unix socket."""

    def _dispatch(self, method: str) -> None:
        if urlparse(self.path).path == "/metrics" and method == "GET":
            return self.server.api.metrics(self)
        self._error(404, "only /metrics is served on TCP")


def _int(v: str, name: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
