"""Spare alloc dirs (isolation.spares) on the real kernel: a task dir built from a spare is the same tree as one
made on the spot, an existing alloc dir is never replaced, a restarted daemon keeps complete spares and drops
half-made ones, a pool that cannot move spares (another filesystem) gets out of the way, and a real start through
the launcher takes one."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from isolation import sys as ksys
from isolation import taskdir
from isolation.runtime import Runtime
from isolation.logs import FILE_MODE
from isolation.spares import LOG_PLACEHOLDERS, PLACEHOLDER, SparePool
from tests.helpers import wait_for
from tests.kernel.conftest import make_ctx, raw_task, teardown_runtime
from tests.kernel.test_taskdir import GID, UID, _check_layout

pytestmark = pytest.mark.root


def _tree(top) -> dict[str, tuple]:
    """Every directory below `top` (not crossing into mounts) with its mode and owner, and for a mount point its
    filesystem type and options."""
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        sep = f.index("-")
        mounts[ksys.unescape_mountinfo(f[4])] = (f[sep + 1], f[5], f[sep + 3])
    out = {}
    top = str(top)
    for dirpath, dirnames, filenames in os.walk(top):
        st = os.lstat(dirpath)
        rel = os.path.relpath(dirpath, top)
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mounts.get(dirpath))
        if dirpath in mounts:
            dirnames[:] = []
        for name in filenames:
            out[os.path.join(rel, name)] = "file"
    return out


@pytest.fixture
def pool(tmp):
    p = SparePool(tmp / "spare", 2)
    p.open()
    yield p
    p.clear()


LOGS = ("t.stdout", "t.stderr")


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_a_task_dir_from_a_spare_is_the_tree_a_fresh_build_makes(tmp, pool, umask):
    old = os.umask(umask)  # a umask that would strip most modes must not change what a spare looks like
    try:
        pool.make_one()
    finally:
        os.umask(old)
    assert pool.count() == 1
    from_spare = taskdir.build(tmp / "alloc", "a1", "t", UID, GID, secrets_mb=3, spares=pool, log_names=LOGS)
    fresh = taskdir.build(tmp / "alloc", "a2", "t", UID, GID, secrets_mb=3)
    try:
        assert pool.count() == 0, "the start did not take the spare"
        assert not os.path.lexists(from_spare.alloc_dir / PLACEHOLDER)
        _check_layout(from_spare.alloc_dir)
        # The log files come with the spare, empty, with the mode the launcher gives a file it makes.
        for name in LOGS:
            st = os.lstat(from_spare.logs / name)
            assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and (st.st_uid, st.st_gid) == (0, 0)
            assert stat.S_IMODE(st.st_mode) == FILE_MODE & ~umask  # as the launcher, with the same umask, makes it
            (from_spare.logs / name).unlink()
        assert _tree(from_spare.alloc_dir) == _tree(fresh.alloc_dir)
        assert os.listdir(pool.root) == []
    finally:
        taskdir.remove_alloc(from_spare.alloc_dir)
        taskdir.remove_alloc(fresh.alloc_dir)


def test_a_spare_taken_without_log_names_leaves_no_placeholder(tmp, pool):
    pool.make_one()
    td = taskdir.build(tmp / "alloc", "a1", "web", 0, 0, spares=pool)  # root's task dirs stay root's
    try:
        assert pool.count() == 0
        assert os.listdir(td.logs) == []
        for name in ("local", "secrets", "private"):
            st = os.lstat(td.dir / name)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755 if name == "local" else 0o700)
    finally:
        taskdir.remove_alloc(td.alloc_dir)


def test_an_existing_alloc_dir_is_never_replaced(tmp, pool):
    td = taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
    try:
        (td.shared / "data" / "keep").write_text("state")
        pool.make_one()
        again = taskdir.build(tmp / "alloc", "a1", "t2", UID, GID, spares=pool)  # a second task of the group
        assert pool.count() == 1, "a spare was used for an alloc dir that exists"
        assert (again.shared / "data" / "keep").read_text() == "state"
        assert (again.dir / "local").is_dir()
    finally:
        taskdir.remove_alloc(td.alloc_dir)
    # Even an empty directory in the way (one made by another start at the same moment) stays: rename(2) would
    # replace it, renameat2(RENAME_NOREPLACE) does not. The spare goes back to the pool as it was.
    empty = tmp / "alloc" / "a3"
    empty.mkdir()
    ino = os.lstat(empty).st_ino
    assert not pool.take(str(empty), "t", LOGS)
    assert os.lstat(empty).st_ino == ino and os.listdir(empty) == []
    assert pool.count() == 1
    (spare,) = os.listdir(pool.root)
    assert sorted(os.listdir(os.path.join(pool.root, spare))) == [PLACEHOLDER, "alloc"]
    assert sorted(os.listdir(os.path.join(pool.root, spare, "alloc", "logs"))) == sorted(LOG_PLACEHOLDERS)
    # Taken without log names, its placeholders are gone before the move fails: it cannot go back, and is removed.
    assert not pool.take(str(empty), "t")
    assert os.lstat(empty).st_ino == ino and os.listdir(empty) == []
    assert pool.count() == 0 and os.listdir(pool.root) == []
    empty.rmdir()


def test_a_restarted_pool_starts_empty_whatever_was_left_there(tmp, pool):
    pool.make_one()
    pool.make_one()
    # What a daemon killed at the wrong moment leaves: a spare half made, one half removed (its placeholder
    # still there, alloc/data gone), one whose placeholder was renamed for a start; and a stray file.
    taskdir.make_skeleton(os.path.join(pool.root, "tmp-9"), PLACEHOLDER, LOG_PLACEHOLDERS, FILE_MODE)
    taskdir.make_skeleton(os.path.join(pool.root, "8"), PLACEHOLDER, LOG_PLACEHOLDERS, FILE_MODE)
    os.rmdir(os.path.join(pool.root, "8", "alloc", "data"))
    taskdir.make_skeleton(os.path.join(pool.root, "7"), PLACEHOLDER, LOG_PLACEHOLDERS, FILE_MODE)
    os.rename(os.path.join(pool.root, "7", PLACEHOLDER), os.path.join(pool.root, "7", "web"))
    with open(os.path.join(pool.root, "junk"), "w"):
        pass
    again = SparePool(pool.root, 2)
    again.open()
    # None of it is handed out: a tree from an earlier daemon may be incomplete or of an older layout.
    assert again.disabled is None and os.listdir(pool.root) == []
    assert again.count() == 0 and again.wanted() == 2
    again.target = 3
    assert again.step() is True
    assert again.count() == 1 and len(os.listdir(pool.root)) == 1


def test_step_moves_towards_the_target_both_ways_and_clear_removes_the_pool(tmp, pool):
    assert pool.wanted() == 2
    assert pool.step() is True and pool.step() is False
    assert pool.count() == 2 and pool.wanted() == 0
    pool.target = 0
    assert pool.wanted() == -2
    pool.step()
    pool.step()
    assert pool.count() == 0 and os.listdir(pool.root) == []
    pool.target = 1
    pool.step()
    pool.clear()
    assert not os.path.lexists(pool.root)


def test_a_pool_on_another_filesystem_than_the_allocs_gets_out_of_the_way(tmp, pool):
    alloc_root = tmp / "alloc"
    alloc_root.mkdir()
    ksys.mount("tmpfs", str(alloc_root), "tmpfs", 0, "size=4m,mode=0711")
    try:
        pool.make_one()
        td = taskdir.build(alloc_root, "a1", "t", UID, GID, spares=pool, log_names=LOGS)
        _check_layout(td.alloc_dir)  # made in place instead
        assert pool.disabled and "cannot move a spare" in pool.disabled
        assert pool.count() == 1 and pool.wanted() == 0  # kept, but no more are made
        assert not pool.take(str(alloc_root / "a2"), "t")
        taskdir.remove_alloc(td.alloc_dir)
    finally:
        ksys.umount2(str(alloc_root), ksys.MNT_DETACH)


def test_a_c_library_without_renameat2_turns_the_pool_off(tmp, pool, monkeypatch):
    monkeypatch.setattr(ksys, "_renameat2", None)  # glibc < 2.28 (not this machine's): simulated
    pool.make_one()
    td = taskdir.build(tmp / "alloc", "a1", "t", UID, GID, spares=pool, log_names=LOGS)
    try:
        _check_layout(td.alloc_dir)
        assert pool.disabled and "renameat2" in pool.disabled and pool.wanted() == 0
    finally:
        taskdir.remove_alloc(td.alloc_dir)


def test_a_pool_path_taken_by_something_else_disables_it(tmp):
    target = tmp / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp / "spare")
    p = SparePool(tmp / "spare", 2)
    p.open()
    assert p.disabled and p.wanted() == 0
    assert os.listdir(target) == []
    assert not p.take(str(tmp / "alloc-a1"), "t")


def test_a_start_through_the_launcher_takes_a_spare_and_its_logs_work(tmp, cgroup_parent, agent_config):
    from isolation.drivers import make_drivers

    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent, spare_dirs=1)
    rt.open()
    try:
        assert rt.spares is not None and rt.spares.step() is False and rt.spares.count() == 1
        d = make_drivers(rt, agent_config)["raw_exec"]
        ctx = make_ctx(agent_config, raw_task("/bin/sh", "-c", "echo out; echo err >&2; ls -ld $NOMAD_TASK_DIR"))
        logs = tmp / "state" / "alloc" / ctx.alloc_id / "alloc" / "logs"
        (spare,) = os.listdir(rt.spares.root)
        placeholder = os.lstat(os.path.join(rt.spares.root, spare, "alloc", "logs", ".stdout")).st_ino
        h = d.start(ctx)
        res = d.wait(h, 10)
        assert res is not None and res.exit_code == 0, res
        assert rt.spares.count() == 0
        assert os.lstat(logs / "t.stdout").st_ino == placeholder  # the launcher wrote to the spare's file
        wait_for(lambda: (logs / "t.stdout").exists() and b"local" in (logs / "t.stdout").read_bytes(),
                 what="the task's stdout in its log file")
        assert (logs / "t.stdout").read_bytes().startswith(b"out\n")
        wait_for(lambda: (logs / "t.stderr").read_bytes() == b"err\n", what="the task's stderr")
        d.destroy(h)
    finally:
        teardown_runtime(rt)
        rt.spares.clear()


def _exec_tree(rt, d, ctx) -> dict[str, tuple]:
    """Start `ctx`'s exec task (it exits at once), wait for it, and return its task dir's tree as the host sees it:
    the chroot's mount points are plain directories here (the mounts were in the task's own namespace)."""
    h = d.start(ctx)
    try:
        res = d.wait(h, 30)
        assert res is not None and res.exit_code == 0, res
        return _tree(h.task_dir)
    finally:
        d.destroy(h)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_an_exec_start_from_a_chroot_spare_finds_its_mount_points_made_as_its_child_makes_them(
        tmp, cgroup_parent, agent_config, umask):
    """The exec driver's kind of spare carries what its child would make in the task dir (bin/, etc/, ..., dev/,
    proc/, sys/): a start that takes one leaves the same tree as a start that made them itself, and a raw_exec
    start never takes that kind. A daemon whose umask differs from its launcher's (one started by an earlier
    daemon) makes the same modes: the child builds the root under a umask of its own."""
    from isolation.drivers import make_drivers
    from tests.kernel.test_exec import exec_task

    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent, spare_dirs=1)
    rt.open()
    try:
        drivers = make_drivers(rt, agent_config)
        d = drivers["exec"]
        first = make_ctx(agent_config, exec_task("/bin/true"), job="first")
        assert d.spare_kind(first) == "chroot"  # defines the kind, as a start does
        old = os.umask(umask)
        try:
            while rt.spares.step():
                pass
        finally:
            os.umask(old)
        assert rt.spares.count("chroot") == 1 and rt.spares.count() == 1
        (spare,) = [n for n in os.listdir(rt.spares.root)
                    if os.path.isdir(os.path.join(rt.spares.root, n, PLACEHOLDER, "proc"))]
        assert stat.S_IMODE(os.lstat(os.path.join(rt.spares.root, spare, PLACEHOLDER, "proc")).st_mode) == 0o555
        # A raw_exec start takes the plain spare: no chroot mount points in its dir.
        h = drivers["raw_exec"].start(make_ctx(agent_config, raw_task("/bin/true"), job="raw"))
        assert drivers["raw_exec"].wait(h, 10) is not None
        drivers["raw_exec"].destroy(h)
        assert rt.spares.count() == 0 and rt.spares.count("chroot") == 1
        assert not any(os.path.lexists(os.path.join(h.task_dir, n)) for n in ("bin", "usr", "proc", "dev"))
        with_spare = _exec_tree(rt, d, first)
        assert rt.spares.count("chroot") == 0, "the exec start did not take the chroot spare"
        rt.spares.target = 0
        fresh = _exec_tree(rt, d, make_ctx(agent_config, exec_task("/bin/true"), job="second"))
        assert {"bin", "usr", "dev", "proc", "sys", "alloc"} <= set(fresh)
        assert with_spare == fresh
    finally:
        teardown_runtime(rt)
        for alloc in (tmp / "state" / "alloc").iterdir():
            taskdir.remove_alloc(alloc)
        rt.spares.clear()


def test_a_kind_defined_anew_drops_its_old_spares_and_refuses_paths_out_of_the_task_dir(tmp, pool):
    pool.define("chroot", (("bin", 0o755), ("run", 0o755), ("run/x", 0o755), ("f", None)))
    while pool.step():
        pass
    assert pool.count() == 2 and pool.count("chroot") == 2
    spares = [n for n in os.listdir(pool.root) if os.path.lexists(os.path.join(pool.root, n, PLACEHOLDER, "f"))]
    assert len(spares) == 2 and all(os.path.isdir(os.path.join(pool.root, n, PLACEHOLDER, "run", "x")) for n in spares)
    assert all(stat.S_ISREG(os.lstat(os.path.join(pool.root, n, PLACEHOLDER, "f")).st_mode) for n in spares)
    pool.define("chroot", (("bin", 0o755), ("run", 0o755), ("run/x", 0o755), ("f", None)))  # the same: kept
    assert pool.count("chroot") == 2
    pool.define("chroot", (("usr", 0o755),))
    assert pool.count("chroot") == 0 and not any(os.path.lexists(os.path.join(pool.root, n)) for n in spares)
    for bad in ("../x", "a/../b", "/abs", "", "a//b"):
        with pytest.raises(ValueError):
            pool.define("other", ((bad, 0o755),))
    with pytest.raises(ValueError):
        pool.define("", ())


def test_a_chroot_env_source_that_changed_since_the_spares_were_made_is_followed(tmp, cgroup_parent, agent_config):
    """The mount points depend on the host (a chroot_env source a file or a directory, there or not): a spare made
    before the source changed is never used for a start after it, which makes its mount point the new way."""
    import dataclasses

    from isolation.drivers import make_drivers
    from tests.kernel.test_exec import exec_task

    src = tmp / "conf-src"
    src.write_text("x")
    os.chmod(tmp, 0o755)
    cfg = dataclasses.replace(agent_config, chroot_env=(*agent_config.chroot_env, (str(src), "/opt/conf")))
    rt = Runtime(tmp / "state", cgroup_parent=cgroup_parent, spare_dirs=1)
    rt.open()
    try:
        d = make_drivers(rt, cfg)["exec"]
        probe = exec_task("/bin/sh", "-c", "test -d /opt/conf && echo dir || echo other")
        assert d.spare_kind(make_ctx(cfg, probe, job="a")) == "chroot"
        while rt.spares.step():
            pass
        (spare,) = [n for n in os.listdir(rt.spares.root)
                    if os.path.lexists(os.path.join(rt.spares.root, n, PLACEHOLDER, "opt", "conf"))]
        assert stat.S_ISREG(os.lstat(os.path.join(rt.spares.root, spare, PLACEHOLDER, "opt", "conf")).st_mode)
        src.unlink()
        src.mkdir()
        h = d.start(make_ctx(cfg, probe, job="a"))
        res = d.wait(h, 30)
        out = (Path(h.alloc_dir) / "alloc" / "logs" / "t.stdout").read_text()
        d.destroy(h)
        assert res is not None and res.exit_code == 0 and out == "dir\n", (res, out)
        assert os.path.isdir(os.path.join(h.task_dir, "opt", "conf"))
        assert not os.path.lexists(os.path.join(rt.spares.root, spare)), "the stale spare was kept"
    finally:
        teardown_runtime(rt)
        for alloc in (tmp / "state" / "alloc").iterdir():
            taskdir.remove_alloc(alloc)
        rt.spares.clear()


def test_only_exec_tasks_without_mounts_artifacts_or_templates_take_a_chroot_spare(tmp, runtime, agent_config):
    import dataclasses

    from isolation.drivers import make_drivers
    from manifests.model import Artifact, Mount, Template
    from tests.kernel.test_exec import exec_task

    runtime.spares = SparePool(tmp / "spare", 1)
    runtime.spares.open()
    try:
        drivers = make_drivers(runtime, agent_config)
        plain = exec_task("/bin/true")
        assert drivers["exec"].spare_kind(make_ctx(agent_config, plain)) == "chroot"
        for other in (exec_task("/bin/true", mounts=(Mount(source="/usr", target="/data", readonly=True),)),
                      dataclasses.replace(plain, artifacts=(Artifact(source="http://x/y"),)),
                      dataclasses.replace(plain, templates=(Template(data="x", destination="local/x"),))):
            assert drivers["exec"].spare_kind(make_ctx(agent_config, other)) == ""
        for name in ("raw_exec", "exec2"):
            assert drivers[name].spare_kind(make_ctx(agent_config, raw_task("/bin/true"))) == ""
    finally:
        runtime.spares.clear()
