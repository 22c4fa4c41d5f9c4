"""The upgrade from the Python launcher (isolation/launcher.py) to the C one (isolation/launcher.c): a launcher
outlives daemon upgrades, so a new daemon may find the old one running, or its exit records on disk."""
from __future__ import annotations

import signal

import pytest

from isolation.launchspec import LaunchSpec
from isolation.runtime import Runtime
from tests.kernel.conftest import spawn_spec, teardown_runtime
from tests.kernel.test_launcher_protocol import _ack, _exit_of, _restart_launcher

pytestmark = pytest.mark.root


def test_the_c_launcher_takes_over_the_python_launchers_exit_records(tmp, cgroup_parent, monkeypatch):
    """The upgrade: a Python launcher recorded an exit nobody acked and was stopped; the C launcher that starts
    next on the state dir lists it, and an ack removes its file."""
    from isolation.launcher_client import c_launcher_path

    if c_launcher_path() is None:
        pytest.skip("the C launcher is not built")
    monkeypatch.setenv("TASKSD_LAUNCHER", "python")
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    try:
        assert rt.client.launcher == "python"
        spec = LaunchSpec(key="old.t.1", path="/bin/sh", argv=("sh", "-c", "kill -TERM $$"), env=(), cwd="/")
        spawn_spec(rt, spec)
        assert _exit_of(rt, spec.key)["signal"] == signal.SIGTERM
        monkeypatch.delenv("TASKSD_LAUNCHER")
        _restart_launcher(rt)
        assert rt.client.launcher == "c"
        listed = {e["key"]: e for e in rt.client.request("list")["exits"]}
        assert listed[spec.key]["exit_code"] == 128 + signal.SIGTERM
        rt.client.request("ack", key=spec.key)
        assert not list((tmp / "state" / "run" / "exits").glob("*.json"))
    finally:
        teardown_runtime(rt)


def test_a_daemon_keeps_using_the_python_launcher_it_finds_running(tmp, cgroup_parent, monkeypatch):
    """A daemon upgraded to a build with the C launcher, on a host whose launcher (Python) kept running: it speaks
    that launcher's form, and tasks start."""
    monkeypatch.setenv("TASKSD_LAUNCHER", "python")
    old = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    old.open()
    old.close()
    monkeypatch.delenv("TASKSD_LAUNCHER")
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    try:
        assert rt.client.launcher == "python"
        spec = LaunchSpec(key="new.t.1", path="/bin/true", argv=("true",), env=(), cwd="/")
        spawn_spec(rt, spec)
        assert _exit_of(rt, spec.key)["exit_code"] == 0
        _ack(rt, spec.key)
    finally:
        teardown_runtime(rt)
