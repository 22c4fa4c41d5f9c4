"""tasksctl's side of the API: HTTP over the daemon's unix socket."""
from __future__ import annotations

import http.client
import json
import os
import socket
import stat
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


# ---- exec ----------------------------------------------------------------------------------------------------

def _connect_exec(api_socket: str) -> socket.socket:
    from controller.exec_proto import exec_socket_path

    path = exec_socket_path(api_socket)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise ClientError(f"tasksd is not running (no exec socket at {path}); start it, or pass --socket / "
                          f"TASKSD_SOCKET") from None
    except PermissionError:
        s.close()
        raise ClientError(f"permission denied on {path}: run as root (or a member of the configured "
                          f"socket_group)") from None
    return s


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _started(reader) -> None:
    msg = reader.next()
    if msg is None:
        raise ClientError("tasksd closed the exec connection without an answer; see its log")
    if "error" in msg:
        raise ClientError(msg["error"], msg.get("status"))


def run_exec(api_socket: str, task: str, argv: list[str], interactive: bool = False, tty: bool = False,
             stdin: int = 0, stdout: int = 1) -> int:
    """Run argv in the task with our stdio (or a pty we relay) and return its exit status (128+N for signal N)."""
    from controller.exec_proto import VERSION, LineReader, exit_status

    sock = _connect_exec(api_socket)
    reader = LineReader(sock)
    req = {"v": VERSION, "task": task, "argv": list(argv), "tty": tty}
    try:
        if not tty:
            done = _exec_with_our_stdio(sock, reader, req, interactive, stdin, stdout)
        else:
            done = _relay_pty(sock, reader, req, interactive, stdin, stdout)
        if done is None:
            raise ClientError("tasksd closed the exec connection before the command ended (it may still run)")
        return exit_status(done)
    finally:
        sock.close()


def _passable(fd: int) -> bool:
    """Whether our descriptor can go to the task as it is. A file, a pipe and /dev/null can. A terminal or a
    socket cannot: the task (or anything it leaves running) could read the operator's later keystrokes from a
    terminal (not its controlling one, so nothing stops it) or the other direction of a socket, and change the
    terminal's settings. Those are relayed through pipes instead."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev


def _exec_with_our_stdio(sock: socket.socket, reader, req: dict, interactive: bool, stdin: int, stdout: int):
    """Without -t: our stdio go to the command, through pipes we relay where passing them would not be safe."""
    import select

    from controller.exec_proto import send_msg

    fin = stdin if interactive else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    ours = [fin, stdout, 2]
    passed = list(ours)
    give_away: list[int] = [] if fin == stdin else [fin]  # closed once sent
    feed: tuple[int, int] | None = None  # (our stdin, the pipe we write it into)
    drains: dict[int, int] = {}  # pipe we read -> our descriptor it goes to
    for i, fd in enumerate(ours):
        if _passable(fd):
            continue
        r, w = os.pipe2(os.O_CLOEXEC)
        if i == 0:
            passed[0], feed = r, (fd, w)
            give_away.append(r)
        else:
            passed[i] = w
            drains[r] = fd
            give_away.append(w)
    try:
        send_msg(sock, req, passed)
    finally:
        for fd in give_away:
            os.close(fd)
    try:
        _started(reader)
        if feed is None and not drains:
            return reader.next()
        done = None
        while True:
            if done is None:
                done = reader.pop()  # the exit may have come in one read with the start
            rlist = list(drains) + ([sock] if done is None else []) + ([feed[0]] if feed and done is None else [])
            # After the exit message only buffered output remains: do not wait for more.
            ready = select.select(rlist, [], [], 0 if done is not None else None)[0] if rlist else []
            if done is not None and not ready:
                return done
            for fd in ready:
                if fd is sock:
                    more = reader.feed()
                    done = reader.pop()
                    if done is None and not more:
                        return None
                elif feed and fd == feed[0]:
                    data = os.read(fd, 65536)
                    try:
                        if data:
                            _write_all(feed[1], data)
                    except BrokenPipeError:
                        data = b""  # the command stopped reading
                    if not data:
                        os.close(feed[1])
                        feed = None
                else:
                    data = os.read(fd, 65536)
                    if data:
                        _write_all(drains[fd], data)
                    else:
                        os.close(fd)
                        del drains[fd]
    finally:
        for fd in drains:
            os.close(fd)
        if feed:
            os.close(feed[1])


def _relay_pty(sock: socket.socket, reader, req: dict, interactive: bool, stdin: int, stdout: int):
    import errno
    import fcntl
    import select
    import signal
    import termios
    import threading
    import tty as ttymod

    from controller.exec_proto import send_msg

    master, slave = os.openpty()
    os.set_inheritable(master, False)

    def copy_winsize(*_a) -> None:
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(stdin, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            pass  # stdin is not a terminal: the pty keeps its default size

    copy_winsize()
    try:
        try:
            send_msg(sock, req, [slave, slave, slave])
        finally:
            os.close(slave)  # from now on only the process in the task holds the slave: its exit gives us EIO
        _started(reader)
        saved = None
        if interactive and os.isatty(stdin):
            saved = termios.tcgetattr(stdin)
            # Keys (Ctrl-C too) go to the remote terminal, which does its own line editing. TCSANOW, not the
            # default TCSAFLUSH: what the operator typed ahead must reach the command, not be discarded.
            ttymod.setraw(stdin, termios.TCSANOW)
        old_winch = None
        if threading.current_thread() is threading.main_thread():
            old_winch = signal.signal(signal.SIGWINCH, copy_winsize)
        try:
            done = None
            master_open, stdin_open = True, interactive
            while done is None or master_open:
                rlist = [sock] if done is None else []
                rlist += [master] if master_open else []
                rlist += [stdin] if stdin_open and done is None else []
                # After the exit message only buffered output remains: do not wait for more.
                ready = select.select(rlist, [], [], 0 if done is not None else None)[0]
                if done is not None and not ready:
                    break
                if master in ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError as e:
                        if e.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        _write_all(stdout, data)
                    else:
                        master_open = False
                if stdin in ready:
                    data = os.read(stdin, 65536)
                    if data:
                        _write_all(master, data)
                    else:
                        stdin_open = False
                        _write_all(master, b"\x04")  # piped stdin ended: EOF for a canonical-mode reader
                if sock in ready:
                    more = reader.feed()
                    done = reader.pop()
                    if done is None and not more:
                        return None
            return done
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
    finally:
        os.close(master)
