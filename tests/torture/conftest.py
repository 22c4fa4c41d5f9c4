"""Fixtures of the reliability suite: a real tasksd (the e2e `Daemon`) plus helpers that look at the kernel's view
of its tasks (cgroup membership, process trees) rather than at what tasksd says about them.

Short vs long: pytest only honours `pytest_addoption` in *initial* conftests (the rootdir's and those of the paths
given on the command line), so an option defined here would be unknown when the suite runs as part of `pytest
tests`. The long version is therefore selected by the environment: TASKSD_TORTURE_LONG=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from isolation import cgroups
from isolation.launcher_proto import is_launcher_cmdline
from tests.e2e.conftest import Daemon, teardown_daemon

LONG = os.environ.get("TASKSD_TORTURE_LONG") == "1"


def scale(short: int, long: int) -> int:
    return long if LONG else short


@pytest.fixture
def make_daemon(tmp, cgroup_parent):
    """A factory so a test can choose the client config (resync interval, exec plugins); drained at teardown."""
    made: list[Daemon] = []

    def make(config: str = "", root: Path | None = None) -> Daemon:
        d = Daemon(root or tmp, cgroup_parent, config)
        made.append(d)
        return d

    yield make
    for d in made:
        teardown_daemon(d, cgroup_parent)


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


def resync(d: Daemon, interval: str) -> None:
    """Rewrite the daemon's config with another resync interval (the e2e default is 30s)."""
    d.resync_interval = interval
    d.write_config()


def task_cgroups(cgroup_parent: str) -> dict[str, list[int]]:
    """Every task cgroup below the test's parent and the pids in it, as the kernel sees them. A cgroup removed
    while it is read (ENODEV/ENOENT from its files) makes the whole read start again, within a deadline."""
    from tests.helpers import wait_for

    def attempt():
        mgr = cgroups.CgroupManager(cgroups.detect(), cgroup_parent)
        out: dict[str, list[int]] = {}
        try:
            for name in mgr.names():
                cg = mgr.open(name)
                if cg is not None:
                    out[name] = sorted(cg.pids())
        except OSError:
            return None
        return (out,)

    return wait_for(attempt, timeout=10, what="a consistent read of the task cgroups")[0]


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def launcher_pids(d: Daemon) -> list[int]:
    """The launcher of this daemon's state dir (a separate process that survives kill -9 of tasksd)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cl = p.info["cmdline"] or []
        if is_launcher_cmdline(cl) and str(d.state_dir) in " ".join(cl):
            out.append(p.pid)
    return out
