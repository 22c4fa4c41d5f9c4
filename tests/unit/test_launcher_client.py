"""LauncherClient's two ways to a reply, against a fake launcher (a socket server in a thread, no root needed).

The call connection (the caller reads its reply itself) is used when free; a second caller meanwhile, or a launcher
from before op "unsubscribe", goes through the reader thread. The real launcher is exercised by the kernel tests;
what only a fake can do here is be old, or not answer.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from isolation.launcher import socket_path
from isolation.launcher_client import CallPending, LauncherClient, LauncherError, Pending


class FakeLauncher:
    """Answers ping and echo; `unsubscribe` only when `knows_unsubscribe`; never answers `hang`. Sends an event
    to every connection that did not unsubscribe before each echo reply, as the real one broadcasts exits."""

    def __init__(self, state_dir: Path, knows_unsubscribe: bool = True):
        self.knows_unsubscribe = knows_unsubscribe
        path = socket_path(state_dir)
        path.parent.mkdir(parents=True)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen()
        self.conns: list[socket.socket] = []
        self.subscribed: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
                self.subscribed.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                op, rid = req["op"], req["id"]
                if op == "ping":
                    reply = {"id": rid, "ok": True, "pid": 4242}
                elif op == "unsubscribe" and self.knows_unsubscribe:
                    with self.lock:
                        self.subscribed.remove(c)
                    reply = {"id": rid, "ok": True}
                elif op == "echo":
                    with self.lock:
                        for s in list(self.subscribed):
                            try:
                                s.sendall(b'{"event":"exit","key":"k"}\n')
                            except OSError:  # a connection the client closed
                                self.subscribed.remove(s)
                    reply = {"id": rid, "ok": True, "value": req.get("value"), "conn": c.fileno()}
                elif op == "hang":
                    continue
                else:
                    reply = {"id": rid, "ok": False, "error": f"unknown op {op!r}"}
                c.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        if self.srv.fileno() == -1:
            return  # closed already
        self.srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.srv.close()
        with self.lock:
            for c in self.conns:
                c.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def fake(tmp):
    launchers: list[FakeLauncher] = []

    def make(**kw) -> tuple[FakeLauncher, LauncherClient, list]:
        fl = FakeLauncher(tmp / f"state{len(launchers)}", **kw)
        launchers.append(fl)
        events: list = []
        client = LauncherClient(tmp / f"state{len(launchers) - 1}", on_event=events.append)
        client.connect(start=False)
        clients.append(client)
        return fl, client, events

    clients: list[LauncherClient] = []
    yield make
    for c in clients:
        c.close()
    for fl in launchers:
        fl.close()


def test_a_free_caller_reads_its_reply_itself_and_events_stay_on_the_main_connection(fake):
    _, client, events = fake()
    p = client.submit("echo", value=1)
    assert isinstance(p, CallPending)
    assert p.result(5)["value"] == 1
    # The event the fake sent before its reply went to the main connection only (the call one unsubscribed).
    assert client.request("echo", value=2, timeout=5)["value"] == 2
    assert client._call_buf == b""
    deadline = time.monotonic() + 5
    while len([e for e in events if e.get("event") == "exit"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the reader thread files them; waited for with a deadline
    assert len([e for e in events if e.get("event") == "exit"]) == 2


def test_a_second_caller_meanwhile_goes_through_the_reader_thread(fake):
    _, client, _ = fake()
    first = client.submit("echo", value="a")
    second = client.submit("echo", value="b")
    assert isinstance(first, CallPending) and isinstance(second, Pending)
    assert second.result(5)["value"] == "b"
    assert first.result(5)["value"] == "a"
    assert first.result(5)["value"] == "a"  # collected once; asking again neither reads nor unlocks again
    again = client.submit("ping")
    assert isinstance(again, CallPending)  # the call connection is free again
    assert again.result(5)["pid"] == 4242


def test_a_launcher_without_unsubscribe_is_used_through_the_reader_thread(fake):
    _, client, events = fake(knows_unsubscribe=False)
    p = client.submit("ping")
    assert isinstance(p, Pending) and not isinstance(p, CallPending)
    assert p.result(5)["pid"] == 4242
    assert client.request("echo", value=3, timeout=5)["value"] == 3
    assert client._call is None and client._call_unsupported


def test_no_answer_in_time_closes_the_call_connection_and_the_next_call_opens_a_new_one(fake):
    fl, client, _ = fake()
    with pytest.raises(LauncherError, match="did not answer"):
        client.request("hang", timeout=0.2)
    assert client._call is None  # a late reply must not be read as the next request's
    reply = client.request("echo", value=4, timeout=5)
    assert reply["value"] == 4 and client._call is not None
    with pytest.raises(LauncherError, match="unknown op"):
        client.request("nonsense", timeout=5)
    assert client.request("echo", value=5, timeout=5)["value"] == 5  # a failed request leaves it usable


def test_reconnecting_to_a_new_launcher_forgets_the_old_call_connection_and_verdict(tmp):
    old = FakeLauncher(tmp / "state", knows_unsubscribe=False)
    client = LauncherClient(tmp / "state")
    try:
        client.connect(start=False)
        assert client.request("echo", value=1, timeout=5)["value"] == 1
        assert client._call_unsupported  # the old launcher did not know op unsubscribe
        client.close()
        old.close()
        socket_path(tmp / "state").unlink()
        (tmp / "state" / "run").rmdir()
        new = FakeLauncher(tmp / "state")  # a newer launcher now serves the state dir
        try:
            client.connect(start=False)
            p = client.submit("echo", value=2)
            assert isinstance(p, CallPending) and p.result(5)["value"] == 2
        finally:
            client.close()
            new.close()
    finally:
        client.close()
        old.close()


def test_the_launcher_takes_its_state_dir_and_nothing_else():
    import subprocess
    import sys

    from isolation.launcher import _state_dir_arg

    assert _state_dir_arg(["--state-dir", "/var/lib/tasksd"]) == "/var/lib/tasksd"
    assert _state_dir_arg(["--state-dir=/var/lib/tasksd"]) == "/var/lib/tasksd"
    for bad in ([], ["--state-dir"], ["--state-dir", ""], ["--state-dir="], ["--state-dir", "a", "b"], ["x"],
                ["--statedir", "/x"]):
        assert _state_dir_arg(bad) is None, bad
    # And the program says how to run it, without starting, and without typing or argparse in its memory.
    out = subprocess.run([sys.executable, "-c", "import sys, isolation.launcher as L; rc = L.main(['--bogus']); "
                          "print(rc, [m for m in ('typing', 'argparse') if m in sys.modules])"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "2 []" and "usage:" in out.stderr
