"""The local API: HTTP/JSON on a unix socket (0600 root by default). Nothing listens on TCP unless configured.

Handlers never touch controller state directly: they read and change it through `Controller.call`, which runs on
the loop thread, so the API cannot race the reconcile loop. Malformed requests get a 4xx with a JSON message.
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from controller import exec_proto, http1
from controller.controller import Controller
from controller.taskids import match_task_ids
from reconcilers.plan import alloc_of

log = logging.getLogger("tasksd.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def resolve_task_id(ctl: Controller, ident: str) -> str:
    """Canonical `job/group/index/task`, or a unique shortening: the task name alone, `job/task`, trailing parts
    (`group/index/task`), or the job name alone when the job runs a single task instance."""
    matches = match_task_ids(ctl.records, ident)
    if not matches:
        raise ApiError(404, f"no task {ident!r} (see `tasksctl status` for ids)")
    if len(matches) > 1:
        raise ApiError(409, f"{ident!r} is ambiguous: {', '.join(sorted(matches))}; use the full id")
    return matches[0]


class _ServerBase:
    daemon_threads = True
    allow_reuse_address = True
    # A thread per connection: without a cap, idle connections (anyone's, on the TCP metrics port) would use up
    # the daemon's threads and file descriptors, and with them its ability to start tasks. Past the cap a new
    # connection is closed at once.
    max_connections = 128
    request_queue_size = 64  # listen backlog: connections past the cap are accepted (and closed) promptly

    def __init__(self, address, handler, ctl: Controller, api: "Api"):
        self.ctl, self.api = ctl, api
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-request is routine: one debug line, not socketserver's traceback on stderr."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("API client went away: %s", exc)
        else:
            log.error("API request failed", exc_info=exc)


class _Server(_ServerBase, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    pass


class _TCPServer(_ServerBase, socketserver.ThreadingMixIn, socketserver.TCPServer):
    max_connections = 16  # scrapers: a handful at most


class Handler(http1.RequestHandler):
    # Per socket operation: an idle keep-alive connection is closed after this, and so is a stream whose client
    # stopped reading (a follower that waits for events writes nothing, so it is not cut off while idle).
    timeout = 60

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        self._send_body(status, (json.dumps(obj, default=str) + "\n").encode())

    def _send_body(self, status: int, body: bytes | bytearray) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        # The request body may be unread (refused before reading): never parse it as the next request.
        self.close_connection = True
        self._send_json(status, {"error": message, "status": status})

    def _read_body(self) -> bytes:
        """Every request's body is read before routing, also by handlers that ignore it (POST /v1/drain with
        `{}`): an unread body would be parsed as the next request on this keep-alive connection."""
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length must be an integer") from None
        if n < 0:
            raise ApiError(400, "Content-Length must not be negative")
        if n > 1 << 20:
            raise ApiError(413, "request body too large")
        return self.rfile.read(n) if n else b""

    def _body(self) -> dict:
        if not self._raw_body:
            return {}
        try:
            data = json.loads(self._raw_body)
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        self._raw_body = b""
        try:
            self._raw_body = self._read_body()
        except ApiError as e:
            self._error(e.status, str(e))
            return
        except OSError:
            self.close_connection = True
            return
        self._route(method)

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Task ids may hold spaces and other characters the CLI percent-encodes.
        parts = [unquote(p) for p in url.path.split("/") if p]
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
        except LookupError as e:  # the controller refuses an action on a task in the wrong state
            self._error(409, str(e.args[0]) if e.args else str(e))
        except TimeoutError:
            self._error(503, "the reconcile loop did not answer in time; see tasksd's log")
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

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def client_gone(self) -> bool:
        """For streams: a client that hung up shows as readable with nothing to read (or an error)."""
        try:
            ready = select.select([self.connection], [], [], 0)[0]
            if not ready:
                return False
            # A follower sends nothing after its request: bytes here are discarded, else a client that sent some
            # and hung up would look alive (a peek sees its bytes, never the EOF behind them) forever.
            return self.connection.recv(4096, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class Api:
    def __init__(self, ctl: Controller, socket_path: str, socket_group: str | None = None,
                 tcp_address: str | None = None):
        self.ctl = ctl
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.tcp_address = tcp_address
        self._servers: list = []
        self.stopping = False
        self._threads: list[threading.Thread] = []
        self.routes = [
            ("GET", ["tasks"], self.list_tasks),
            ("GET", ["tasks", "**"], self.get_task),
            ("GET", ["manifests"], self.list_manifests),
            ("GET", ["events"], self.events),
            ("GET", ["logs", "**"], self.logs),
            ("GET", ["stats"], self.stats),
            ("GET", ["specs"], self.specs),
            ("GET", ["health"], self.health),
            ("POST", ["signal", "**"], self.signal),
            ("POST", ["restart", "**"], self.restart),
            ("POST", ["drain"], self.drain),
        ]
        self.extra_metrics = None
        self.exec_socket_path = exec_proto.exec_socket_path(socket_path)
        from controller.metrics import instrument

        instrument(ctl)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        Path(self.socket_path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._serve(self._unix_server(self.socket_path, Handler))
        self._serve(self._unix_server(self.exec_socket_path, ExecHandler))
        if self.tcp_address:
            host, _, port = self.tcp_address.rpartition(":")
            self._serve(_TCPServer((host or "127.0.0.1", int(port)), MetricsOnlyHandler, self.ctl, self))

    def _serve(self, srv) -> None:
        self._servers.append(srv)
        # Without a poll interval: an idle API never wakes (it did twice a second per socket); stop() wakes it.
        t = threading.Thread(target=srv.serve_forever, args=(None,), name="api", daemon=True)
        t.start()
        self._threads.append(t)

    def _unix_server(self, socket_path: str, handler) -> "_Server":
        """A socket that is never, not even for a moment, accessible to anyone but root (umask while binding);
        with socket_group, 0660 for that group."""
        path = Path(socket_path)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            srv = _Server(str(path), handler, self.ctl, self)
        finally:
            os.umask(old)
        if self.socket_group:
            import grp

            os.chown(path, 0, grp.getgrnam(self.socket_group).gr_gid)
            os.chmod(path, 0o660)
        return srv

    def stop(self) -> None:
        self.stopping = True
        for srv in self._servers:
            # shutdown() waits for serve_forever to see its request, which happens only when the listening socket
            # has something to accept: connect until it has returned.
            done = threading.Thread(target=srv.shutdown, name="api-stop", daemon=True)
            done.start()
            while done.is_alive():
                _poke(srv)
                done.join(0.05)
            srv.server_close()
        for p in (self.socket_path, self.exec_socket_path):
            try:
                os.unlink(p)
            except OSError:
                pass

    # ---- endpoints ---------------------------------------------------------------------------------------
    def list_tasks(self, h: Handler, q: dict) -> None:
        h._send_body(200, self.ctl.call(self.ctl.status_body))

    def get_task(self, h: Handler, q: dict, ident: str) -> None:
        def one():
            tid = resolve_task_id(self.ctl, ident)
            return self.ctl.records[tid].status()

        h._send_json(200, self.ctl.call(one))

    def list_manifests(self, h: Handler, q: dict) -> None:
        h._send_body(200, self.ctl.call(self.ctl.manifest_body))

    def health(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.call(self.ctl.health_snapshot))

    def stats(self, h: Handler, q: dict) -> None:
        h._send_json(200, self.ctl.stats_snapshot())

    def specs(self, h: Handler, q: dict) -> None:
        h._send_body(200, self.ctl.call(self.ctl.spec_body))

    def events(self, h: Handler, q: dict) -> None:
        # With `after`, a cursor: every event after that id, oldest first (a reader resuming where it stopped
        # must not lose the ones in between). Without, a tail: the newest `limit`.
        resume = "after" in q
        after = _int(q.get("after", "0"), "after")
        limit = _int(q.get("limit", "1000"), "limit")
        if limit < 1:
            raise ApiError(400, "limit must be at least 1")
        task = q.get("task")
        if task:
            task = self.ctl.call(lambda: resolve_task_id(self.ctl, task))
        if q.get("follow") not in ("1", "true"):
            h._send_json(200, self._read_events(after, limit, task, oldest_first=resume))
            return
        # Follow: newline-delimited JSON, one event per line, as they happen.
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        pending: list[dict] = []
        # The thread sleeps until an event or its client's socket wakes it, never on a timer: an open
        # `tasksctl events -f` costs nothing while nothing happens (it woke once a second). The listener runs on
        # the loop thread and may still be called once after its removal (the loop iterates a copy), so it writes
        # to the eventfd only under `gate`, before `ended`: never to a closed fd whose number was reused.
        wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        gate = threading.Lock()
        ended = False

        def listener(ev: dict) -> None:
            if task and ev.get("task_id") != task:
                return
            with gate:
                if ended:
                    return
                pending.append(ev)
                os.eventfd_write(wake, 1)

        # Listen before reading the backlog so nothing falls between the two; ids drop the overlap. On the loop
        # thread, with a commit: an event emitted earlier in the current pass is not in the database yet (the pass
        # commits at its end) and would reach neither the backlog nor the listener.
        # A call that times out (a slow loop) still runs later: it must not then add a listener nobody removes.
        def listen() -> None:
            with gate:
                if ended:
                    return
                self.ctl.listeners.append(listener)
            self.ctl.flush_store()

        last = after
        try:
            self.ctl.call(listen)
            # Resuming: the whole backlog after the cursor, however many pages (a start with 1000 manifests writes
            # thousands of events before a follower connects). Otherwise the newest `limit`.
            batch = self._read_events(after, limit, task, oldest_first=resume, all_pages=resume)
            while True:
                for ev in batch:
                    if ev["id"] and ev["id"] <= last:
                        continue
                    last = ev["id"] or last
                    h.wfile.write((json.dumps(ev, default=str) + "\n").encode())
                h.wfile.flush()
                ready = select.select([h.connection, wake], [], [])[0]
                if h.connection in ready and h.client_gone():
                    break
                if wake in ready:
                    try:
                        os.eventfd_read(wake)
                    except BlockingIOError:
                        pass
                with gate:
                    batch, pending[:] = list(pending), []
        finally:
            with gate:
                ended = True
                os.close(wake)
                if listener in self.ctl.listeners:
                    self.ctl.listeners.remove(listener)
            h.close_connection = True

    def _read_events(self, after: int, limit: int, task: str | None, oldest_first: bool = False,
                     all_pages: bool = False) -> list[dict]:
        """One page of events, or with all_pages (oldest first) every page after `after`, on one reader."""
        reader = self.ctl.store_reader()
        try:
            out = page = reader.events(after, limit, task, oldest_first)
            while all_pages and len(page) == limit:
                page = reader.events(page[-1]["id"], limit, task, oldest_first=True)
                out = out + page
            return out
        finally:
            reader.close()

    def logs(self, h: Handler, q: dict, ident: str) -> None:
        stream = q.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise ApiError(400, "stream must be stdout or stderr")
        tail = _int(q.get("tail", "-1"), "tail")
        follow = q.get("follow") in ("1", "true")

        def locate():
            tid = resolve_task_id(self.ctl, ident)
            rec = self.ctl.records[tid]
            alloc_id = self.ctl._alloc_id(alloc_of(tid))
            return tid, self.ctl.runtime.alloc_root / alloc_id / "alloc" / "logs", rec.task

        tid, logdir, task = self.ctl.call(locate)
        from controller.logread import follow_log, open_active, read_log

        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        base = f"{task}.{stream}"
        start = open_active(logdir, base) if follow else None
        try:
            for chunk in read_log(logdir, base, tail, active_end=start.tell() if start is not None else None):
                h.wfile.write(chunk)
            h.wfile.flush()
        except BaseException:
            if start is not None:
                start.close()
            raise
        if follow:
            for chunk in follow_log(logdir, base, h.client_gone, start, client_fd=h.connection.fileno()):
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

    timeout = 10

    def _route(self, method: str) -> None:
        if urlparse(self.path).path == "/metrics" and method == "GET":
            return self.server.api.metrics(self)
        self._error(404, "only /metrics is served on TCP")


def _poke(srv) -> None:
    """Wake a server blocked in select(): a connection it will close (or serve an EOF) at once."""
    try:
        with socket.socket(srv.address_family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(srv.server_address)
    except OSError:
        pass


def _int(v: str, name: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None


class ExecHandler(socketserver.BaseRequestHandler):
    """One `tasksctl exec`: start argv in the task with the caller's fds, then report its exit status."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        ctl: Controller = self.server.ctl
        try:
            req, fds = exec_proto.recv_request(sock)
        except exec_proto.ExecProtocolError as e:
            self._reply_error(e.status, str(e))
            return
        except OSError:
            return
        try:
            try:
                tid, handle, driver = ctl.call(lambda: self._locate(ctl, req["task"]))
                key = driver.exec(handle, list(req["argv"]), fds, bool(req.get("tty")))
            finally:
                for fd in fds:  # the launcher holds its own copies now; ours would keep a pty open
                    os.close(fd)
        except ApiError as e:
            self._reply_error(e.status, str(e))
            return
        except Exception as e:  # noqa: BLE001 - StartError, LauncherError: the message is for the operator
            self._reply_error(422, f"cannot exec in the task: {e}")
            return
        ctl.call(lambda: ctl.event("exec", f"exec {' '.join(req['argv'])[:200]}", tid, tty=bool(req.get("tty"))))
        try:
            exec_proto.send_msg(sock, {"started": True, "task_id": tid, "key": key})
        except OSError:
            pass  # the caller left; the process still runs with its fds and is reaped by the launcher
        result = None
        while result is None and not self.server.api.stopping:
            result = ctl.runtime.wait_exec(key, 1.0)
        if result is None:
            return
        try:
            exec_proto.send_msg(sock, {"exit_code": result.exit_code, "signal": result.signal})
        except OSError:
            pass

    @staticmethod
    def _locate(ctl: Controller, ident: str):
        from reconcilers.states import TaskState

        tid = resolve_task_id(ctl, ident)
        rec = ctl.records[tid]
        if rec.handle is None or rec.state != TaskState.RUNNING:
            raise ApiError(409, f"task {tid} is not running (state {rec.state.value}); exec needs a running task")
        return tid, ctl.full_handle(rec), ctl.drivers[rec.driver]

    def _reply_error(self, status: int, message: str) -> None:
        try:
            exec_proto.send_msg(self.request, {"error": message, "status": status})
        except OSError:
            pass
