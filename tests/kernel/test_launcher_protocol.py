"""The launcher's side of the protocol, for all three launcher set-ups (conftest.child_impl): the C launcher
(isolation/launcher.c) and the Python one (isolation/launcher.py) must behave the same to the daemon.

What is checked here that the driver tests do not reach: bytes that are not UTF-8 in a command line get to the task
unchanged; malformed and hostile requests get an error and leave the launcher serving; task output is rotated by
the line rule of isolation.logs; exit records survive a launcher restart. (The upgrade from the Python launcher
to the C one: test_launcher_upgrade.py.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from isolation.launcher_proto import socket_path
from isolation.launchspec import LaunchSpec, LogTarget
from isolation.runtime import Runtime
from tests.helpers import wait_for
from tests.kernel.conftest import spawn_line, spawn_spec, teardown_runtime

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _every_launcher(child_impl):
    """Every test here runs with each launcher and child (see conftest.child_impl)."""


def _ack(runtime: Runtime, key: str) -> None:
    runtime._raw_exits.pop(key, None)
    runtime.client.request("ack", key=key)


def _exit_of(runtime: Runtime, key: str) -> dict:
    wait_for(lambda: key in runtime._raw_exits, timeout=30, what=f"the exit of {key}")
    return runtime._raw_exits[key]


def test_bytes_that_are_not_utf8_reach_the_task_unchanged(runtime, tmp):
    out = tmp / "argv"
    raw = b"\xff\xfe-caf\xc3\xa9-\x80"  # invalid UTF-8, then valid UTF-8 (é), then a stray continuation byte
    spec = LaunchSpec(key="bytes.t.1", path="/bin/sh", argv=("sh", "-c", 'printf %s "$1$V" > "$2"', "sh",
                                                             os.fsdecode(raw), str(out)),
                      env=(("V", os.fsdecode(b"\xfa")),), cwd="/")
    spawn_spec(runtime, spec)
    assert _exit_of(runtime, spec.key)["exit_code"] == 0
    assert out.read_bytes() == raw + b"\xfa"
    _ack(runtime, spec.key)


def _raw_requests(runtime: Runtime, lines: list[bytes]) -> list[dict]:
    """Send `lines` on a connection of our own and read one reply per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(socket_path(runtime.state_dir)))
        s.settimeout(30)
        s.sendall(b"".join(line + b"\n" for line in lines))
        buf = b""
        replies: list[dict] = []
        while len(replies) < len(lines):
            chunk = s.recv(65536)
            assert chunk, f"the launcher hung up after {len(replies)} replies"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "event" not in msg:
                    replies.append(msg)
    return replies


def test_malformed_and_hostile_requests_get_an_error_and_the_launcher_serves_on(runtime):
    lines = [
        b"not json",
        b"{\"id\": 2",  # truncated
        b"[" * 5000 + b"]" * 5000,  # deep nesting
        b"{\"id\": 4, \"op\": 42}",
        b"{\"id\": 5, \"op\": \"no-such-op\"}",
        b"{\"id\": 6, \"op\": \"signal\", \"key\": \"nobody\", \"signal\": 15}",
        b"{\"id\": 7, \"op\": \"ack\"}",
        b"{\"id\": 8, \"op\": \"spawn\", \"key\": \"k\", \"plan\": 1, \"spec\": 1}",
        b"{\"id\": 9, \"op\": \"ping\"} trailing",
        b"{\"id\": 10, \"op\": \"ping\"}",
    ]
    replies = _raw_requests(runtime, lines)
    assert [r["ok"] for r in replies[:9]] == [False] * 9, replies
    assert replies[9]["ok"] and replies[9]["pid"] == runtime.client.launcher_pid
    assert "not running" in replies[5]["error"]


def test_a_nul_byte_in_a_path_is_refused_not_cut_short(runtime, tmp):
    # "/bin/true\0ignored" cut at the NUL would run /bin/true; the launcher must refuse the request instead.
    spec = LaunchSpec(key="nul.t.1", path="/bin/true\x00/ignored", argv=("true",), env=(), cwd="/")
    with pytest.raises(Exception, match="NUL|embedded null|malformed"):
        spawn_spec(runtime, spec)
    assert all(t["key"] != spec.key for t in runtime.client.request("list")["tasks"])


LINE_LENGTHS = [10, 200, 3, 700, 90, 1500, 40, 999, 1, 400, 2600, 60, 300, 5, 800]


def _expected_output() -> bytes:
    return b"".join((b"%03d" % i) + b"x" * (n - 4) + b"\n" for i, n in enumerate(LINE_LENGTHS))


def test_output_is_rotated_by_the_line_rule(runtime, tmp):
    """max_file_size 1000 bytes, 20 files kept (so nothing is dropped): the files, oldest first, hold exactly what
    the task wrote; no file exceeds twice the limit; a line is split only when it is longer than the limit (here
    only the 1500 and 2600 byte ones can be); and a file that was rotated ends with a whole line unless its last
    line was too long to keep."""
    logs = tmp / "logs"
    logs.mkdir()
    data = tmp / "data"
    data.write_bytes(_expected_output())
    # One line per write, with pauses, so that both launchers see the same chunks as often as the pipe allows.
    script = 'while IFS= read -r l; do printf "%s\\n" "$l"; done < "$1"'
    spec = LaunchSpec(key="rot.t.1", path="/bin/sh", argv=("sh", "-c", script, "sh", str(data)), env=(), cwd="/",
                      stdout=LogTarget(str(logs), "t.stdout", 20, 1000))
    spawn_spec(runtime, spec)
    assert _exit_of(runtime, spec.key)["exit_code"] == 0
    wait_for(lambda: sum(len((logs / n).read_bytes()) for n in os.listdir(logs)) >= len(_expected_output()),
             timeout=10, what="all output on disk")
    names = sorted(os.listdir(logs), key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0)
    files = [(logs / n).read_bytes() for n in names]
    assert b"".join(files) == _expected_output()
    assert len(files) > 3 and all(len(f) <= 2000 for f in files)
    long_lines = {(b"%03d" % i) for i, n in enumerate(LINE_LENGTHS) if n > 1000}
    for f in files[:-1]:
        if not f.endswith(b"\n"):
            # cut inside a line: only a long one, and only once the file holds 2x the limit
            start = f.rsplit(b"\n", 1)[-1][:3]
            assert start in long_lines and len(f) == 2000, (start, len(f))
    _ack(runtime, spec.key)


def _restart_launcher(runtime: Runtime) -> None:
    pid = runtime.client.launcher_pid
    runtime.client.close()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), timeout=30, what="the launcher to exit")
    try:
        os.waitpid(pid, 0)  # started by this process (Runtime.open): reaped here, or it stays a zombie
    except ChildProcessError:
        pass
    runtime.client.connect(start=True)
    assert runtime.client.launcher_pid != pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_an_unacked_exit_survives_a_launcher_restart_and_ack_removes_it(runtime):
    spec = LaunchSpec(key="kept.t.1", path="/bin/sh", argv=("sh", "-c", "exit 7"), env=(), cwd="/")
    spawn_spec(runtime, spec)
    assert _exit_of(runtime, spec.key)["exit_code"] == 7
    exits_dir = Path(runtime.state_dir) / "run" / "exits"
    assert len(list(exits_dir.glob("*.json"))) == 1
    _restart_launcher(runtime)
    listed = {e["key"]: e for e in runtime.client.request("list")["exits"]}
    assert listed[spec.key]["exit_code"] == 7 and listed[spec.key]["signal"] is None
    runtime.client.request("ack", key=spec.key)
    assert not list(exits_dir.glob("*.json"))
    assert all(e["key"] != spec.key for e in runtime.client.request("list")["exits"])


def test_a_request_with_fewer_descriptors_than_it_names_leaves_none_queued(runtime):
    fds_dir = f"/proc/{runtime.client.launcher_pid}/fd"
    before = len(os.listdir(fds_dir))
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(socket_path(runtime.state_dir)))
            s.settimeout(30)
            socket.send_fds(s, [b'{"id": 1, "op": "exec", "nfds": 5}\n'], [devnull] * 3)
            reply = json.loads(s.recv(65536).split(b"\n")[0])
            assert not reply["ok"] and "expected 5 file descriptors, got 3" in reply["error"]
            # the three are not left for the connection's next request
            wait_for(lambda: len(os.listdir(fds_dir)) <= before + 1, timeout=10,
                     what=f"the launcher's fds back to {before} and the connection (now {len(os.listdir(fds_dir))})")
    finally:
        os.close(devnull)


def test_an_exit_record_written_on_several_lines_is_listed_on_one(runtime):
    """A record file a person pretty-printed (or an editor touched) must not break the list reply's framing."""
    exits_dir = Path(runtime.state_dir) / "run" / "exits"
    rec = {"key": "hand.t.1", "pid": 4242, "start_time": 1, "finished_at": 1.5, "exit_code": 3, "signal": None}
    (exits_dir / "hand.t.1.json").write_text(json.dumps(rec, indent=2) + "\n")
    _restart_launcher(runtime)
    listed = {e["key"]: e for e in runtime.client.request("list")["exits"]}
    assert listed["hand.t.1"]["exit_code"] == 3
    runtime.client.request("ack", key="hand.t.1")
    assert not (exits_dir / "hand.t.1.json").exists()


def test_a_log_file_at_the_file_size_limit_drops_output_and_the_launcher_lives(tmp, cgroup_parent):
    """RLIMIT_FSIZE (inherited from whatever started tasksd) stops a log file's growth: the write fails with EFBIG
    and the bytes are dropped, where SIGXFSZ at its default would kill the launcher and every task's logging."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    try:
        try:
            rt.open()  # the launcher starts here, with the limit
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        logs = tmp / "logs"
        logs.mkdir()
        spec = LaunchSpec(key="big.t.1", path="/bin/sh", argv=("sh", "-c", "head -c 300000 /dev/zero; echo done >&2"),
                          env=(), cwd="/", stdout=LogTarget(str(logs), "t.stdout", 2, 10 * 1024 * 1024),
                          stderr=LogTarget(str(logs), "t.stderr", 2, 1024))
        pid = rt.client.launcher_pid
        spawn_spec(rt, spec)
        assert _exit_of(rt, spec.key)["exit_code"] == 0
        assert rt.client.request("ping")["pid"] == pid
        wait_for(lambda: (logs / "t.stderr").exists() and (logs / "t.stderr").read_bytes() == b"done\n", timeout=10,
                 what="the task's stderr")
        assert (logs / "t.stdout").stat().st_size == 64 * 1024
        _ack(rt, spec.key)
    finally:
        teardown_runtime(rt)


@pytest.mark.parametrize("child_impl", ["c"], indirect=True)  # the Python launchers take LaunchSpecs, not plans
def test_the_c_launcher_refuses_plans_the_kernel_would_get_wrong(child_impl, runtime):
    """Checks shared with the extension (spawn_child.h): clone flags other than namespaces, and ids the kernel would
    truncate or read as "unchanged", are refused before anything is cloned, whatever plan the request carries."""
    from isolation import _spawn

    assert runtime.client.launcher == "c"

    spec = LaunchSpec(key="plan.t.1", path="/bin/true", argv=("true",), env=(), cwd="/")
    good = json.loads(spawn_line(runtime, spec, 1))
    vm = json.loads(json.dumps(good))
    vm["plan"]["clone_flags"] = 0x100  # CLONE_VM
    root = json.loads(json.dumps(good))
    root["id"] = 2
    root["plan"]["ops"].append([_spawn.OP_SETRESUID, 0, "credentials", -1, 0, 0, None, None, None, None])
    replies = _raw_requests(runtime, [json.dumps(vm).encode(), json.dumps(root).encode()])
    assert "only namespace flags" in replies[0]["error"] and "id out of range" in replies[1]["error"]
    assert all(t["key"] != spec.key for t in runtime.client.request("list")["tasks"])
