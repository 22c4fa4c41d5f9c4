"""controller.http1 against raw bytes on a socketpair: the protocol errors, keep-alive and connection close."""
from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from controller import http1


class Echo(http1.RequestHandler):
    timeout = 5

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path, "x": self.headers.get("X-Thing")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def exchange(raw: bytes) -> bytes:
    """Send `raw`, half-close, and return everything the handler wrote until it closed the connection."""
    a, b = socket.socketpair()

    def serve():
        try:
            Echo(b, None, None)
        finally:
            b.close()  # what socketserver's shutdown_request does

    t = threading.Thread(target=serve)
    t.start()
    try:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := a.recv(65536):
            out += chunk
        return out
    finally:
        t.join(10)
        assert not t.is_alive()
        a.close()


def statuses(out: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


def test_keep_alive_serves_requests_in_turn_and_headers_ignore_case():
    out = exchange(b"GET /a HTTP/1.1\r\nx-thing: 1\r\n\r\nGET /b HTTP/1.1\r\nX-THING: 2\r\n\r\n")
    assert statuses(out) == [200, 200]
    assert b'{"path": "/a", "x": "1"}' in out and b'{"path": "/b", "x": "2"}' in out


def test_connection_close_and_http10_end_after_one_response():
    out = exchange(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert statuses(out) == [200] and b"Connection: close" in out
    assert statuses(exchange(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")) == [200]


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /a HTTP/2.0\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\n folded: value\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /a HTTP/1.1\r\nX: " + b"v" * 70000 + b"\r\n\r\n", 431),
    (b"GET /a HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 501),
])
def test_protocol_errors_get_json_and_close_the_connection(raw, status):
    out = exchange(raw + b"GET /after HTTP/1.1\r\n\r\n")
    assert statuses(out) == [status]  # nothing after a broken request is read as the next one
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == status and body["error"]


def test_a_client_that_sends_nothing_gets_nothing():
    assert exchange(b"") == b""
