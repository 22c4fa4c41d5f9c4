"""The HTTP/1.1 server side the local API needs, and no more: request line, headers, keep-alive, responses.

Why not `http.server.BaseHTTPRequestHandler`: it pulls in http.client, email and ssl (and with ssl, OpenSSL's
libcrypto), about 4 MB of private memory plus 2-3 MB of mapped libraries in a daemon whose API is a unix socket
serving JSON to `tasksctl`. Requests here are small: one line, a few headers, at most a 1 MB JSON body (checked by
the API). Anything else gets a 4xx and the connection is closed.
"""
from __future__ import annotations

import http  # the package alone: HTTPStatus, no client, no email
import json
import socketserver
import time

MAX_LINE = 65536  # request line and each header line
MAX_HEADERS = 100


class Headers(dict):
    """Header names folded to lower case; get() takes any case."""

    def get(self, name: str, default=None):  # type: ignore[override]
        return super().get(name.lower(), default)


class RequestHandler(socketserver.StreamRequestHandler):
    """Subclasses define do_GET, do_POST, ... and read self.command, self.path, self.headers, self.rfile."""

    server_version = "tasksd"
    protocol_version = "HTTP/1.1"
    timeout: float | None = 60  # per socket operation (StreamRequestHandler applies it)
    wbufsize = 0  # responses are written as they are made: streams (events, logs) must not sit in a buffer

    command = path = request_version = ""
    headers: Headers

    def handle(self) -> None:
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self.close_connection = True
        self._head: list[bytes] = []
        try:
            line = self.rfile.readline(MAX_LINE + 1)
        except (TimeoutError, ConnectionError):
            return
        if not line:
            return  # the client closed an idle keep-alive connection
        if len(line) > MAX_LINE:
            self.send_error(414, "request line too long")
            return
        words = line.decode("latin-1").rstrip("\r\n").split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400, f"bad request line {line[:100]!r}")
            return
        self.command, self.path, self.request_version = words
        headers = Headers()
        for _ in range(MAX_HEADERS + 1):
            try:
                raw = self.rfile.readline(MAX_LINE + 1)
            except (TimeoutError, ConnectionError):
                return
            if len(raw) > MAX_LINE:
                self.send_error(431, "header line too long")
                return
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                self.send_error(400, f"bad header line {raw[:100]!r}")
                return
            headers[name.lower()] = value.strip()
        else:
            self.send_error(431, f"more than {MAX_HEADERS} headers")
            return
        self.headers = headers
        conn = headers.get("connection", "").lower()
        self.close_connection = conn == "close" or (self.request_version == "HTTP/1.0" and conn != "keep-alive")
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501, f"method {self.command[:20]!r} not supported")
            return
        method()
        self.wfile.flush()

    # ---- responses ---------------------------------------------------------------------------------------
    def send_response(self, code: int) -> None:
        try:
            reason = http.HTTPStatus(code).phrase
        except ValueError:
            reason = ""
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        self._head = [f"{self.protocol_version} {code} {reason}\r\nServer: {self.server_version}\r\n"
                      f"Date: {date}\r\n".encode("latin-1")]

    def send_header(self, name: str, value: str) -> None:
        self._head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if name.lower() == "connection" and value.lower() == "close":
            self.close_connection = True

    def end_headers(self) -> None:
        if self.close_connection:
            self._head.append(b"Connection: close\r\n")
        self._head.append(b"\r\n")
        self.wfile.write(b"".join(self._head))
        self._head = []

    def send_error(self, code: int, message: str) -> None:
        """A protocol error: JSON like the API's own errors, and the connection is closed (whatever follows on
        it cannot be trusted to be the next request)."""
        self.close_connection = True
        body = (json.dumps({"error": message, "status": code}) + "\n").encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
