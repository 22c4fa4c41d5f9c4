"""The C child cloned straight into the task's cgroup v2 directory (clone3 CLONE_INTO_CGROUP), on the real kernel.

On this hybrid machine the v2 tree has no controllers, but it is where tasks are tracked and killed, and a clone
into it works as on a pure v2 host; only the v1 hierarchies are still joined by writing cgroup.procs."""
from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest

from isolation import cgroups, childplan
from manifests.model import Resources
from tests.conftest import CGROUP_PREFIX
from tests.helpers import wait_for
from tests.kernel.conftest import make_ctx, raw_task, teardown_runtime

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not childplan.clone_into_cgroup_built(), reason="built without clone3 (not x86_64)"),
]


def v2_line(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))


@pytest.fixture
def v2_cgroup():
    layout = cgroups.detect()
    if layout.v2_mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    d = layout.own_dir(cgroups.UNIFIED) / f"{CGROUP_PREFIX}{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    d.rmdir()


@contextlib.contextmanager
def launched(monkeypatch, tmp, cgroup_parent, agent_config, clone_into: str):
    """A runtime whose launcher starts with TASKSD_CLONE_INTO_CGROUP=clone_into (read when it starts, so the
    runtime is made after the setenv), and its raw_exec driver; torn down completely after."""
    from isolation.drivers import make_drivers
    from isolation.runtime import Runtime

    monkeypatch.setenv("TASKSD_CHILD", "c")
    monkeypatch.setenv("TASKSD_CLONE_INTO_CGROUP", clone_into)
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent)
    rt.open()
    try:
        yield rt, make_drivers(rt, agent_config)["raw_exec"]
    finally:
        teardown_runtime(rt)


def test_a_child_cloned_into_a_cgroup_is_born_there_without_writing_its_pid(v2_cgroup):
    from isolation import _spawn

    procs = str(v2_cgroup / "cgroup.procs")
    r, w = os.pipe2(os.O_CLOEXEC)
    fd = os.open(v2_cgroup, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parent_v1 = [line for line in open("/proc/self/cgroup") if not line.startswith("0::")]
    # No ops at all: nothing in the child writes cgroup.procs, so only the clone can have put it there.
    pid = _spawn.spawn(0, w, 5, [], b"/bin/sleep", [b"sleep", b"100"], [], None, 0, fd)
    try:
        os.close(w)
        assert os.read(r, 4096) == b""  # exec'd: no failure report
        assert v2_line(pid) == "/" + str(v2_cgroup.relative_to(cgroups.detect().v2_mount))
        assert open(procs).read().split() == [str(pid)]
        # Only the v2 hierarchy: the v1 ones are the parent's, as after a plain clone.
        assert [line for line in open(f"/proc/{pid}/cgroup") if not line.startswith("0::")] == parent_v1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(fd)


def test_a_cgroup_that_is_not_v2_is_refused_by_the_clone(tmp):
    from isolation import _spawn

    r, w = os.pipe2(os.O_CLOEXEC)
    fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as e:
            _spawn.spawn(0, w, 5, [], b"/bin/true", [b"true"], [], None, 0, fd)
        assert e.value.errno not in (0, None)
    finally:
        for x in (r, w, fd):
            os.close(x)


@pytest.mark.parametrize("clone_into", ["1", "0"])
def test_tasks_land_in_every_cgroup_of_theirs_either_way(monkeypatch, tmp, cgroup_parent, agent_config, clone_into):
    with launched(monkeypatch, tmp, cgroup_parent, agent_config, clone_into) as (rt, d):
        h = d.start(make_ctx(agent_config, raw_task("/bin/sleep", "1000")))
        try:
            ping = rt.client.request("ping")
            assert ping["clone_into_cgroup"] is (clone_into == "1")
            # A new task's cgroup is made for it: cloned into whenever the way is on, never silently not.
            assert ping["cgroup_joins"] == ({"clone": 1, "pid": 0} if clone_into == "1" else {"clone": 0, "pid": 1})
            assert v2_line(h.pid).endswith("/" + h.cgroup)
            # Every hierarchy the task's cgroup was made in (v2, and on hybrid hosts the v1 ones that limit it).
            made = [p for p in rt.cgroups.open(h.cgroup).procs_files() if os.path.exists(p)]
            assert len(made) >= 2 if cgroups.detect().v1_mounts else len(made) >= 1
            for procs in made:
                assert str(h.pid) in open(procs).read().split(), procs
        finally:
            d.stop(h, "SIGKILL", 5)
            d.destroy(h)
        wait_for(lambda: not os.path.exists(f"/proc/{h.pid}"), what="task gone")


def born_alive_in_killed_cgroup(d) -> bool:
    """The kernel's answer, asked directly: does a child cloned into a cgroup that was once killed live?"""
    from isolation import _spawn

    (d / "cgroup.kill").write_text("1")
    r, w = os.pipe2(os.O_CLOEXEC)
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pid = _spawn.spawn(0, w, 5, [], b"/bin/true", [b"true"], [], None, 0, fd)
    finally:
        os.close(w)
        os.close(fd)
    os.read(r, 4096)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return not os.WIFSIGNALED(status)


@pytest.mark.parametrize("edited", [False, True], ids=["same-limits", "new-limits"])
@pytest.mark.parametrize("clone_into", ["1", "0"])
def test_a_restart_into_its_killed_cgroup_runs(monkeypatch, tmp, cgroup_parent, agent_config, v2_cgroup,
                                                clone_into, edited):
    # Some kernels (6.18 here) SIGKILL a child cloned into a cgroup that was ever sent cgroup.kill; a stop sends
    # it, and a restart reuses the cgroup. The launcher probes for that once and then joins such a cgroup by pid.
    with launched(monkeypatch, tmp, cgroup_parent, agent_config, clone_into) as (rt, d):
        # The background sleep outlives the main process, so the stop really sends the cgroup cgroup.kill (an
        # empty cgroup is not sent it).
        task = raw_task("/bin/sh", "-c", "sleep 1000 & exec sleep 1000")
        ctx = make_ctx(agent_config, task)
        h = d.start(ctx)
        wait_for(lambda: len(rt.cgroups.open(h.cgroup).pids()) == 2, what="both sleeps")
        d.stop(h, "SIGKILL", 5)
        d.destroy(h, keep_identity=True)  # kept for the restart
        if edited:  # new limits: the launcher is asked for the cgroup again, and finds it there
            ctx = make_ctx(agent_config, raw_task("/bin/sh", "-c", "sleep 1000 & exec sleep 1000",
                                                  resources=Resources(memory=64)))
        h2 = d.start(ctx)
        try:
            assert d.wait(h2, 0.3) is None  # still running: not killed at birth
            assert v2_line(h2.pid).endswith("/" + h2.cgroup)
            ping = rt.client.request("ping")
            if clone_into == "1":
                ok = born_alive_in_killed_cgroup(v2_cgroup)
                assert ping["clone_into_killed_cgroup"] is ok
                assert ping["cgroup_joins"] == {"clone": 2, "pid": 0} if ok else {"clone": 1, "pid": 1}
            else:
                assert ping["clone_into_killed_cgroup"] is None  # never asked
        finally:
            d.stop(h2, "SIGKILL", 5)
            d.destroy(h2)
