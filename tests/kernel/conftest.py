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


@pytest.fixture(params=["c", "python"])
def child_impl(request, monkeypatch) -> str:
    """Which launcher child sets tasks up: the C one (isolation/_spawn.c, the default) or the Python fallback
    (isolation/child.py, used where the extension is not built). Modules that test the child's work ask for
    both by an autouse fixture that takes this one, so the launcher starts with the choice in its environment."""
    monkeypatch.setenv("TASKSD_CHILD", request.param)
    return request.param


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
