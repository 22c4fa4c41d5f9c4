"""Faults around the daemon: a full and a read-only state dir, a change no inotify event reports, a daemon
restart while a task is stopping, and clock jumps in the restart arithmetic."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from freezegun import freeze_time

from manifests.model import RestartPolicy
from reconcilers import restart
from tests.e2e.conftest import Daemon, raw_job, teardown_daemon
from tests.helpers import wait_for
from tests.torture.conftest import resync

def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tasksd-test", str(path)], check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_state(tmp, cgroup_parent):
    """A daemon whose state dir is a 16 MB tmpfs, unmounted (after drain) at the end."""
    d = Daemon(tmp, cgroup_parent)
    _mount_tmpfs(d.state_dir, "16m")
    try:
        yield d
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(d.state_dir)], check=False)
        filler = d.state_dir / "filler"
        filler.unlink(missing_ok=True)
        try:
            teardown_daemon(d, cgroup_parent)
        finally:
            _umount(d.state_dir)


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full"])
def test_state_dir_full_or_readonly_is_reported_and_tasks_keep_running(small_state, fault):
    d = small_state
    d.start()
    d.write("web.hcl", raw_job("web"))
    pid = d.wait_state("web/g/0/t", "running")["pid"]
    if fault == "full":
        _fill(d.state_dir / "filler")
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(d.state_dir)], check=True)
    # A change that must be written (a new task's state) while the disk refuses writes.
    d.write("other.hcl", raw_job("other"))
    snap = wait_for(lambda: (s := d.client.get("/v1/tasks")).get("store_error") and s, timeout=30,
                    what="the store error is reported")
    assert "cannot write state" in snap["store_error"]
    assert Path(f"/proc/{pid}").exists()  # the running task was not harmed
    other = wait_for(lambda: (t := d.task("other/g/0/t")) and t["state"] == "running" and t, what="other runs")
    assert Path(f"/proc/{other['pid']}").exists()
    # Space (or write access) comes back: the next transition is stored again and the error clears.
    if fault == "full":
        (d.state_dir / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(d.state_dir)], check=True)
    d.write("third.hcl", raw_job("third"))
    wait_for(lambda: d.client.get("/v1/tasks").get("store_error") is None, timeout=30, what="store error cleared")
    # What was kept in memory while the disk refused it reached the store: a restart re-adopts all three.
    d.kill9()
    d.start()
    tasks = d.tasks()
    assert tasks["web/g/0/t"]["pid"] == pid
    assert tasks["other/g/0/t"]["pid"] == other["pid"]
    assert "third/g/0/t" in tasks


@pytest.mark.root
@pytest.mark.slow
def test_readonly_state_store_is_reported_and_tasks_keep_running(tmp, cgroup_parent):
    """A read-only state dir cannot be produced under a running daemon here (its open files make a remount
    busy), so the store gets its own small mount that is made read-only while tasksd is down. tasksd then starts
    from what it can read, supervises, and reports every write it cannot make until the disk is writable."""
    d = Daemon(tmp, cgroup_parent)
    db = d.state_dir / "db"
    _mount_tmpfs(db, "8m")
    os.chmod(db, 0o700)
    try:
        d.start()
        d.write("web.hcl", raw_job("web"))
        pid = d.wait_state("web/g/0/t", "running")["pid"]
        d.kill9()
        subprocess.run(["mount", "-o", "remount,ro", str(db)], check=True)
        d.start()  # it can read its state, so it re-adopts and supervises; writes fail and are reported
        assert d.task("web/g/0/t")["pid"] == pid  # re-adopted, not restarted
        d.write("other.hcl", raw_job("other"))
        snap = wait_for(lambda: (s := d.client.get("/v1/tasks")).get("store_error") and s, timeout=30,
                        what="the read-only store is reported")
        assert "read" in snap["store_error"].lower() and str(db) in snap["store_error"]
        other = d.wait_state("other/g/0/t", "running")["pid"]
        subprocess.run(["mount", "-o", "remount,rw", str(db)], check=True)
        d.write("third.hcl", raw_job("third"))
        wait_for(lambda: d.client.get("/v1/tasks").get("store_error") is None, timeout=30, what="error cleared")
        d.kill9()
        d.start()
        assert d.task("other/g/0/t")["pid"] == other  # kept in memory, written once the disk took writes
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(db)], check=False)
        try:
            teardown_daemon(d, cgroup_parent)
        finally:
            _umount(db)


@pytest.mark.root
@pytest.mark.slow
def test_periodic_resync_catches_a_change_no_event_reports(tmp, cgroup_parent):
    """An in-place edit inside a symlinked subdirectory (the ConfigMap layout) happens outside the watched
    directory, so inotify says nothing: only the periodic resync can notice it."""
    d = Daemon(tmp, cgroup_parent)
    resync(d, "1s")
    data = d.tasks_dir / "..v1"
    data.mkdir()
    (data / "web.hcl").write_text(raw_job("web"))
    os.symlink("..v1/web.hcl", d.tasks_dir / "web.hcl")
    try:
        d.start()
        pid = d.wait_state("web/g/0/t", "running")["pid"]
        (data / "web.hcl").write_text(raw_job("web", args=["2000"]))  # no event in the watched directory
        wait_for(lambda: (t := d.task("web/g/0/t")) and t["state"] == "running" and t["pid"] != pid,
                 timeout=30, what="the resync noticed the edit")
    finally:
        teardown_daemon(d, cgroup_parent)


@pytest.mark.root
@pytest.mark.slow
def test_daemon_killed_while_a_task_is_stopping(daemon):
    script = "trap '' TERM INT; echo ready; while :; do sleep 0.1; done"
    daemon.start()
    daemon.write("stubborn.hcl", raw_job("stubborn", "/bin/sh", ["-c", script]).replace(
        'kill_timeout = "2s"', 'kill_timeout = "20s"\n      kill_signal = "SIGTERM"'))
    pid = daemon.wait_state("stubborn/g/0/t", "running")["pid"]
    (daemon.tasks_dir / "stubborn.hcl").unlink()
    daemon.wait_state("stubborn/g/0/t", "stopping")
    daemon.kill9()  # mid-stop: the task ignores SIGTERM and waits out its kill_timeout
    assert Path(f"/proc/{pid}").exists()
    daemon.start()
    # The new daemon re-adopts the process, sees its manifest is gone, and finishes the stop.
    wait_for(lambda: "stubborn/g/0/t" not in daemon.tasks(), timeout=60, what="stop finished after restart")
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", what="process gone")


POLICY = RestartPolicy(attempts=2, interval=60.0, delay=1.0, mode="fail")


def test_clock_jump_backwards_neither_resets_nor_crashes_the_restart_budget():
    with freeze_time("2026-01-01 12:00:00") as clock:
        state = restart.RestartTracker.begin(time.time())
        state, d1 = restart.on_exit(state, POLICY, "service", exit_code=1, now=time.time(), rand=0.0)
        clock.move_to("2025-12-31 12:00:00")  # NTP step back a whole day
        state, d2 = restart.on_exit(state, POLICY, "service", exit_code=1, now=time.time(), rand=0.0)
        state, d3 = restart.on_exit(state, POLICY, "service", exit_code=1, now=time.time(), rand=0.0)
    assert [d1.kind, d2.kind, d3.kind] == ["restart", "restart", "fail"]  # the budget still counts


def test_clock_jump_forwards_starts_a_fresh_interval():
    with freeze_time("2026-01-01 12:00:00") as clock:
        state = restart.RestartTracker.begin(time.time())
        for _ in range(2):
            state, d = restart.on_exit(state, POLICY, "service", exit_code=1, now=time.time(), rand=0.0)
            assert d.kind == "restart"
        clock.move_to("2026-01-02 12:00:00")  # a jump past the interval: the attempts are forgiven
        state, d = restart.on_exit(state, POLICY, "service", exit_code=1, now=time.time(), rand=0.0)
    assert d.kind == "restart"
