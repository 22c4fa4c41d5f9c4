"""Respawns on the real kernel: a run the daemon armed is restarted by the C launcher itself when it exits, into the
same cgroup and logs, as the key the daemon derived and stored ahead (isolation/launcher.c, "respawns"). Only the C
launcher keeps requests; the Python launcher ignores arming and the daemon restarts those tasks itself."""
from __future__ import annotations

import os
import queue
import signal
from pathlib import Path

import pytest

from isolation.drivers import make_drivers
from isolation.drivers.base import respawn_key
from isolation.runtime import Runtime
from tests.helpers import wait_for
from tests.kernel.conftest import crash_launcher, exit_queue, make_ctx, raw_task, teardown_runtime

pytestmark = pytest.mark.root


@pytest.fixture
def exits(runtime):
    return exit_queue(runtime)


def _next_exit(q: queue.Queue, key: str):
    while True:
        handle, result = q.get(timeout=30)
        if handle.key == key:
            return result


def _log(handle) -> str:
    name = handle.task_id.rsplit("/", 1)[1]
    return (Path(handle.alloc_dir) / "alloc" / "logs" / f"{name}.stdout").read_text()


def _listed(runtime: Runtime) -> dict[str, dict]:
    return {t["key"]: t for t in runtime.client.request("list")["tasks"]}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_armed_run_is_respawned_by_the_launcher_as_its_derived_key_into_the_same_cgroup_and_logs(
        runtime, exits, agent_config):
    d = make_drivers(runtime, agent_config)["raw_exec"]
    task = raw_task("/bin/sh", "-c", "echo run; exec sleep 1000")
    h = d.start(make_ctx(agent_config, task, arm=True))
    assert h.armed
    assert _listed(runtime)[h.key]["next_key"] == respawn_key(h.key)
    kept = runtime.state_dir / "run" / "respawn.dat"
    assert kept.stat().st_size > 1000  # the request, kept in the launcher's file
    wait_for(lambda: _log(h) == "run\n", what="the first run's output")

    os.kill(h.pid, signal.SIGKILL)
    res = _next_exit(exits, h.key)
    assert res.signal == signal.SIGKILL and res.respawn_error is None
    nxt = res.respawned
    assert nxt is not None and nxt.key == respawn_key(h.key) and nxt.pid != h.pid and not nxt.armed
    assert (nxt.task_id, nxt.cgroup, nxt.alloc_dir) == (h.task_id, h.cgroup, h.alloc_dir)
    assert _alive(nxt.pid) and nxt.pid in runtime.cgroups.open(h.cgroup).pids()
    assert "next_key" not in _listed(runtime)[nxt.key]  # good for one respawn: the daemon re-arms
    wait_for(lambda: _log(h) == "run\nrun\n", what="the second run's output in the same log")
    assert runtime.registered(nxt.key) is not None  # its own exit will be matched

    runtime.arm(nxt.key)  # once more, as the daemon does after counting the restart
    wait_for(lambda: _listed(runtime)[nxt.key].get("next_key") == respawn_key(nxt.key), what="re-armed")
    runtime.ack(h)
    os.kill(nxt.pid, signal.SIGKILL)
    third = _next_exit(exits, nxt.key).respawned
    assert third is not None and third.key == respawn_key(nxt.key) and _alive(third.pid)
    runtime.ack(nxt)
    runtime.arm(third.key)
    wait_for(lambda: _listed(runtime)[third.key].get("next_key"), what="re-armed")

    # A stop disarms first: what the stop kills stays dead.
    res = d.stop(third, "SIGTERM", 5)
    assert res.signal == signal.SIGTERM and res.respawned is None
    assert not _listed(runtime) and not _alive(third.pid)
    assert kept.stat().st_size == 0  # the kept request goes with its last run
    d.destroy(third)


def test_a_run_that_left_processes_in_its_cgroup_is_not_respawned(runtime, exits, agent_config):
    d = make_drivers(runtime, agent_config)["raw_exec"]
    task = raw_task("/bin/sh", "-c", "setsid sleep 1000 & echo $! > $NOMAD_TASK_DIR/gc; exec sleep 1000")
    h = d.start(make_ctx(agent_config, task, arm=True))
    gc_file = Path(h.task_dir) / "local" / "gc"
    wait_for(lambda: gc_file.exists() and gc_file.read_text().strip(), what="the grandchild's pid")
    gc = int(gc_file.read_text())
    os.kill(h.pid, signal.SIGKILL)
    res = _next_exit(exits, h.key)
    # Whatever it left must die first, and only the daemon kills: the launcher leaves the restart to it.
    assert res.respawned is None and "left in its cgroup" in res.respawn_error
    assert _alive(gc) and not _listed(runtime)
    d.destroy(h)
    wait_for(lambda: not _alive(gc), what="the grandchild killed with the cgroup")


def test_a_stop_decided_before_the_exit_was_seen_stops_the_respawned_run(runtime, exits, agent_config):
    """The run exits and is respawned before the daemon, about to stop it, took the exit in: the stop's disarm
    learns of the new run and stops that one instead, so nothing the daemon no longer wants keeps running."""
    d = make_drivers(runtime, agent_config)["raw_exec"]
    h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000"), arm=True))
    os.kill(h.pid, signal.SIGKILL)
    nxt = _next_exit(exits, h.key).respawned
    assert nxt is not None and _alive(nxt.pid)
    res = d.stop(h, "SIGTERM", 5)  # the old handle, as a stop decided before the exit was seen has it
    assert res.signal == signal.SIGTERM
    assert not _alive(nxt.pid) and not _listed(runtime)
    d.destroy(h)


def test_the_launchers_arm_and_spawn_refuse_bad_keys(runtime, agent_config):
    d = make_drivers(runtime, agent_config)["raw_exec"]
    h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000")))  # not armed
    assert not h.armed and "next_key" not in _listed(runtime)[h.key]
    with pytest.raises(Exception, match="no kept spawn request"):
        runtime.client.request("arm", key=h.key, next_key="x.y.1")
    with pytest.raises(Exception, match="not running"):
        runtime.client.request("arm", key="nobody.t.1", next_key="x.y.1")
    with pytest.raises(Exception, match="different next_key"):
        runtime.client.request("arm", key=h.key, next_key=h.key)
    assert runtime.client.request("disarm", key="nobody.t.1")["running"] is False
    d.stop(h, "SIGKILL", 1)
    d.destroy(h)

    # Disarmed is for good: an arm read after the disarm (it came on another connection) cannot undo it.
    h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000"), arm=True))
    assert runtime.client.request("disarm", key=h.key)["running"] is True
    assert "next_key" not in _listed(runtime)[h.key]
    with pytest.raises(Exception, match="was disarmed"):
        runtime.client.request("arm", key=h.key, next_key=respawn_key(h.key))
    d.stop(h, "SIGKILL", 1)
    d.destroy(h)


def test_the_python_launcher_ignores_arming_and_reports_a_plain_exit(tmp, cgroup_parent, agent_config, monkeypatch):
    monkeypatch.setenv("TASKSD_LAUNCHER", "python")
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    try:
        q = exit_queue(rt)
        d = make_drivers(rt, agent_config)["raw_exec"]
        h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000"), arm=True))
        assert not h.armed
        os.kill(h.pid, signal.SIGKILL)
        res = _next_exit(q, h.key)
        assert res.respawned is None and res.respawn_error is None
        d.destroy(h)
    finally:
        teardown_runtime(rt)


def test_an_isolated_task_is_respawned_with_the_same_identity_and_confinement(runtime, exits, tmp):
    """exec2: the respawn replays the whole child plan: a new pid namespace, the same dynamic uid (kept across
    restarts), Landlock as before."""
    from isolation.drivers.exec2 import Exec2Driver
    from manifests.agent_config import AgentConfig, Exec2Plugin
    from manifests.model import Exec2Config, Task

    os.chmod(tmp, 0o711)  # exec2's dynamic user reaches its task dir through the host path
    cfg = AgentConfig(exec2=Exec2Plugin(unveil_paths=("r:/proc",)), max_kill_timeout=30.0)
    d = Exec2Driver(runtime, cfg)
    probe = ('echo "run uid=$(id -u) pid=$$ ns=$(readlink /proc/self/ns/pid) '
             'passwd=$(cat /etc/passwd >/dev/null 2>&1 && echo read || echo denied)"; exec sleep 1000')
    h = d.start(make_ctx(cfg, Task(name="t", driver="exec2", config=Exec2Config(command="/bin/sh",
                                                                               args=("-c", probe))), arm=True))
    assert h.armed
    wait_for(lambda: _log(h).count("run ") == 1, what="the first run's line")
    os.kill(h.pid, signal.SIGKILL)
    nxt = _next_exit(exits, h.key).respawned
    assert nxt is not None and _alive(nxt.pid)
    wait_for(lambda: _log(h).count("run ") == 2, what="the second run's line")
    first, second = (dict(kv.split("=", 1) for kv in line.split()[1:]) for line in _log(h).splitlines())
    assert first["uid"] == second["uid"] and int(first["uid"]) >= 80000 and nxt.uid == h.uid
    assert first["pid"] == second["pid"] == "1" and first["ns"] != second["ns"]
    assert first["passwd"] == second["passwd"] == "denied"
    runtime.ack(h)
    d.stop(nxt, "SIGKILL", 1)
    d.destroy(nxt)


def test_a_run_respawned_before_a_launcher_crash_is_watched_by_pidfd_after_it(tmp, cgroup_parent, agent_config):
    """The launcher that respawned a run dies before the daemon took the exit in: the next launcher reads the exit
    record back (marked "reloaded"), and the new run, not its child, is adopted through a pidfd, so its own exit is
    still learned."""
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    d = make_drivers(rt, agent_config)["raw_exec"]
    # One process, no children: a shell's loop would have its `sleep` outlive it for a moment, and the launcher
    # rightly respawns nothing while the cgroup still holds a process.
    task = raw_task("/usr/bin/python3", "-c", "import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\nprint('ready', flush=True)\n"
                    "time.sleep(1000)")
    h = d.start(make_ctx(agent_config, task, arm=True))
    wait_for(lambda: _log(h) == "ready\n", what="the handler installed")
    os.kill(h.pid, signal.SIGKILL)
    wait_for(lambda: respawn_key(h.key) in _listed(rt), what="the respawn")
    # Its output done before the crash: a task writing to a log pipe whose launcher is gone gets SIGPIPE.
    wait_for(lambda: _log(h) == "ready\nready\n", what="the new run's handler installed")
    rt.close()
    crash_launcher(rt)
    rt2 = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt2.open()
    try:
        got = exit_queue(rt2)
        d2 = make_drivers(rt2, agent_config)["raw_exec"]
        rt2.begin_recovery()
        res = d2.recover(h)
        rt2.end_recovery()
        nxt = res.respawned
        assert res.signal == signal.SIGKILL and nxt is not None and nxt.key == respawn_key(h.key)
        assert _alive(nxt.pid) and nxt.key not in _listed(rt2)  # not the new launcher's child
        os.kill(nxt.pid, signal.SIGTERM)
        res2 = _next_exit(got, nxt.key)
        assert res2.exit_code == 7 and res2.error is None
        rt2.ack(h)
        d2.destroy(nxt)
    finally:
        teardown_runtime(rt2)


def test_a_stop_with_the_launcher_gone_still_kills_the_task(tmp, cgroup_parent, agent_config):
    """The disarm a stop begins with cannot reach a launcher that died: the stop goes on and kills the cgroup."""
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    d = make_drivers(rt, agent_config)["raw_exec"]
    h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000"), arm=True))
    crash_launcher(rt)
    wait_for(lambda: rt.client._sock is None, what="the runtime to see the launcher gone")
    res = d.stop(h, "SIGTERM", 0.2)
    assert res.exit_code is None  # no launcher to report it
    wait_for(lambda: not _alive(h.pid), what="the task killed with its cgroup")
    rt.close()
    rt2 = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt2.open()
    teardown_runtime(rt2)
