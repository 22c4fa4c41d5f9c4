"""Fixtures for real-kernel tests: a Runtime (launcher + cgroups) in a temp state dir, torn down completely."""
from __future__ import annotations

import pytest

from isolation.drivers import make_drivers
from isolation.drivers.base import TaskContext
from isolation.runtime import Runtime
from isolation.taskdir import alloc_id_for, remove_alloc
from manifests.agent_config import AgentConfig, RawExecPlugin
from manifests.model import Group, Job, RawExecConfig, Task


@pytest.fixture
def agent_config() -> AgentConfig:
    return AgentConfig(raw_exec=RawExecPlugin(enabled=True), max_kill_timeout=30.0)


@pytest.fixture(params=["c", "py-launcher", "python"])
def child_impl(request, monkeypatch) -> str:
    """Which launcher and child set tasks up, returning the child's kind:
    - "c": the C launcher (isolation/launcher.c) with the C child (isolation/spawn_child.h), the default;
    - "py-launcher": the Python launcher (isolation/launcher.py) with the C child through isolation._spawn, what a
      host gets where the extension was built but not the launcher (and what an upgrade finds still running);
    - "python": the Python launcher with the Python child (isolation/child.py), where nothing was compiled.
    Modules that test the child's work ask for all three by an autouse fixture that takes this one, so the
    launcher starts with the choice in its environment."""
    if request.param == "py-launcher":
        monkeypatch.setenv("TASKSD_LAUNCHER", "python")
    monkeypatch.setenv("TASKSD_CHILD", "python" if request.param == "python" else "c")
    return "python" if request.param == "python" else "c"


@pytest.fixture
def runtime(tmp, cgroup_parent):
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    yield rt
    teardown_runtime(rt)


def teardown_runtime(rt: Runtime) -> None:
    for name in rt.cgroups.names():
        cg = rt.cgroups.open(name)
        if cg is not None:
            cg.kill()
            cg.remove()
    if rt.client._sock is None:
        rt.client.connect(start=False)
    rt.shutdown_launcher()
    if rt.alloc_root.exists():
        for d in rt.alloc_root.iterdir():
            remove_alloc(d)
    rt.cgroups.remove_parent()


def crash_launcher(rt: Runtime) -> int:
    """SIGKILL the launcher `rt` started (a crash, not a shutdown) and reap it: it is the test's child. Returns
    its pid."""
    import os
    import signal

    pid = rt.client.launcher_pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return pid


def exit_queue(rt: Runtime):
    """Every exit `rt` reports from now on, in order, as (handle, result)."""
    import queue

    q: queue.Queue = queue.Queue()
    rt.on_exit = lambda h, r: q.put((h, r))
    return q


@pytest.fixture
def drivers(runtime, agent_config):
    return make_drivers(runtime, agent_config)


def make_ctx(config: AgentConfig, task: Task, job: str = "j", group: str = "g", index: int = 0,
             network: str = "host", **kw) -> TaskContext:
    from manifests.model import Network

    grp = Group(name=group, tasks=(task,), network=Network(mode=network))
    j = Job(name=job, groups=(grp,))
    return TaskContext(job=j, group=grp, task=task, index=index, alloc_id=alloc_id_for(job, group, index),
                       config=config, **kw)


def raw_task(command: str, *args: str, name: str = "t", **kw) -> Task:
    cfg_keys = {"work_dir", "oom_score_adj", "pids_limit", "denied_envvars"}
    cfg = RawExecConfig(command=command, args=tuple(args), **{k: v for k, v in kw.items() if k in cfg_keys})
    return Task(name=name, driver="raw_exec", config=cfg, **{k: v for k, v in kw.items() if k not in cfg_keys})


def spawn_spec(runtime: Runtime, spec, timeout: float = 60.0) -> dict:
    """Ask the launcher to start `spec` as it is (no task dir, no cgroup), in the request form of whichever launcher
    serves `runtime` (the C one takes compiled plans, the Python one LaunchSpecs)."""
    body = runtime.spawn_body(spec, spec.to_dict(), fresh=False)
    return runtime.client.request("spawn", body=body, timeout=timeout)


def spawn_line(runtime: Runtime, spec, rid: int) -> str:
    """spawn_spec's request as one JSON line with id `rid`, for tests that write to the socket themselves."""
    return '{"id":%d,' % rid + runtime.spawn_body(spec, spec.to_dict(), fresh=False).decode().rstrip("\n")[1:]


def exec_line(runtime: Runtime, spec, target_pid: int, rid: int, nfds: int) -> str:
    """An exec request as one JSON line, in the form of whichever launcher serves `runtime`."""
    import json

    if runtime.client.launcher == "c":
        from isolation import childplan

        req = childplan.c_launcher_request("exec", spec, runtime.client.slots, enter=[], target_pid=target_pid,
                                           nfds=nfds)
    else:
        req = {"op": "exec", "spec": spec.to_dict(), "target_pid": target_pid, "nfds": nfds}
    return json.dumps({"id": rid, **req})
