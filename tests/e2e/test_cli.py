"""Every tasksctl command end to end: a real tasksd on temp dirs, tasksctl run as its own process."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, raw_job
from tests.helpers import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

TID = "web/g/0/t"


def tasksctl(daemon, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TASKSD_SOCKET": daemon.socket}
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          input=input, env=env, cwd=str(REPO), timeout=timeout)


def popen(daemon, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TASKSD_SOCKET": daemon.socket}
    return subprocess.Popen([sys.executable, "-m", "controller.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(REPO))


def read_until(stream, needle: bytes, timeout: float = 30) -> bytes:
    """Read a child's pipe until `needle` shows up (select with a deadline, never a fixed sleep)."""
    buf = b""
    fd = stream.fileno()

    def got() -> bool:
        nonlocal buf
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {buf!r}")
            buf += chunk
        return needle in buf

    wait_for(got, timeout=timeout, what=f"{needle!r} in output (so far {buf!r})")
    return buf


def running_pid(daemon, tid: str = TID) -> int:
    return daemon.wait_state(tid, "running")["pid"]


def test_status_signal_and_shortened_ids(daemon):
    daemon.start()
    script = 'trap "echo got-usr1" USR1; echo ready; while true; do sleep 0.2; done'
    daemon.write("web.hcl", raw_job("web", "/bin/sh", ["-c", script]))
    running_pid(daemon)
    r = tasksctl(daemon, "status")
    assert r.returncode == 0 and TID in r.stdout and "running" in r.stdout
    r = tasksctl(daemon, "status", "--json")
    assert json.loads(r.stdout)["tasks"][0]["id"] == TID
    r = tasksctl(daemon, "signal", "t", "USR1")  # the task name alone is unambiguous here
    assert r.returncode == 0, r.stderr
    assert f"sent SIGUSR1 to {TID}" in r.stdout
    wait_for(lambda: "got-usr1" in tasksctl(daemon, "logs", "web/t").stdout, what="trap output in logs")
    r = tasksctl(daemon, "signal", "nope", "HUP")
    assert r.returncode == 1 and "no task 'nope'" in r.stderr and "tasksctl status" in r.stderr
    r = tasksctl(daemon, "signal", "t", "SIGBOGUS")
    assert r.returncode == 1 and "SIGBOGUS" in r.stderr


def test_ambiguous_id_is_refused_with_the_candidates(daemon):
    daemon.start()
    daemon.write("a.hcl", raw_job("a"))
    daemon.write("b.hcl", raw_job("b"))
    running_pid(daemon, "a/g/0/t")
    running_pid(daemon, "b/g/0/t")
    r = tasksctl(daemon, "signal", "t", "HUP")
    assert r.returncode == 1
    assert "ambiguous" in r.stderr and "a/g/0/t" in r.stderr and "b/g/0/t" in r.stderr


def test_logs_tail_stderr_and_follow(daemon):
    daemon.start()
    fifo = daemon.root / "feed"
    os.mkfifo(fifo)
    script = f'echo one; echo two; echo err >&2; exec 3<>{fifo}; while read l <&3; do echo "$l"; done'
    daemon.write("web.hcl", raw_job("web", "/bin/sh", ["-c", script]))
    running_pid(daemon)
    wait_for(lambda: "two" in tasksctl(daemon, "logs", TID).stdout, what="first lines logged")
    assert tasksctl(daemon, "logs", "-n", "1", TID).stdout == "two\n"
    assert tasksctl(daemon, "logs", "--stderr", TID).stdout == "err\n"
    follower = popen(daemon, "logs", "-f", "-n", "1", TID)
    try:
        read_until(follower.stdout, b"two\n")
        with open(fifo, "w") as f:  # the task reads this and prints it: new output while we follow
            f.write("three\n")
        out = read_until(follower.stdout, b"three\n")
        assert b"one" not in out  # -n 1 started at the last line
    finally:
        follower.kill()
        follower.wait()


def test_restart_waits_for_the_new_process(daemon):
    daemon.start()
    daemon.write("web.hcl", raw_job("web"))
    pid = running_pid(daemon)
    r = tasksctl(daemon, "restart", "web")
    assert r.returncode == 0, r.stderr
    new = daemon.task(TID)["pid"]
    assert new != pid and f"running again (pid {new})" in r.stdout
    assert f"restarting {TID} (pid {pid})" in r.stdout
    assert daemon.task(TID)["restarts"] == 0  # an operator's restart is not the policy's


def test_events_list_and_follow(daemon):
    daemon.start()
    follower = popen(daemon, "events", "-f", "--json")
    try:
        daemon.write("web.hcl", raw_job("web", "/bin/sh", ["-c", "exit 3"],
                                        task_extra='restart {\n attempts = 1\n delay = "1s"\n mode = "fail"\n}'))
        daemon.write("bad.hcl", 'job "bad" {')
        out = read_until(follower.stdout, b'"failed"')
        types = [json.loads(line)["type"] for line in out.decode().splitlines() if line.strip()]
        for t in ("manifest_applied", "manifest_rejected", "started", "exited", "restarting", "failed"):
            assert t in types, (t, types)
    finally:
        follower.kill()
        follower.wait()
    r = tasksctl(daemon, "events", "--task", "web")
    assert r.returncode == 0
    # 1 s plus up to 25% jitter, printed with 3 significant digits: "1s" when the jitter is under 0.5%.
    assert "exited with code 3" in r.stdout and re.search(r"restarting in 1(\.\d+)?s", r.stdout), r.stdout
    evs = json.loads(tasksctl(daemon, "events", "--json").stdout)
    assert any(e["type"] == "manifest_rejected" and e["manifest"].endswith("bad.hcl") for e in evs)


def test_events_record_kill_and_gc(daemon):
    daemon.start()
    path = daemon.write("web.hcl", raw_job("web"))
    running_pid(daemon)
    path.unlink()
    wait_for(lambda: any(e["type"] == "gc" for e in daemon.client.get("/v1/events")), what="gc event")
    types = [e["type"] for e in daemon.client.get("/v1/events")]
    assert "killing" in types and "killed" in types and "manifest_removed" in types


def test_stats_reports_cgroup_numbers(daemon):
    daemon.start()
    daemon.write("busy.hcl", raw_job("busy", "/bin/sh", ["-c", "while :; do :; done"]))
    daemon.write("web.hcl", raw_job("web"))
    running_pid(daemon, "busy/g/0/t")
    running_pid(daemon)
    r = tasksctl(daemon, "stats", "--json", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    rows = {s["id"]: s for s in json.loads(r.stdout)}
    busy, idle = rows["busy/g/0/t"], rows[TID]
    assert busy["cpu_percent"] > 20  # a spinning shell, whatever the machine's speed
    assert idle["cpu_percent"] < busy["cpu_percent"]
    assert busy["memory_current"] > 0 and busy["pids"] >= 1
    text = tasksctl(daemon, "stats", "busy").stdout
    assert "busy/g/0/t" in text and TID not in text and "CPU%" in text


def test_plan_create_update_stop_unchanged(daemon, tmp):
    daemon.start()
    daemon.write("web.hcl", raw_job("web"))
    daemon.write("same.hcl", raw_job("same"))
    daemon.write("old.hcl", raw_job("old"))
    for tid in (TID, "same/g/0/t", "old/g/0/t"):
        running_pid(daemon, tid)
    r = tasksctl(daemon, "plan")
    assert r.returncode == 0, r.stdout + r.stderr  # the daemon's own dir: nothing to do
    checkout = tmp / "checkout"
    checkout.mkdir()
    (checkout / "web.hcl").write_text(raw_job("web", args=["2000"]).replace('"2s"', '"3s"'))
    (checkout / "same.hcl").write_text(raw_job("same"))
    (checkout / "new.hcl").write_text(raw_job("new"))
    r = tasksctl(daemon, "plan", "--tasks-dir", str(checkout), "--json")
    assert r.returncode == 3, r.stderr
    changes = {c["id"]: c for c in json.loads(r.stdout)["changes"]}
    assert changes[TID]["action"] == "update"
    assert changes[TID]["fields"] == ["config.args", "kill_timeout"]
    assert changes["same/g/0/t"]["action"] == "unchanged"
    assert changes["new/g/0/t"]["action"] == "create"
    assert changes["old/g/0/t"]["action"] == "stop"
    text = tasksctl(daemon, "plan", "--tasks-dir", str(checkout)).stdout
    assert "1 to create, 1 to update, 1 to stop, 1 unchanged" in text
    (checkout / "same.hcl").write_text('job "same" {')  # invalid: the daemon would keep it running
    r = tasksctl(daemon, "plan", "--tasks-dir", str(checkout), "--json")
    assert r.returncode == 1
    plan = json.loads(r.stdout)
    assert {c["id"]: c["action"] for c in plan["changes"]}["same/g/0/t"] == "unchanged"
    assert plan["invalid"][0]["path"].endswith("same.hcl")
    assert daemon.task("old/g/0/t")["state"] == "running"  # planning changed nothing


def test_drain_stops_everything_and_exits(daemon):
    daemon.start()
    daemon.write("web.hcl", raw_job("web"))
    pid = running_pid(daemon)
    r = tasksctl(daemon, "drain")
    assert r.returncode == 0 and "draining" in r.stdout
    daemon.proc.wait(120)
    daemon.proc = None
    assert not Path(f"/proc/{pid}").exists()
    r = tasksctl(daemon, "status", "--state-dir", str(daemon.state_dir), "--json")
    assert json.loads(r.stdout)["offline"] is True


def _spares(daemon) -> dict[str, int]:
    """The daemon's complete spare alloc dirs (isolation.spares): name -> inode."""
    root = daemon.state_dir / "spare"
    return {e.name: e.inode() for e in os.scandir(root) if e.name.isdigit()} if root.is_dir() else {}


def test_spare_alloc_dirs_are_made_while_idle_taken_by_a_start_and_removed_by_drain(daemon):
    daemon.start()
    before = wait_for(lambda: len(s := _spares(daemon)) == 2 and s, what="two spare alloc dirs")
    daemon.write("web.hcl", raw_job("web"))
    running_pid(daemon)
    st = daemon.client.get("/v1/tasks/" + TID)
    alloc_ino = os.lstat(st["alloc_dir"]).st_ino
    assert alloc_ino in before.values(), "the new task's alloc dir is not one of the spares"
    # Refilled once the daemon is quiet again: two spares, one of them new.
    after = wait_for(lambda: len(s := _spares(daemon)) == 2 and s != before and s, what="the pool refilled")
    assert len(set(before) & set(after)) == 1
    assert tasksctl(daemon, "drain").returncode == 0
    daemon.proc.wait(60)
    daemon.proc = None
    assert not (daemon.state_dir / "spare").exists()


def test_drain_does_not_wait_for_gc_grace_or_resync(daemon):
    # Drain collects allocs at once. It used to wake only at gone_at + gc_grace (or the next full resync), so with
    # the defaults (5m, 60s) `tasksctl drain` took minutes: with both at an hour the deadline below catches that.
    daemon.gc_grace = "1h"
    daemon.resync_interval = "1h"
    daemon.write_config()
    daemon.start()
    daemon.write("web.hcl", raw_job("web"))
    running_pid(daemon)
    assert tasksctl(daemon, "drain").returncode == 0
    daemon.proc.wait(60)
    daemon.proc = None
    assert "drained" in daemon.log()


def test_daemon_not_running_says_how_to_fix(daemon):
    r = tasksctl(daemon, "events")
    assert r.returncode == 1 and "tasksd is not running" in r.stderr and "--socket" in r.stderr
    r = tasksctl(daemon, "exec", "t", "--", "true")
    assert r.returncode == 1 and "tasksd is not running" in r.stderr


# -- exec -----------------------------------------------------------------------------------------------------

def driver_job(driver: str) -> str:
    return (f'job "sh" {{\n  group "g" {{\n    task "t" {{\n      driver = "{driver}"\n      kill_timeout = "2s"\n'
            f'      config {{\n        command = "/bin/sleep"\n        args = ["1000"]\n      }}\n    }}\n  }}\n}}\n')


def uid_ok(driver: str, uid: int) -> bool:
    # raw_exec runs as tasksd (root); exec as nobody; exec2 as a dynamic user from its pool.
    return {"raw_exec": uid == 0, "exec": uid == 65534, "exec2": 80000 <= uid <= 89999}[driver]


DRIVERS = ["raw_exec", "exec", "exec2"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_exec_runs_in_the_task_with_our_stdio_and_exit_code(daemon, driver):
    daemon.start()
    daemon.write("sh.hcl", driver_job(driver))
    running_pid(daemon, "sh/g/0/t")
    r = tasksctl(daemon, "exec", "sh", "--", "/bin/sh", "-c", "id -u; echo to-err >&2; exit 7")
    assert r.returncode == 7, r.stderr
    assert uid_ok(driver, int(r.stdout.strip())), r.stdout
    assert r.stderr == "to-err\n"
    r = tasksctl(daemon, "exec", "-i", "sh/g/0/t", "--", "cat", input="piped in\n")
    assert r.returncode == 0 and r.stdout == "piped in\n", r.stderr
    r = tasksctl(daemon, "exec", "sh", "--", "cat", input="not passed\n")  # without -i stdin is /dev/null
    assert r.returncode == 0 and r.stdout == ""
    r = tasksctl(daemon, "exec", "sh", "--", "/bin/sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM
    r = tasksctl(daemon, "exec", "sh", "--", "no-such-command")
    assert r.returncode == 126 and "no-such-command" in r.stderr
    evs = [e for e in daemon.client.get("/v1/events?task=sh/g/0/t") if e["type"] == "exec"]
    assert any("id -u" in e["message"] for e in evs)


@pytest.mark.parametrize("driver", ["exec", "exec2"])
def test_exec_after_a_daemon_kill_uses_the_stored_exec_environment(daemon, driver):
    # The daemon holds handles without their exec environment (KBs per task); it lives in the store. After
    # kill -9 and a restart, exec still enters the same namespaces as the same user.
    daemon.start()
    daemon.write("sh.hcl", driver_job(driver))
    pid = running_pid(daemon, "sh/g/0/t")
    before = tasksctl(daemon, "exec", "sh", "--", "/bin/sh", "-c", "id -u; readlink /proc/self/ns/mnt")
    assert before.returncode == 0, before.stderr
    daemon.kill9()
    daemon.start()
    assert daemon.task("sh/g/0/t")["pid"] == pid
    after = tasksctl(daemon, "exec", "sh", "--", "/bin/sh", "-c", "id -u; readlink /proc/self/ns/mnt")
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout and uid_ok(driver, int(after.stdout.split()[0]))
    assert after.stdout.split()[1] != os.readlink("/proc/self/ns/mnt")  # the task's mount namespace, not ours


def test_handles_written_by_an_older_tasksd_move_their_exec_environment_to_the_store(daemon):
    import sqlite3

    daemon.start()
    daemon.write("sh.hcl", driver_job("exec"))
    pid = running_pid(daemon, "sh/g/0/t")
    db = sqlite3.connect(daemon.state_dir / "db" / "tasksd.db")
    # "running" is the daemon's memory; the pass commits the handle and its environment at its end.
    wait_for(lambda: db.execute("SELECT count(*) FROM exec_envs WHERE task_id='sh/g/0/t'").fetchone()[0] == 1,
             timeout=30, what="the start committed")
    daemon.kill9()
    # What versions before the exec_envs table wrote: the environment inside the handle's JSON.
    (env,) = db.execute("SELECT env FROM exec_envs WHERE task_id='sh/g/0/t'").fetchone()
    (handle,) = db.execute("SELECT handle FROM tasks WHERE task_id='sh/g/0/t'").fetchone()
    old = json.loads(handle)
    old.pop("pid_ns")
    old["exec_env"] = {**json.loads(env), "cpuset": None}
    db.execute("UPDATE tasks SET handle=? WHERE task_id='sh/g/0/t'", (json.dumps(old),))
    db.execute("DELETE FROM exec_envs")
    db.commit()
    daemon.start()
    assert daemon.task("sh/g/0/t")["pid"] == pid
    r = tasksctl(daemon, "exec", "sh", "--", "id", "-u")
    assert r.returncode == 0 and r.stdout.strip() == "65534", r.stderr
    wait_for(lambda: db.execute("SELECT count(*) FROM exec_envs").fetchone()[0] == 1, timeout=30,
             what="the exec environment moved to its table")
    (handle,) = db.execute("SELECT handle FROM tasks WHERE task_id='sh/g/0/t'").fetchone()
    assert json.loads(handle)["exec_env"] == {} and json.loads(handle)["pid_ns"] is True
    db.close()


class TerminalCli:
    """tasksctl with a terminal (a pty) on stdin, stdout and stderr, as an operator runs it."""

    def __init__(self, daemon, *args: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TASKSD_SOCKET": daemon.socket}
        self.out = b""
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            os.chdir(str(REPO))
            os.execve(sys.executable, [sys.executable, "-m", "controller.cli", *args], env)

    def saw(self, needle: bytes) -> bool:
        """Read what the terminal shows (briefly waiting); whether `needle` is in it, or the terminal closed."""
        if select.select([self.master], [], [], 0.1)[0]:
            try:
                self.out += os.read(self.master, 65536)
            except OSError:
                return True
        return needle in self.out

    def wait_exit(self, what: str) -> int:
        """tasksctl's exit code, once it exited; the terminal is drained meanwhile (so it never blocks writing)
        and after."""
        done: list = []

        def exited() -> bool:
            self.saw(b"\0")
            r = os.waitpid(self.pid, os.WNOHANG)
            if r[0]:
                done.append(r[1])
            return bool(done)

        wait_for(exited, timeout=30, what=f"{what} (output {self.out!r})")
        self.pid = 0
        while select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.out += data
        return os.waitstatus_to_exitcode(done[0])

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)


@pytest.mark.parametrize("driver", DRIVERS)
def test_exec_t_through_a_pty(daemon, driver):
    daemon.start()
    daemon.write("sh.hcl", driver_job(driver))
    running_pid(daemon, "sh/g/0/t")
    term = TerminalCli(daemon, "exec", "-it", "sh", "--", "/bin/sh")
    try:
        # Typed ahead, before tasksctl switched the terminal to raw mode: it must still reach the remote shell.
        # Arithmetic in the commands makes the needles differ from the local echo of what we typed.
        os.write(term.master, b"tty; echo answer=$((6*7)); test -t 0 && echo tty-$((1+1))\n")
        wait_for(lambda: term.saw(b"tty-2\r\n"), timeout=30, what="remote shell output")
        assert b"answer=42\r\n" in term.out  # \r\n: the remote pty's own output processing, so a real terminal
        os.write(term.master, b"exit 5\n")
        assert term.wait_exit("tasksctl exec -t to exit") == 5, term.out
        out = term.out
        assert b"answer=42" in out and b"tty-2" in out  # a real terminal on stdin
        if driver != "exec":
            # exec's chroot has its own devpts instance, so the host pty tasksctl passed in has no name there
            # (`tty` says "not a tty" although isatty is true); elsewhere it shows as /dev/pts/N.
            assert b"/dev/pts/" in out
    finally:
        term.close()


def exec2_writer_job(marker: str) -> str:
    # Writes a file in local/ on its first run; every run appends, which needs the file to still be its own.
    script = 'echo "$MARK" >> "$NOMAD_TASK_DIR/runs" && exec sleep 1000'
    return (f'job "w" {{\n  group "g" {{\n    task "t" {{\n      driver = "exec2"\n      kill_timeout = "2s"\n'
            f'      env {{\n        MARK = "{marker}"\n      }}\n'
            f'      config {{\n        command = "/bin/sh"\n        args = ["-c", {json.dumps(script)}]\n      }}\n'
            f'    }}\n  }}\n}}\n')


def test_an_exec2_task_keeps_its_dynamic_uid_across_an_edit_and_a_restart(daemon):
    """The dynamic uid owns what the task wrote (local/, alloc/data): a new version of the spec, or tasksctl
    restart, is the same task instance and must run as the same uid, or it could no longer touch its own files."""
    daemon.start()
    daemon.write("w.hcl", exec2_writer_job("one"))
    tid = "w/g/0/t"
    first = running_pid(daemon, tid)
    runs = Path(daemon.task(tid)["alloc_dir"]) / "t" / "local" / "runs"
    wait_for(lambda: runs.exists() and runs.read_text() == "one\n", timeout=30, what="the first run's file")
    uid = runs.stat().st_uid
    assert 80000 <= uid <= 89999
    daemon.write("w.hcl", exec2_writer_job("two"))  # the spec changed: stopped, then started again
    wait_for(lambda: runs.read_text() == "one\ntwo\n", timeout=30, what="the edited version appending")
    assert daemon.task(tid)["pid"] != first
    r = tasksctl(daemon, "restart", tid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: runs.read_text() == "one\ntwo\ntwo\n", timeout=30, what="the restarted run appending")
    assert runs.stat().st_uid == uid
    r = tasksctl(daemon, "exec", tid, "--", "id", "-u")
    assert r.returncode == 0 and int(r.stdout) == uid, (r.stdout, r.stderr)


def test_ids_with_spaces_work_in_every_command(daemon):
    # The CLI percent-encodes ids in URLs; the API must decode them (it answered 404 for such tasks).
    daemon.start()
    daemon.write("sp.hcl", 'job "sp" {\n  group "g" {\n    task "my task" {\n      driver = "raw_exec"\n'
                 '      config {\n        command = "/bin/sh"\n        args = ["-c", "echo hello; exec sleep 1000"]\n'
                 '      }\n    }\n  }\n}\n')
    tid = "sp/g/0/my task"
    pid = running_pid(daemon, tid)
    r = tasksctl(daemon, "status", tid)
    assert r.returncode == 0 and "my task" in r.stdout, r.stderr
    wait_for(lambda: tasksctl(daemon, "logs", tid).stdout == "hello\n", timeout=30, what="the task's log")
    r = tasksctl(daemon, "events", "--task", tid)
    assert r.returncode == 0 and "started" in r.stdout, r.stderr
    r = tasksctl(daemon, "restart", tid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: (daemon.task(tid) or {}).get("pid") not in (None, pid), timeout=30, what="a new process")


@pytest.mark.parametrize("driver", ["raw_exec", "exec2"])
def test_exec_without_t_never_hands_the_operators_terminal_to_the_task(daemon, driver):
    """Without -t, our stdio went to the command as they were. A terminal among them let the command (or a
    process it leaves behind) read the operator's later keystrokes (a sudo password) and change its settings.
    Terminals and sockets are now relayed through pipes; the command still gets our input and output."""
    daemon.start()
    daemon.write("sh.hcl", driver_job(driver))
    running_pid(daemon, "sh/g/0/t")
    script = ("for n in 0 1 2; do if [ -t $n ]; then echo fd$n=tty; else echo fd$n=pipe; fi; done; "
              "read line; echo got=$line; echo to-err >&2; exit 3")
    term = TerminalCli(daemon, "exec", "-i", "sh", "--", "/bin/sh", "-c", script)
    try:
        wait_for(lambda: term.saw(b"fd2="), timeout=30, what="the command's first lines")
        os.write(term.master, b"hello\n")
        code = term.wait_exit("tasksctl exec to exit")
        text = term.out.decode().replace("\r\n", "\n")
        assert code == 3, text
        assert "fd0=pipe\nfd1=pipe\nfd2=pipe\n" in text, text
        assert "got=hello\n" in text and "to-err\n" in text, text
    finally:
        term.close()
