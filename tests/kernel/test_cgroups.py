"""isolation.cgroups against the real kernel of this (hybrid) machine.

Every cgroup is created below the test process's own cgroups under a unique "tasksd-test-*" parent and removed
again (the autouse leak check fails the test otherwise). Pure v1 is exercised on the same kernel by handing the
manager a layout without the v2 mount (the v1 controllers here are real, only the v2 tree is left out), and pure v2
by a layout with only the v2 tree (real membership, events, cgroup.kill and rmdir; it has no controllers here, so v2
limit files are checked on a fake tree in tests/unit/test_cgroups_fake.py).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isolation.cgroups import (
    UNIFIED,
    CgroupError,
    CgroupLimits,
    CgroupManager,
    HybridTaskCgroup,
    TaskCgroup,
    V1TaskCgroup,
    V2TaskCgroup,
    detect,
    limits_for,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.root
MIB = 1024 * 1024


def _read(path: Path) -> str:
    return path.read_text().strip()


def _alive(pid: int) -> bool:
    """Running (not a zombie and not gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _spawn(procs_files: list[str], argv: list[str], **kw) -> subprocess.Popen:
    """Start argv inside the cgroup the way the launcher's child does: write "0" to every procs file before exec.
    (preexec_fn is acceptable in a test; production code forks from a single-threaded launcher instead.)"""

    def join() -> None:
        for procs in procs_files:
            with open(procs, "w") as f:
                f.write("0")

    return subprocess.Popen(argv, preexec_fn=join, **kw)


def _cleanup(mgr: CgroupManager) -> None:
    for name in mgr.names():
        cg = mgr.open(name)
        if cg is not None:
            cg.kill()
            cg.remove()
    mgr.remove_parent()


@pytest.fixture
def layout():
    lay = detect()
    if lay.mode != "hybrid":
        pytest.skip(f"these tests describe the hybrid machines of this project, this host is {lay.mode}")
    return lay


@pytest.fixture
def mgr(layout, cgroup_parent):
    m = CgroupManager(layout, cgroup_parent)
    m.ensure_parent()
    try:
        yield m
    finally:
        _cleanup(m)


@pytest.fixture
def v1_mgr(layout, cgroup_parent):
    """A pure-v1 view of this host: same kernel, the v2 tree left out."""
    lay = dataclasses.replace(layout, mode="v1", v2_mount=None, v2_controllers=frozenset(),
                              own={h: p for h, p in layout.own.items() if h != UNIFIED})
    m = CgroupManager(lay, cgroup_parent)
    m.ensure_parent()
    try:
        yield m
    finally:
        _cleanup(m)


@pytest.fixture
def v2_mgr(layout, cgroup_parent):
    """A pure-v2 view of this host: only the v2 tree, which has no controllers here, so only membership, events,
    cgroup.kill and removal are real; v2 limit files are covered by the fake tree in tests/unit."""
    lay = dataclasses.replace(layout, mode="v2", v1_mounts={}, own={UNIFIED: layout.own[UNIFIED]})
    m = CgroupManager(lay, cgroup_parent)
    m.ensure_parent()
    try:
        yield m
    finally:
        _cleanup(m)


def _view(request, view: str) -> CgroupManager:
    return request.getfixturevalue({"hybrid": "mgr", "v1": "v1_mgr", "v2": "v2_mgr"}[view])


def _own_memory_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return path
    raise AssertionError("no memory line in /proc/self/cgroup")


def test_detect_reads_this_hybrid_host(layout):
    assert layout.v2_mount == Path("/sys/fs/cgroup/unified")
    assert {"memory", "cpu", "cpuacct", "cpuset", "pids", "freezer"} <= set(layout.v1_mounts)
    assert layout.own["memory"] == _own_memory_cgroup()
    assert layout.own[UNIFIED] == "/"
    assert not layout.v2_controllers & {"memory", "cpu", "pids", "cpuset"}


def test_parent_is_created_below_own_cgroups(mgr, layout, cgroup_parent):
    mem_parent = layout.v1_mounts["memory"] / layout.own["memory"].lstrip("/") / cgroup_parent
    assert mgr.parent_paths["memory"] == mem_parent
    assert mgr.parent_paths[UNIFIED] == Path("/sys/fs/cgroup/unified") / cgroup_parent
    for p in mgr.parent_paths.values():
        assert p.is_dir()
    # A v1 cpuset refuses members until cpus and mems are set: the parent got the root's values.
    cpuset = mgr.parent_paths["cpuset"]
    assert _read(cpuset / "cpuset.cpus") == _read(cpuset.parent / "cpuset.cpus")
    assert _read(cpuset / "cpuset.mems") == _read(cpuset.parent / "cpuset.mems")


def test_check_reports_hybrid_without_failing(mgr):
    problems = mgr.diagnose()
    assert any("has none of the task controllers (hybrid host)" in p.message for p in problems)
    assert not [p for p in problems if p.fatal]
    assert any("hybrid" in s for s in mgr.check())
    # Not fatal: a task cgroup can be created anyway.
    assert isinstance(mgr.create("t", CgroupLimits()), HybridTaskCgroup)


def test_limits_are_written_and_reset(mgr):
    limits = limits_for(memory_mb=64, memory_max_mb=128, cpu_mhz=500, cores_cpus="0", pids_limit=50)
    cg = mgr.create("a.web", limits)
    mem, cpu, cpuset, pids = (cg.paths[h] for h in ("memory", "cpu", "cpuset", "pids"))
    assert int(_read(mem / "memory.limit_in_bytes")) == 128 * MIB
    assert int(_read(mem / "memory.soft_limit_in_bytes")) == 64 * MIB
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert int(_read(mem / "memory.memsw.limit_in_bytes")) == 128 * MIB
    assert _read(cpu / "cpu.shares") == "500"
    assert _read(cpuset / "cpuset.cpus") == "0"
    assert _read(cpuset / "cpuset.mems") == _read(cpuset.parent / "cpuset.mems")
    assert _read(pids / "pids.max") == "50"

    # Shrinking below the current limit and growing back both respect memsw >= limit.
    cg.update(CgroupLimits(memory_max=48 * MIB))
    assert int(_read(mem / "memory.limit_in_bytes")) == 48 * MIB
    cg.update(CgroupLimits())
    assert int(_read(mem / "memory.limit_in_bytes")) > 1 << 60
    assert int(_read(mem / "memory.soft_limit_in_bytes")) > 1 << 60
    assert _read(cpu / "cpu.shares") == "1024"
    assert _read(cpuset / "cpuset.cpus") == _read(cpuset.parent / "cpuset.cpus")
    assert _read(pids / "pids.max") == "max"


def test_hybrid_task_joins_only_hierarchies_that_limit_count_or_kill_it(mgr):
    """On this hybrid host the v2 tree gives usage, freeze and kill: no v1 cpuacct or freezer directory per task,
    and a cpuset directory only for a task that asks for cores. open() still looks everywhere, so a leftover
    directory in a hierarchy the task no longer joins is found and removed."""
    plain = mgr.create("plain.t", limits_for(memory_mb=64, cpu_mhz=100, pids_limit=20))
    assert set(plain.paths) == {UNIFIED, "memory", "cpu", "pids"}
    assert all(d.is_dir() for d in plain.paths.values())
    assert not (mgr.parent_paths["freezer"] / "plain.t").exists()
    assert not (mgr.parent_paths["cpuset"] / "plain.t").exists()
    pinned = mgr.create("pinned.t", limits_for(memory_mb=64, cpu_mhz=100, cores_cpus="0", pids_limit=20))
    assert set(pinned.paths) == {UNIFIED, "memory", "cpu", "cpuset", "pids"}
    assert _read(pinned.paths["cpuset"] / "cpuset.cpus") == "0"

    stray = mgr.parent_paths["freezer"] / "plain.t"
    stray.mkdir()
    opened = mgr.open("plain.t")
    assert opened is not None and opened.paths["freezer"] == stray
    opened.remove()
    assert not stray.exists() and not any(d.exists() for d in plain.paths.values())
    pinned.remove()

    # Half removed (kill -9 of tasksd between the v2 rmdir, which goes first, and the v1 ones): still found, and
    # every cgroup call a recovering daemon makes on it works.
    half = mgr.create("half.t", CgroupLimits())
    os.rmdir(half.paths[UNIFIED])
    opened = mgr.open("half.t")
    assert opened is not None and not opened.populated() and opened.pids() == set()
    opened.kill()
    opened.stats()
    opened.remove()
    assert mgr.open("half.t") is None and mgr.names() == []


def test_create_is_idempotent_and_open_finds_it(mgr):
    first = mgr.create("x.t", CgroupLimits(pids_max=10))
    again = mgr.create("x.t", CgroupLimits(pids_max=20))
    assert again.paths == first.paths
    assert _read(first.paths["pids"] / "pids.max") == "20"
    assert mgr.names() == ["x.t"]
    opened = mgr.open("x.t")
    # open() names every hierarchy (it cannot know which ones the task joined); the ones made are the same.
    assert opened is not None and {h: opened.paths[h] for h in first.paths} == first.paths
    assert mgr.open("missing") is None
    assert mgr.remove_parent() is False  # not empty yet


def test_member_shows_up_and_populated_flips(mgr):
    cg = mgr.create("m.t", CgroupLimits())
    assert not cg.populated()
    p = _spawn(cg.procs_files(), ["sleep", "600"])
    try:
        wait_for(lambda: p.pid in cg.pids(), what="pid in cgroup")
        assert cg.populated()
        # The launcher waits for "populated 0" with POLLPRI on this file rather than polling.
        fd = os.open(cg.events_file(), os.O_RDONLY)
        try:
            os.read(fd, 4096)
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            p.kill()
            assert poller.poll(10_000), "no POLLPRI on cgroup.events after the only member died"
        finally:
            os.close(fd)
    finally:
        p.kill()
        p.wait()
    wait_for(lambda: not cg.populated(), what="populated 0")
    assert cg.pids() == set()


def _double_fork_script() -> str:
    return textwrap.dedent("""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "600"])
            os._exit(0)
        r = os.wait()
        # The grandchild is an orphan now; report its pid through the cgroup's member list.
        sys.stdout.write("ok\\n")
        sys.stdout.flush()
        os.execvp("sleep", ["sleep", "600"])
    """)


@pytest.mark.parametrize("view", ["hybrid", "v1", "v2"])
def test_kill_reaches_a_double_forked_grandchild(request, view):
    cg = _view(request, view).create("k.t", CgroupLimits())
    assert isinstance(cg, {"hybrid": HybridTaskCgroup, "v1": V1TaskCgroup, "v2": V2TaskCgroup}[view])
    p = _spawn(cg.procs_files(), [sys.executable, "-c", _double_fork_script()], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ok\n"
        members = wait_for(lambda: (cg.pids() if len(cg.pids()) == 2 else None), what="two members")
        (grandchild,) = members - {p.pid}
        assert _alive(grandchild)
        cg.kill()
        assert cg.pids() == set()
        assert not cg.populated()
        assert not _alive(grandchild)
        assert p.wait(10) == -signal.SIGKILL
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    cg.remove()


def test_kill_on_hybrid_reaches_a_member_of_the_v1_dirs_only(mgr):
    cg = mgr.create("v1only.t", CgroupLimits())
    v1_procs = [f for f in cg.procs_files() if not f.startswith(str(cg.paths[UNIFIED]))]
    p = _spawn(v1_procs, ["sleep", "600"])
    try:
        wait_for(lambda: p.pid in cg.pids(), what="pid in v1 cgroups")
        assert not cg.populated()  # the v2 directory never saw it
        cg.kill()
        assert p.wait(10) == -signal.SIGKILL
        assert cg.pids() == set()
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("view", ["hybrid", "v1"])
def test_oom_kill_is_counted(request, view):
    cg = _view(request, view).create("oom.t", limits_for(memory_mb=32))
    assert cg.oom_kills() == 0
    p = _spawn(cg.procs_files(), [sys.executable, "-c", "b = bytearray(100 * 1024 * 1024)"],
               stderr=subprocess.DEVNULL)
    assert p.wait(30) == -signal.SIGKILL
    assert cg.oom_kills() >= 1
    peak = cg.stats().memory_peak
    assert peak is not None and peak <= 32 * MIB


def test_pids_max_stops_a_fork_loop(mgr):
    cg = mgr.create("fork.t", CgroupLimits(pids_max=10))
    script = textwrap.dedent("""
        import os
        r, w = os.pipe()
        kids, err = [], None
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError as e:
                err = e.errno
                break
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # block until the parent closes the pipe
                os._exit(0)
            kids.append(pid)
        print(len(kids), err, flush=True)
        os.close(w)
        for k in kids:
            os.waitpid(k, 0)
    """)
    p = _spawn(cg.procs_files(), [sys.executable, "-c", script], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    forked, err = out.split()
    assert int(forked) == 9  # the parent is the 10th task
    assert int(err) == errno.EAGAIN


def test_stats_reflect_a_running_member(mgr):
    cg = mgr.create("s.t", CgroupLimits())
    script = "b = bytearray(20 * 1024 * 1024); sum(range(2_000_000)); print('ready', flush=True); input()"
    p = _spawn(cg.procs_files(), [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        s = cg.stats()
        assert s.pids_current == 1
        assert s.memory_current is not None and s.memory_current >= 20 * MIB
        assert s.memory_peak is not None and s.memory_peak >= s.memory_current
        assert s.cpu_usage_ns is not None and s.cpu_usage_ns > 0
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


@pytest.mark.parametrize("view", ["hybrid", "v1", "v2"])
def test_remove_cleans_every_hierarchy(request, view):
    m = _view(request, view)
    limits = CgroupLimits() if view == "v2" else limits_for(memory_mb=64, pids_limit=20)
    cg: TaskCgroup = m.create("r.t", limits)
    p = _spawn(cg.procs_files(), ["sleep", "600"])
    wait_for(lambda: p.pid in cg.pids(), what="member")
    cg.kill()
    p.wait()
    cg.remove()
    assert not [d for d in cg.paths.values() if d.exists()]
    cg.remove()  # idempotent
    assert m.names() == []
    assert m.remove_parent() is True
    assert not [d for d in m.parent_paths.values() if d.exists()]


def test_v2_limit_without_controller_is_refused_and_leaves_nothing(v2_mgr):
    with pytest.raises(CgroupError, match="memory controller is not enabled in .*cgroup.subtree_control"):
        v2_mgr.create("nolimit.t", CgroupLimits(memory_max=32 * MIB))
    assert v2_mgr.names() == []


# ---- the migration-lock warmer -------------------------------------------------------------------------------
def test_the_warmer_writes_into_our_own_cgroup_and_moves_nothing():
    """The warm-up writes "0" into the cgroup.procs of the cgroup this process is in: the kernel takes its
    migration lock for writing and finds nothing to move. Membership in every hierarchy must be unchanged, the
    writes must stop once the hold after the last poke has passed, and nothing may run while idle. (How much it
    saves is a latency, measured by bench/converge.py, not asserted here.)"""
    from isolation.cgroups.warm import MigrationWarmer, own_procs_file

    procs = own_procs_file()
    assert procs is not None and str(os.getpid()) in Path(procs).read_text().split()
    before = Path("/proc/self/cgroup").read_text()
    warmer = MigrationWarmer(procs, period=0.001, hold=0.05)
    warmer.start()
    try:
        assert warmer.writes == 0
        warmer.poke()
        wait_for(lambda: warmer.writes >= 3, timeout=10, what="no-op migrations after a poke")
        # The hold runs out: the count settles, and stays put with nobody poking.
        settled = wait_for(lambda: (n := warmer.writes) == _writes_after(warmer, 0.06) and n, timeout=10,
                           what="the warmer going idle")
        assert _writes_after(warmer, 0.1) == settled
    finally:
        warmer.close()
    assert Path("/proc/self/cgroup").read_text() == before
    assert str(os.getpid()) in Path(procs).read_text().split()


def _writes_after(warmer, seconds: float) -> int:
    import time

    time.sleep(seconds)  # a window of observation, not a wait for a condition: nothing must happen in it
    return warmer.writes


def test_a_warmer_that_cannot_write_turns_itself_off(tmp):
    """A cgroup removed under it, EBUSY on an inner v2 cgroup: starts simply go on paying the kernel's wait."""
    from isolation.cgroups.warm import MigrationWarmer

    warmer = MigrationWarmer(str(tmp / "no-such-cgroup" / "cgroup.procs"), period=0.001, hold=1.0)
    warmer.start()
    try:
        warmer.poke()
        wait_for(lambda: warmer._broken is not None, timeout=10, what="the warmer noticing it cannot write")
        assert warmer.writes == 0 and "no-such-cgroup" in warmer._broken
        warmer.poke()  # a no-op now, and no exception
    finally:
        warmer.close()
    assert warmer._thread is None


def test_recreating_a_cgroup_with_the_same_limits_skips_the_writes_and_new_limits_are_written(cgroup_parent):
    """A restart reuses the task's cgroup; rewriting identical limits was ~0.2 ms of each restart. Anything
    else (other limits, a cgroup made anew, a forgotten one) is written."""
    layout = detect()
    if layout.mode == "v2":
        pytest.skip("the v2 tree here has no controllers: limit files are checked on the fake tree")
    mgr = CgroupManager(layout, cgroup_parent)
    mgr.ensure_parent()
    try:
        a, b = limits_for(memory_mb=64, pids_limit=50), limits_for(memory_mb=96, pids_limit=50)
        cg = mgr.create("c.t", a)
        pids_max = cg.paths["pids"] / "pids.max"
        pids_max.write_text("77")  # a mark: rewritten only when the limits are written again
        assert mgr.create("c.t", a).existed and pids_max.read_text().strip() == "77"
        mgr.create("c.t", b)
        assert pids_max.read_text().strip() == "50"
        assert int((cg.paths["memory"] / "memory.limit_in_bytes").read_text()) == 96 * MIB
        pids_max.write_text("77")
        mgr.forget("c.t")
        mgr.create("c.t", b)
        assert pids_max.read_text().strip() == "50"
    finally:
        for name in mgr.names():
            mgr.open(name).remove()
        mgr.remove_parent()
