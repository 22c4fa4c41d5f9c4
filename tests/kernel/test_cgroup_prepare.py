"""The launcher makes a starting task's cgroup (Runtime.prepare_cgroup) while the daemon builds its directories.

Real launcher, real cgroups on this hybrid host. What must hold: the cgroup and its limits are the ones the
manager would have made itself, the daemon falls back to making it when the launcher cannot (an older launcher,
a removed parent), the launcher refuses directories outside the host's cgroup mounts, and a start that fails
before its spawn leaves no cgroup behind.
"""
from __future__ import annotations

import pytest

from isolation.cgroups import UNIFIED, CgroupLimits, limits_for
from isolation.drivers.base import StartError
from isolation.launcher_client import LauncherError
from tests.kernel.conftest import make_ctx, raw_task

pytestmark = pytest.mark.root

MIB = 1 << 20


def _read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def _no_local_create(monkeypatch, runtime) -> None:
    def refuse(*a, **k):
        raise AssertionError("the daemon made the cgroup itself: the launcher was expected to")
    monkeypatch.setattr(runtime.cgroups, "create", refuse)


def test_the_launcher_makes_the_cgroup_with_its_limits(runtime, monkeypatch):
    _no_local_create(monkeypatch, runtime)
    limits = limits_for(memory_mb=64, memory_max_mb=128, cpu_mhz=500, pids_limit=50)
    cg = runtime.prepare_cgroup("a.web", limits).result()
    assert not cg.existed
    assert set(cg.paths) == {UNIFIED, "memory", "cpu", "pids"}  # the hierarchies the manager's create joins
    assert all(d.is_dir() for d in cg.paths.values())
    assert int(_read(cg.paths["memory"] / "memory.limit_in_bytes")) == 128 * MIB
    assert int(_read(cg.paths["memory"] / "memory.soft_limit_in_bytes")) == 64 * MIB
    assert _read(cg.paths["cpu"] / "cpu.shares") == "500"
    assert _read(cg.paths["pids"] / "pids.max") == "50"
    assert cg.procs_files() == [str(cg.paths[h] / "cgroup.procs") for h in (UNIFIED, "cpu", "memory", "pids")]

    # Made again with other limits: it existed, and the launcher rewrote them.
    again = runtime.prepare_cgroup("a.web", CgroupLimits(pids_max=20)).result()
    assert again.existed
    assert _read(again.paths["pids"] / "pids.max") == "20"
    assert int(_read(again.paths["memory"] / "memory.limit_in_bytes")) > 1 << 60  # reset to the default
    again.remove()


def test_an_older_launcher_without_the_request_gets_the_cgroup_made_by_the_daemon(runtime, monkeypatch):
    """A launcher outlives daemon upgrades. One from before this request answers "unknown op" (a real reply from
    the real launcher here: the request goes out under a name it does not know)."""
    submit = runtime.client.submit
    monkeypatch.setattr(runtime.client, "submit",
                        lambda op, *a, **k: submit("cgroup-from-the-future" if op == "cgroup" else op, *a, **k))
    with pytest.raises(LauncherError, match="unknown op"):
        runtime.client.request("cgroup")
    cg = runtime.prepare_cgroup("old.t", CgroupLimits(pids_max=7)).result()
    assert _read(cg.paths["pids"] / "pids.max") == "7"
    cg.remove()


def test_a_removed_parent_is_made_again(runtime):
    runtime.cgroups.remove_parent()
    assert not any(p.exists() for p in runtime.cgroups.parent_paths.values())
    cg = runtime.prepare_cgroup("p.t", CgroupLimits(pids_max=9)).result()
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
