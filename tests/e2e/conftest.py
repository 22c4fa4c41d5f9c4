"""A real tasksd daemon on a temp tasks dir, state dir and socket, torn down completely (tasks drained, launcher
stopped, cgroups and mounts gone)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controller.client import Client, ClientError
from isolation.launcher_proto import is_launcher_cmdline
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


class Daemon:
    def __init__(self, root: Path, cgroup_parent: str, config: str = ""):
        self.root = root
        self.tasks_dir = root / "tasks.d"
        self.state_dir = root / "state"
        self.socket = str(root / "run" / "tasksd.sock")
        self.config_path = root / "config.hcl"
        self.tasks_dir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(root, 0o755)
        self.cgroup_parent = cgroup_parent
        self.extra_config = config
        self.gc_grace = "1s"
        self.resync_interval = "30s"
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "tasksd.log"
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(
            f'client {{\n  cgroup_parent = "{self.cgroup_parent}"\n  gc_grace = "{self.gc_grace}"\n'
            f'  resync_interval = "{self.resync_interval}"\n}}\nplugin "raw_exec" {{\n  config {{\n    enabled = true\n  }}\n}}\n'
            + self.extra_config)

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    def start(self, wait_ready: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.daemon_main", "--config", str(self.config_path),
             "--tasks-dir", str(self.tasks_dir), "--state-dir", str(self.state_dir), "--socket", self.socket,
             "--log-level", "debug"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        log.close()
        if wait_ready:
            wait_for(self.is_ready, timeout=60, what=f"tasksd ready (log: {self.log_path})")

    def is_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"tasksd exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return bool(self.client.get("/v1/health")["ready"])
        except (ClientError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.proc = None

    def tasks(self) -> dict[str, dict]:
        return {t["id"]: t for t in self.client.get("/v1/tasks")["tasks"]}

    def task(self, tid: str) -> dict | None:
        return self.tasks().get(tid)

    def wait_state(self, tid: str, state: str, timeout: float = 30) -> dict:
        return wait_for(lambda: (t := self.task(tid)) is not None and t["state"] == state and t,
                        timeout=timeout, what=f"{tid} {state} (now {self.task(tid)})")

    def write(self, name: str, text: str, atomic: bool = True) -> Path:
        path = self.tasks_dir / name
        if atomic:
            tmp = self.tasks_dir / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)
        else:
            path.write_text(text)
        return path

    def drain(self) -> None:
        """Stop every task and the launcher (the documented way to stop everything)."""
        if self.proc is None:
            self.start()
        self.client.post("/v1/drain")
        self.proc.wait(120)
        self.proc = None


def raw_job(name: str, command: str = "/bin/sleep", args: list[str] | None = None, extra: str = "",
            task_extra: str = "") -> str:
    args = args if args is not None else ["1000"]
    return (f'job "{name}" {{\n  {extra}\n  group "g" {{\n    task "t" {{\n      driver = "raw_exec"\n'
            f'      kill_timeout = "2s"\n      config {{\n        command = "{command}"\n'
            f'        args = {json.dumps(args)}\n      }}\n      {task_extra}\n    }}\n  }}\n}}\n')


@pytest.fixture
def daemon(tmp, cgroup_parent):
    d = Daemon(tmp, cgroup_parent)
    yield d
    teardown_daemon(d, cgroup_parent)


def teardown_daemon(d: Daemon, cgroup_parent: str) -> None:
    """Drain (the documented way to stop everything). If the daemon cannot drain (the test broke it), clean up
    by force so one broken test does not leave a launcher, tasks, cgroups and mounts for every later one."""
    from isolation import cgroups, taskdir

    try:
        d.drain()
    except Exception:  # noqa: BLE001 - fall through to the forced cleanup, then fail loudly
        forced = True
    else:
        forced = False
    finally:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()
    mgr = cgroups.CgroupManager(cgroups.detect(), cgroup_parent)
    if forced:
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            if is_launcher_cmdline(p.info["cmdline"] or []) and str(d.state_dir) in p.info["cmdline"]:
                p.kill()
                p.wait(10)
        for name in mgr.names():
            cg = mgr.open(name)
            if cg is not None:
                cg.kill()
                cg.remove()
        for alloc in (d.state_dir / "alloc").glob("*") if (d.state_dir / "alloc").exists() else ():
            taskdir.remove_alloc(alloc)
    left = [str(p) for p in mgr.parent_paths.values() if p.exists()]
    mgr.remove_parent()
    if forced:
        raise AssertionError(f"tasksd could not drain; cleaned up by force. Log:\n{d.log()[-3000:]}")
    if left:
        raise AssertionError(f"a drained tasksd left its cgroup parent behind: {left}")
