"""isolation.cgroups against fake cgroup trees in a temp dir: which files get which values on pure v2 and pure v1.

This machine is hybrid, so pure v2 and pure v1 hosts cannot run here. The fakes stand in for the kernel: a fake
/proc (mountinfo and cgroup pointing into the temp dir) and pre-created directories holding the interface files the
kernel would show (the kernel populates a new cgroup directory; a plain mkdir does not). The kernel's side effects
(EBUSY, controllers appearing in children) are not simulated, only the files the code reads and writes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isolation.cgroups import v1, v2
from isolation.cgroups import (
    UNIFIED,
    CgroupError,
    CgroupLimits,
    CgroupManager,
    V1TaskCgroup,
    V2TaskCgroup,
    cpu_shares,
    cpu_weight,
    detect,
    limits_for,
)

MIB = 1024 * 1024
UNLIMITED = "9223372036854771712"

V2_FILES = {
    "cgroup.procs": "", "cgroup.controllers": "cpuset cpu io memory pids", "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "", "cgroup.freeze": "0",
    "memory.max": "max", "memory.low": "0", "memory.swap.max": "max", "memory.events": "low 0\nhigh 0\nmax 0\n"
    "oom 0\noom_kill 0\noom_group_kill 0\n", "memory.current": "0", "memory.peak": "0",
    "cpu.weight": "100", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "cpuset.cpus": "", "cpuset.mems": "", "pids.max": "max", "pids.current": "0",
}
V1_FILES = {
    "memory": {"cgroup.procs": "", "memory.limit_in_bytes": UNLIMITED, "memory.memsw.limit_in_bytes": UNLIMITED,
               "memory.soft_limit_in_bytes": UNLIMITED, "memory.usage_in_bytes": "0",
               "memory.max_usage_in_bytes": "0", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "cpu,cpuacct": {"cgroup.procs": "", "cpu.shares": "1024", "cpuacct.usage": "0"},
    "cpuset": {"cgroup.procs": "", "cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"cgroup.procs": "", "pids.max": "max", "pids.current": "0"},
    "freezer": {"cgroup.procs": "", "freezer.state": "THAWED"},
}


def _mkcg(d: Path, files: dict[str, str]) -> Path:
    """A directory as the kernel would show it on mkdir."""
    d.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (d / name).write_text(content)
    return d


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def _changes(root: Path, before: dict[str, str]) -> dict[str, str]:
    after = _snapshot(root)
    return {k: v for k, v in after.items() if before.get(k) != v}


def _fake_proc(tmp: Path, mountinfo: list[str], cgroup: list[str]) -> Path:
    proc = tmp / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    (proc / "self" / "cgroup").write_text("\n".join(cgroup) + "\n")
    return proc


# -- pure v2 ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def v2_tree(tmp: Path):
    """systemd-style pure v2 host; the daemon runs in /system.slice/tasksd.service, which holds a process."""
    root = tmp / "cg2"
    _mkcg(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids", "cgroup.subtree_control": "",
                 "cgroup.procs": "1\n"})
    _mkcg(root / "system.slice", {"cgroup.controllers": "cpu io memory pids", "cgroup.subtree_control": "",
                                  "cgroup.procs": ""})
    own = _mkcg(root / "system.slice/tasksd.service",
                {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": "", "cgroup.procs": "4242\n"})
    proc = _fake_proc(tmp, [f"30 23 0:26 / {root} rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate"],
                      ["0::/system.slice/tasksd.service"])
    return root, own, proc


def test_detect_pure_v2(v2_tree):
    root, _, proc = v2_tree
    layout = detect(proc_root=proc)
    assert layout.mode == "v2"
    assert layout.v2_mount == root
    assert layout.v1_mounts == {}
    assert layout.own == {UNIFIED: "/system.slice/tasksd.service"}
    assert layout.v2_controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}


def test_v2_check_names_undelegated_controllers_and_internal_processes(v2_tree):
    root, own, proc = v2_tree
    problems = CgroupManager(detect(proc_root=proc), "tasksd").diagnose()
    messages = [p.message for p in problems]
    assert (f"cpuset controller is not enabled in {root / 'system.slice/cgroup.subtree_control'} "
            f"(not delegated to {own})") in messages
    assert any("holds processes" in m and "move_self_to_leaf" in m for m in messages)
    assert not [p for p in problems if p.fatal]


def test_v2_check_missing_memory_is_fatal(v2_tree):
    root, _, proc = v2_tree
    (root / "cgroup.controllers").write_text("cpu pids")
    problems = CgroupManager(detect(proc_root=proc), "/tasksd").diagnose()
    assert [p.message for p in problems if p.fatal] == [
        f"memory controller is not available in {root / 'cgroup.controllers'}"]


def test_v2_move_self_to_leaf_then_parent_and_task_writes(v2_tree):
    root, own, proc = v2_tree
    _mkcg(own / "supervisor", {"cgroup.procs": ""})
    _mkcg(own / "tasksd", {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": "",
                           "cgroup.procs": ""})
    _mkcg(own / "tasksd/abc.web", V2_FILES)
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    before = _snapshot(root)

    assert mgr.move_self_to_leaf() == own / "supervisor"
    mgr.ensure_parent()
    cg = mgr.create("abc.web", limits_for(memory_mb=256, memory_max_mb=512, cpu_mhz=1000, cores_cpus=[1],
                                          pids_limit=100))

    assert isinstance(cg, V2TaskCgroup)
    rel = "system.slice/tasksd.service"
    assert _changes(root, before) == {
        f"{rel}/supervisor/cgroup.procs": str(os.getpid()),
        f"{rel}/cgroup.subtree_control": "+cpu +memory +pids",
        f"{rel}/tasksd/cgroup.subtree_control": "+cpu +memory +pids",
        f"{rel}/tasksd/abc.web/memory.max": str(512 * MIB),
        f"{rel}/tasksd/abc.web/memory.low": str(256 * MIB),
        f"{rel}/tasksd/abc.web/memory.swap.max": "0",
        f"{rel}/tasksd/abc.web/cpu.weight": "39",
        f"{rel}/tasksd/abc.web/cpuset.cpus": "1",
        f"{rel}/tasksd/abc.web/pids.max": "100",
    }
    assert cg.procs_files() == [str(own / "tasksd/abc.web/cgroup.procs")]
    assert cg.events_file() == str(own / "tasksd/abc.web/cgroup.events")


def test_v2_reused_cgroup_gets_defaults_back(v2_tree):
    root, own, proc = v2_tree
    task = _mkcg(own / "tasksd/t", V2_FILES)
    for name, value in {"memory.max": "1000", "memory.low": "10", "memory.swap.max": "0", "cpu.weight": "7",
                        "cpuset.cpus": "0", "pids.max": "5"}.items():
        (task / name).write_text(value)
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    mgr.create("t", CgroupLimits())
    assert {n: (task / n).read_text() for n in ("memory.max", "memory.low", "memory.swap.max", "cpu.weight",
                                                "cpuset.cpus", "pids.max")} == {
        "memory.max": "max", "memory.low": "0", "memory.swap.max": "max", "cpu.weight": "100",
        "cpuset.cpus": "", "pids.max": "max"}


def test_v2_fresh_cgroup_gets_only_the_limits_that_differ_from_the_kernel_defaults(tmp: Path):
    """A directory made just now holds the kernel's defaults: a start writes only real limits (swap off with a
    hard limit). `fresh` is what CgroupManager.create passes when it made every directory itself."""
    d = _mkcg(tmp / "fresh", V2_FILES)
    before = _snapshot(tmp)
    v2.write_limits(d, limits_for(memory_mb=256, memory_max_mb=None, cpu_mhz=100, cores_cpus=None,
                                  pids_limit=None), fresh=True)
    assert _changes(tmp, before) == {"fresh/memory.max": str(256 * MIB), "fresh/memory.swap.max": "0",
                                     "fresh/cpu.weight": str(cpu_weight(cpu_shares(100)))}
    d2 = _mkcg(tmp / "fresh2", V2_FILES)
    before = _snapshot(tmp)
    v2.write_limits(d2, CgroupLimits(), fresh=True)
    assert _changes(tmp, before) == {}


def test_v2_fresh_limit_without_its_controller_still_says_where_to_enable_it(tmp: Path):
    d = _mkcg(tmp / "p" / "t", {k: v for k, v in V2_FILES.items() if not k.startswith("pids.")})
    with pytest.raises(CgroupError, match=r"pids controller is not enabled in .*/p/cgroup.subtree_control"):
        v2.write_limits(d, CgroupLimits(pids_max=10), fresh=True)
    # Without swap accounting there is no memory.swap.max: nothing to turn off, not an error.
    d2 = _mkcg(tmp / "noswap", {k: v for k, v in V2_FILES.items() if k != "memory.swap.max"})
    v2.write_limits(d2, CgroupLimits(memory_max=MIB), fresh=True)
    assert (d2 / "memory.max").read_text() == str(MIB) and not (d2 / "memory.swap.max").exists()


def test_v1_fresh_cgroup_gets_only_the_limits_that_differ_from_the_kernel_defaults(tmp: Path):
    paths = {c: _mkcg(tmp / c, files) for c, files in V1_FILES.items() if c in ("memory", "pids")}
    paths["cpu"] = _mkcg(tmp / "cpu", V1_FILES["cpu,cpuacct"])
    before = _snapshot(tmp)
    v1.write_limits(paths, limits_for(memory_mb=64, memory_max_mb=None, cpu_mhz=1024, cores_cpus=None,
                                      pids_limit=None), fresh=True)
    # 1024 MHz is the default 1024 shares; unset pids and soft limits stay at the kernel's "unlimited".
    assert _changes(tmp, before) == {"memory/memory.limit_in_bytes": str(64 * MIB),
                                     "memory/memory.memsw.limit_in_bytes": str(64 * MIB)}
    (paths["memory"] / "memory.memsw.limit_in_bytes").unlink()  # no swap accounting: the file is absent
    v1.write_limits(paths, CgroupLimits(memory_max=32 * MIB, memory_low=MIB, pids_max=7), fresh=True)
    assert (paths["memory"] / "memory.limit_in_bytes").read_text() == str(32 * MIB)
    assert (paths["memory"] / "memory.soft_limit_in_bytes").read_text() == str(MIB)
    assert (paths["pids"] / "pids.max").read_text() == "7"


def test_v2_limit_without_its_controller_says_where_to_enable_it(v2_tree):
    _, own, proc = v2_tree
    files = {k: v for k, v in V2_FILES.items() if not k.startswith("pids.")}
    _mkcg(own / "tasksd/t", files)
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    with pytest.raises(CgroupError, match=r"pids controller is not enabled in .*/tasksd/cgroup.subtree_control"):
        mgr.create("t", CgroupLimits(pids_max=10))


def test_v2_restarted_daemon_in_the_leaf_finds_the_same_parent(v2_tree, tmp: Path):
    root, own, _ = v2_tree
    proc = _fake_proc(tmp / "restarted", [f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw"],
                      ["0::/system.slice/tasksd.service/supervisor"])
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    assert mgr.parent_paths == {UNIFIED: own / "tasksd"}


def test_v2_absolute_parent_lives_below_the_root(v2_tree):
    root, _, proc = v2_tree
    _mkcg(root / "tasksd-x", {"cgroup.controllers": "cpuset cpu memory pids", "cgroup.subtree_control": "",
                              "cgroup.procs": ""})
    mgr = CgroupManager(detect(proc_root=proc), "/tasksd-x")
    assert mgr.move_self_to_leaf() is None
    before = _snapshot(root)
    mgr.ensure_parent()
    assert _changes(root, before) == {
        "cgroup.subtree_control": "+cpu +cpuset +memory +pids",
        "tasksd-x/cgroup.subtree_control": "+cpu +cpuset +memory +pids",
    }


def test_v2_reads_membership_events_oom_and_stats(v2_tree):
    _, own, proc = v2_tree
    task = _mkcg(own / "tasksd/t", V2_FILES)
    _mkcg(own / "tasksd/other", V2_FILES)
    (task / "cgroup.procs").write_text("10\n11\n")
    (task / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (task / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n")
    (task / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (task / "memory.current").write_text("4096\n")
    (task / "memory.peak").write_text("8192\n")
    (task / "pids.current").write_text("2\n")
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    cg = mgr.open("t")
    assert cg is not None
    assert mgr.open("absent") is None
    assert mgr.names() == ["other", "t"]
    assert cg.pids() == {10, 11}
    assert cg.populated()
    assert cg.oom_kills() == 2
    s = cg.stats()
    assert (s.cpu_usage_ns, s.memory_current, s.memory_peak, s.pids_current) == (1_500_000, 4096, 8192, 2)


def test_v2_kill_writes_cgroup_kill(v2_tree):
    _, own, proc = v2_tree
    task = _mkcg(own / "tasksd/t", V2_FILES)
    (task / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    cg = CgroupManager(detect(proc_root=proc), "tasksd").open("t")
    with pytest.raises(CgroupError, match="still has members"):  # a fake file never empties
        cg.kill(timeout=0.05)
    assert (task / "cgroup.kill").read_text() == "1"


def test_v2_kill_of_an_empty_cgroup_writes_nothing(v2_tree):
    """An exited task's cgroup is usually empty: no cgroup.kill write (it would queue on cgroup_mutex)."""
    _, own, proc = v2_tree
    task = _mkcg(own / "tasksd/t", V2_FILES)
    (task / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    before = (task / "cgroup.kill").read_text()
    CgroupManager(detect(proc_root=proc), "tasksd").open("t").kill()
    assert (task / "cgroup.kill").read_text() == before


# -- pure v1 ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def v1_tree(tmp: Path):
    """Pure v1 host with cpu and cpuacct co-mounted; the daemon sits in /user.slice for memory and pids."""
    base = tmp / "v1"
    lines, cgroup = [], []
    own = {"memory": "/user.slice", "cpu,cpuacct": "/", "cpuset": "/", "pids": "/user.slice", "freezer": "/"}
    for i, (mount, files) in enumerate(V1_FILES.items()):
        point = _mkcg(base / mount, files)
        lines.append(f"{40 + i} 31 0:{40 + i} / {point} rw,nosuid - cgroup cgroup rw,{mount}")
        cgroup.append(f"{i + 1}:{mount}:{own[mount]}")
    (base / "cpuset/cpuset.cpus").write_text("0-3\n")
    (base / "cpuset/cpuset.mems").write_text("0\n")
    for mount, files in V1_FILES.items():
        own_dir = base / mount / own[mount].lstrip("/")
        _mkcg(own_dir / "tasksd", files)  # what mkdir would show
        _mkcg(own_dir / "tasksd" / "abc.web", files)
    # A non-task mount the manager must ignore, and the name=systemd hierarchy.
    lines.append(f"60 31 0:60 / {base / 'blkio'} rw - cgroup cgroup rw,blkio")
    lines.append(f"61 31 0:61 / {base / 'systemd'} rw - cgroup cgroup rw,xattr,name=systemd")
    return base, _fake_proc(tmp, lines, cgroup)


def test_detect_pure_v1(v1_tree):
    base, proc = v1_tree
    layout = detect(proc_root=proc)
    assert layout.mode == "v1"
    assert layout.v2_mount is None
    assert layout.v1_mounts["cpu"] == layout.v1_mounts["cpuacct"] == base / "cpu,cpuacct"
    assert layout.v1_mounts["blkio"] == base / "blkio"
    assert layout.own["memory"] == "/user.slice" and layout.own["cpuacct"] == "/"


def test_v1_parent_and_task_writes(v1_tree):
    base, proc = v1_tree
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    assert mgr.move_self_to_leaf() is None  # v1 has no "no internal processes" rule
    before = _snapshot(base)
    mgr.ensure_parent()
    cg = mgr.create("abc.web", limits_for(memory_mb=256, memory_max_mb=512, cpu_mhz=1000, cores_cpus="2-3",
                                          pids_limit=100))
    assert isinstance(cg, V1TaskCgroup)
    assert _changes(base, before) == {
        "cpuset/tasksd/cpuset.cpus": "0-3",
        "cpuset/tasksd/cpuset.mems": "0",
        "memory/user.slice/tasksd/abc.web/memory.memsw.limit_in_bytes": str(512 * MIB),
        "memory/user.slice/tasksd/abc.web/memory.limit_in_bytes": str(512 * MIB),
        "memory/user.slice/tasksd/abc.web/memory.soft_limit_in_bytes": str(256 * MIB),
        "cpu,cpuacct/tasksd/abc.web/cpu.shares": "1000",
        "cpuset/tasksd/abc.web/cpuset.cpus": "2-3",
        "cpuset/tasksd/abc.web/cpuset.mems": "0",
        "pids/user.slice/tasksd/abc.web/pids.max": "100",
    }
    # Co-mounted cpu and cpuacct share one directory, joined once; no v2 events to poll.
    assert cg.procs_files() == [str(base / p / "cgroup.procs") for p in (
        "cpu,cpuacct/tasksd/abc.web", "cpuset/tasksd/abc.web", "freezer/tasksd/abc.web",
        "memory/user.slice/tasksd/abc.web", "pids/user.slice/tasksd/abc.web")]
    assert cg.events_file() is None


def test_v1_unset_limits_write_kernel_defaults(v1_tree):
    base, proc = v1_tree
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    mgr.ensure_parent()
    task_mem = base / "memory/user.slice/tasksd/abc.web"
    (task_mem / "memory.limit_in_bytes").write_text(str(64 * MIB))
    (task_mem / "memory.memsw.limit_in_bytes").write_text(str(64 * MIB))
    (base / "cpu,cpuacct/tasksd/abc.web/cpu.shares").write_text("5")
    before = _snapshot(base)
    cg = mgr.create("abc.web", CgroupLimits())
    assert _changes(base, before) == {
        "memory/user.slice/tasksd/abc.web/memory.memsw.limit_in_bytes": "-1",
        "memory/user.slice/tasksd/abc.web/memory.limit_in_bytes": "-1",
        "memory/user.slice/tasksd/abc.web/memory.soft_limit_in_bytes": "-1",
        "cpu,cpuacct/tasksd/abc.web/cpu.shares": "1024",
    }
    # No cores asked for: no cpuset directory to make and join (the task stays in the launcher's cpuset). On a
    # pure-v1 host the freezer is still joined: it is how a kill stops forks there.
    assert cg.procs_files() == [str(base / p / "cgroup.procs") for p in (
        "cpu,cpuacct/tasksd/abc.web", "freezer/tasksd/abc.web",
        "memory/user.slice/tasksd/abc.web", "pids/user.slice/tasksd/abc.web")]


def test_v1_reads_membership_oom_and_stats(v1_tree):
    base, proc = v1_tree
    mgr = CgroupManager(detect(proc_root=proc), "tasksd")
    cg = mgr.open("abc.web")
    assert cg is not None and not cg.populated()
    (base / "pids/user.slice/tasksd/abc.web/cgroup.procs").write_text("77\n")
    mem = base / "memory/user.slice/tasksd/abc.web"
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (mem / "memory.usage_in_bytes").write_text("1000\n")
    (mem / "memory.max_usage_in_bytes").write_text("2000\n")
    (base / "cpu,cpuacct/tasksd/abc.web/cpuacct.usage").write_text("123456\n")
    (base / "pids/user.slice/tasksd/abc.web/pids.current").write_text("1\n")
    assert cg.populated()
    assert cg.pids() == {77}
    assert cg.oom_kills() == 3
    s = cg.stats()
    assert (s.cpu_usage_ns, s.memory_current, s.memory_peak, s.pids_current) == (123456, 1000, 2000, 1)
    assert mgr.names() == ["abc.web"]


def test_v1_check_reports_missing_controllers(v1_tree, tmp: Path):
    base, _ = v1_tree
    proc = _fake_proc(tmp / "nomem", [f"41 31 0:41 / {base / 'cpu,cpuacct'} rw - cgroup cgroup rw,cpu,cpuacct"],
                      ["1:cpu,cpuacct:/"])
    problems = CgroupManager(detect(proc_root=proc), "tasksd").diagnose()
    fatal = [p.message for p in problems if p.fatal]
    assert fatal == ["memory cgroup v1 controller is not mounted: no memory limits"]
    assert "freezer cgroup v1 controller is not mounted: kill signals members without freezing them first" in [
        p.message for p in problems]


# -- detection details -----------------------------------------------------------------------------------------------

def test_detect_hybrid_and_bind_mounted_subtree(tmp: Path):
    """A container that bind-mounts its own subtree: /proc/self/cgroup shows full paths, the mount root strips them."""
    point = tmp / "with space"
    point.mkdir()
    (point / "cgroup.controllers").write_text("")
    escaped = str(point).replace(" ", "\\040")
    proc = _fake_proc(tmp, [
        f"30 23 0:26 /ctr {escaped} rw - cgroup2 cgroup2 rw",
        f"35 31 0:32 /ctr/a {tmp / 'mem'} rw - cgroup cgroup rw,memory",
    ], ["0::/ctr/app", "4:memory:/ctr/a/b"])
    layout = detect(proc_root=proc)
    assert layout.mode == "hybrid"
    assert layout.v2_mount == point
    assert layout.own == {UNIFIED: "/app", "memory": "/b"}
    assert layout.v2_controllers == frozenset()


def test_detect_without_cgroups_fails(tmp: Path):
    proc = _fake_proc(tmp, ["22 1 0:21 / /proc rw - proc proc rw"], ["0::/"])
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        detect(proc_root=proc)


@pytest.mark.parametrize("bad", ["", "..", "a/b", "x\0"])
def test_task_names_must_be_one_component(v2_tree, bad):
    _, _, proc = v2_tree
    with pytest.raises(ValueError):
        CgroupManager(detect(proc_root=proc), "tasksd").open(bad)


# -- limits ----------------------------------------------------------------------------------------------------------

def test_limits_for_follows_nomads_memory_rule():
    assert limits_for(256) == CgroupLimits(memory_max=256 * MIB)
    assert limits_for(256, 0) == CgroupLimits(memory_max=256 * MIB)
    assert limits_for(256, 1024) == CgroupLimits(memory_max=1024 * MIB, memory_low=256 * MIB)
    assert limits_for(256, -1) == CgroupLimits(memory_low=256 * MIB)
    assert limits_for(None, cpu_mhz=500, cores_cpus=[3, 1, 1], pids_limit=64) == CgroupLimits(
        cpu_shares_mhz=500, cpuset_cpus="1,3", pids_max=64)
    assert limits_for(0, cpu_mhz=0, pids_limit=0) == CgroupLimits()


@pytest.mark.parametrize("args", [(256, 128), (256, -2), (-1,), (256, 0, -5), (256, 0, None, None, -1)])
def test_limits_for_rejects_impossible_values(args):
    with pytest.raises(ValueError):
        limits_for(*args)


@pytest.mark.parametrize("kw", [{"memory_max": 0}, {"pids_max": -1}, {"cpuset_cpus": "0-1;2"},
                                {"cpu_shares_mhz": True}])
def test_cgroup_limits_validate(kw):
    with pytest.raises(ValueError):
        CgroupLimits(**kw)


def test_cpu_conversion_bounds():
    assert (cpu_shares(1), cpu_shares(100), cpu_shares(10**7)) == (2, 100, 262144)
    assert (cpu_weight(2), cpu_weight(1024), cpu_weight(262144)) == (1, 39, 10000)
    assert CgroupLimits(cpu_shares_mhz=10**7).weight == 10000


@given(st.integers(min_value=-10, max_value=10**6), st.integers(min_value=-10, max_value=10**6))
def test_cpu_weight_is_monotonic_and_in_range(a, b):
    lo, hi = sorted((a, b))
    assert 1 <= cpu_weight(lo) <= cpu_weight(hi) <= 10000
