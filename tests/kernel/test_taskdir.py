"""Task directories on the real kernel: Nomad's layout with tasksd's modes and owners, the tmpfs mounts, and a
rebuild that repairs what was tampered with (a restart reuses the alloc dir)."""
from __future__ import annotations

import os
import stat

import pytest

from isolation import taskdir

pytestmark = pytest.mark.root

UID = GID = 65534

EXPECTED = {  # path below the alloc dir -> (mode, owned by the task user)
    "": (0o711, False),
    "alloc": (0o755, False),
    "alloc/data": (0o1777, False),
    "alloc/tmp": (0o1777, False),
    "alloc/logs": (0o755, False),
    "t": (0o755, False),
    "t/local": (0o755, True),
    "t/tmp": (0o1777, False),
}


def _check_layout(alloc_dir) -> None:
    for rel, (mode, task_owned) in EXPECTED.items():
        st = os.lstat(alloc_dir / rel if rel else alloc_dir)
        assert stat.S_ISDIR(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == mode, f"{rel or '.'}: {oct(stat.S_IMODE(st.st_mode))} != {oct(mode)}"
        assert (st.st_uid, st.st_gid) == ((UID, GID) if task_owned else (0, 0)), rel
    for name in ("secrets", "private"):
        p = alloc_dir / "t" / name
        st = os.lstat(p)
        assert st.st_dev != os.lstat(p.parent).st_dev, f"{name} is not a mount"
        assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (UID, GID), name
        opts = next(line.split()[5] for line in open("/proc/self/mountinfo") if line.split()[4] == str(p))
        assert {"noexec", "nosuid", "nodev"} <= set(opts.split(",")), f"{name}: {opts}"


def test_layout_modes_owners_and_mounts(tmp):
    td = taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
    try:
        _check_layout(td.alloc_dir)
        taskdir.build(tmp / "alloc", "a1", "t", UID, GID)  # idempotent: nothing mounted twice
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
        assert mounts.count(str(td.secrets)) == 1 and mounts.count(str(td.private)) == 1
    finally:
        taskdir.remove_alloc(td.alloc_dir)
    assert not td.alloc_dir.exists()


def test_layout_is_right_whatever_the_umask(tmp):
    old = os.umask(0o077)  # a umask that would strip most of the modes above
    try:
        td = taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
    finally:
        os.umask(old)
    try:
        _check_layout(td.alloc_dir)
    finally:
        taskdir.remove_alloc(td.alloc_dir)


def test_rebuild_repairs_modes_and_owners_and_refuses_a_symlink(tmp):
    td = taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
    try:
        os.chmod(td.alloc_dir, 0o777)
        os.chmod(td.shared / "data", 0o700)
        os.chown(td.local, 0, 0)
        os.chown(td.shared / "logs", UID, GID)
        taskdir.unmount_task(td)
        taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
        _check_layout(td.alloc_dir)
        os.rmdir(td.tmp)
        os.symlink("/etc", td.tmp)
        with pytest.raises(RuntimeError, match="not a directory"):
            taskdir.build(tmp / "alloc", "a1", "t", UID, GID)
        assert stat.S_IMODE(os.stat("/etc").st_mode) == 0o755  # the symlink's target was not touched
    finally:
        taskdir.remove_alloc(td.alloc_dir)
