"""The launcher makes a starting task's cgroup (Runtime.prepare_cgroup) while the daemon builds its directories.

Real launcher, real cgroups on this hybrid host. What must hold: the cgroup and its limits are the ones the
manager would have made itself, the daemon falls back to making it when the launcher cannot (an older launcher,
a removed parent), the launcher refuses directories outside the host's cgroup mounts, and a start that fails
before its spawn leaves no cgroup behind.

Only the Python launcher (isolation/launcher.py) makes cgroups; the C launcher leaves them to the daemon (see
test_the_c_launcher_leaves_cgroups_to_the_daemon), so this module runs against the Python one.
"""
from __future__ import annotations

import os

import pytest

from isolation.cgroups import UNIFIED, CgroupLimits, limits_for
from isolation.drivers.base import StartError
from isolation.launcher_client import LauncherError
from isolation.launchspec import LogTarget
from isolation.runtime import CgroupTicket
from tests.helpers import wait_for
from tests.kernel.conftest import make_ctx, raw_task

pytestmark = pytest.mark.root

MIB = 1 << 20


@pytest.fixture(autouse=True)
def python_launcher(request, monkeypatch):
    if request.node.name != "test_the_c_launcher_leaves_cgroups_to_the_daemon":
        monkeypatch.setenv("TASKSD_LAUNCHER", "python")


def test_the_c_launcher_leaves_cgroups_to_the_daemon(runtime):
    from isolation.launcher_client import c_launcher_path

    if c_launcher_path() is None:
        pytest.skip("the C launcher is not built")
    assert runtime.client.launcher == "c"
    ticket = runtime.prepare_cgroup("a.c", limits_for(memory_mb=64, memory_max_mb=None, cpu_mhz=100, pids_limit=None))
    ticket.send()
    assert ticket.pending is None  # nothing was asked of the launcher
    cg = ticket.result()
    assert not cg.existed and all(os.path.isdir(d) for d in cg.dirs().values())
    cg.remove()


def _read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def _sent(ticket):
    ticket.send()
    return ticket


def _launcher_fds(runtime) -> dict[int, str]:
    """What the launcher holds open: fd -> path."""
    d = f"/proc/{runtime.client.launcher_pid}/fd"
    out = {}
    for fd in os.listdir(d):
        try:
            out[int(fd)] = os.readlink(f"{d}/{fd}")
        except FileNotFoundError:
            pass
    return out


def _launcher_files(runtime) -> set[str]:
    return set(_launcher_fds(runtime).values())


def _no_local_create(monkeypatch, runtime) -> None:
    def refuse(*a, **k):
        raise AssertionError("the daemon made the cgroup itself: the launcher was expected to")
    monkeypatch.setattr(runtime.cgroups, "create", refuse)


def test_the_launcher_makes_the_cgroup_with_its_limits(runtime, monkeypatch):
    _no_local_create(monkeypatch, runtime)
    limits = limits_for(memory_mb=64, memory_max_mb=128, cpu_mhz=500, pids_limit=50)
    cg = _sent(runtime.prepare_cgroup("a.web", limits)).result()
    assert not cg.existed
    assert set(cg.paths) == {UNIFIED, "memory", "cpu", "pids"}  # the hierarchies the manager's create joins
    assert all(d.is_dir() for d in cg.paths.values())
    assert int(_read(cg.paths["memory"] / "memory.limit_in_bytes")) == 128 * MIB
    assert int(_read(cg.paths["memory"] / "memory.soft_limit_in_bytes")) == 64 * MIB
    assert _read(cg.paths["cpu"] / "cpu.shares") == "500"
    assert _read(cg.paths["pids"] / "pids.max") == "50"
    assert cg.procs_files() == [str(cg.paths[h] / "cgroup.procs") for h in (UNIFIED, "cpu", "memory", "pids")]

    # Made again with other limits: it existed, and the launcher rewrote them.
    again = _sent(runtime.prepare_cgroup("a.web", CgroupLimits(pids_max=20))).result()
    assert again.existed
    assert _read(again.paths["pids"] / "pids.max") == "20"
    assert int(_read(again.paths["memory"] / "memory.limit_in_bytes")) > 1 << 60  # reset to the default
    monkeypatch.undo()

    # A restart: same name, same limits, which this daemon knows it wrote. Four mkdirs that find it there are
    # cheaper than a round trip, so the ticket is not sent and the limits are not written again.
    restart = runtime.prepare_cgroup("a.web", CgroupLimits(pids_max=20))
    restart.send()
    assert restart.pending is None
    with open(again.paths["pids"] / "pids.max", "w") as f:
        f.write("33")  # changed behind its back: a rewrite would put 20 back
    cg = restart.result()
    assert cg.existed and _read(cg.paths["pids"] / "pids.max") == "33"
    cg.remove()


def test_an_older_launcher_without_the_request_gets_the_cgroup_made_by_the_daemon(runtime, monkeypatch):
    """A launcher outlives daemon upgrades. One from before this request answers "unknown op" (a real reply from
    the real launcher here: the request goes out under a name it does not know)."""
    submit = runtime.client.submit
    monkeypatch.setattr(runtime.client, "submit",
                        lambda op, *a, **k: submit("cgroup-from-the-future" if op == "cgroup" else op, *a, **k))
    with pytest.raises(LauncherError, match="unknown op"):
        runtime.client.request("cgroup")
    cg = _sent(runtime.prepare_cgroup("old.t", CgroupLimits(pids_max=7))).result()
    assert _read(cg.paths["pids"] / "pids.max") == "7"
    cg.remove()


def test_a_removed_parent_is_made_again(runtime):
    runtime.cgroups.remove_parent()
    assert not any(p.exists() for p in runtime.cgroups.parent_paths.values())
    cg = _sent(runtime.prepare_cgroup("p.t", CgroupLimits(pids_max=9))).result()
    assert _read(cg.paths["pids"] / "pids.max") == "9"
    cg.remove()


def test_the_launcher_refuses_directories_outside_the_cgroup_mounts(runtime, tmp):
    name = "evil.t"
    for paths, mode, why in [
        ({UNIFIED: str(tmp / name)}, runtime.layout.mode, "not in a cgroup hierarchy"),
        ({UNIFIED: str(runtime.cgroups.parent_paths[UNIFIED] / ".." / ".." / ".." / ".." / "tmp")},
         runtime.layout.mode, "not in a cgroup hierarchy"),
        ({UNIFIED: str(runtime.cgroups.parent_paths[UNIFIED] / name)}, "v0", "is not this host's"),
    ]:
        with pytest.raises(LauncherError, match=why):
            runtime.client.request("cgroup", name=name, mode=mode, paths=paths, limits={}, rewrite=True)
    assert not (tmp / name).exists()
    assert runtime.cgroups.names() == []


def test_a_start_that_fails_before_its_spawn_leaves_no_cgroup(drivers, agent_config, runtime):
    ctx = make_ctx(agent_config, raw_task("/nonexistent/command"))
    with pytest.raises(StartError, match="nonexistent"):
        drivers["raw_exec"].start(ctx)
    assert runtime.cgroups.names() == []
    # ...and the call connection was given back (the ticket held it until collected).
    assert not runtime.client._call_lock.locked()
    handle = drivers["raw_exec"].start(make_ctx(agent_config, raw_task("/bin/true"), index=1))
    try:
        assert drivers["raw_exec"].wait(handle, 30).exit_code == 0
    finally:
        drivers["raw_exec"].destroy(handle)


def test_log_files_opened_ahead_are_the_ones_the_task_writes_and_a_failed_start_closes_them(
        drivers, agent_config, runtime, tmp, monkeypatch):
    """The launcher opens a starting task's log files before the spawn request comes; the spawn takes them. A
    start that fails before its spawn has them closed by the next request on the connection (the launcher holds
    no descriptor on them), as does a spawn that fails."""
    # Ahead of a spawn: the file exists and the launcher holds it before any task runs.
    logs = tmp / "logs"
    logs.mkdir()
    target = LogTarget(str(logs), "x.stdout", 2, 1 << 20)
    ticket = runtime.prepare_cgroup("ahead.t", CgroupLimits())
    ticket.send()
    ticket.open_logs("key-ahead", (target, None))
    ticket.discard()  # as a start that failed before its spawn does
    wait_for(lambda: str(logs / "x.stdout") in _launcher_files(runtime), what="the log file opened ahead")
    # The next request on that connection is not the spawn they were for: they are closed before it is served.
    runtime.client.request("ping")
    assert str(logs / "x.stdout") not in _launcher_files(runtime)
    assert runtime.cgroups.names() == []

    # Through the driver: the spawn keeps the very descriptor opened ahead, and the output lands in it.
    driver = drivers["raw_exec"]
    ctx = make_ctx(agent_config, raw_task("/bin/sh", "-c", "echo ahead; exec sleep 60"))
    out = os.path.join(runtime.alloc_root, ctx.alloc_id, "alloc", "logs", "t.stdout")
    seen: list[int] = []
    real_open_logs = CgroupTicket.open_logs

    def open_logs_and_look(self, key, targets):
        real_open_logs(self, key, targets)
        seen.extend(wait_for(lambda: [fd for fd, p in _launcher_fds(runtime).items() if p == out],
                             what="the launcher to open the log file ahead"))

    monkeypatch.setattr(CgroupTicket, "open_logs", open_logs_and_look)
    handle = driver.start(ctx)
    try:
        wait_for(lambda: open(out).read() == "ahead\n", what="the task's output")
        assert [fd for fd, p in _launcher_fds(runtime).items() if p == out] == seen
    finally:
        driver.stop(handle, "SIGKILL", 5)
        driver.destroy(handle)
    monkeypatch.undo()

    # A spawn that fails (the command is there when the daemon looks, gone when the launcher execs it).
    gone = tmp / "gone.sh"
    gone.write_text("#!/bin/sh\n")
    gone.chmod(0o755)
    ctx = make_ctx(agent_config, raw_task(str(gone), name="g"), index=3)
    real_request = runtime.client.request

    def remove_then_request(op, *a, **k):
        if op == "spawn":
            gone.unlink()
        return real_request(op, *a, **k)

    driver_client = runtime.client
    driver_client.request = remove_then_request
    try:
        with pytest.raises(StartError):
            driver.start(ctx)
    finally:
        del driver_client.request
    failed_logs = os.path.join(runtime.alloc_root, ctx.alloc_id, "alloc", "logs")
    assert not any(p.startswith(failed_logs) for p in _launcher_files(runtime))
