"""Alloc and task directories with Nomad's layout, and their small tmpfs mounts.

    <state>/alloc/<alloc_id>/                    0711 root   (no listing by task users)
        alloc/{data,tmp}                         1777        shared by the group's tasks; data survives restarts
        alloc/logs                               0755 root   written by the launcher, readable by tasks
        <task>/                                  0755 root
        <task>/local                             0755 task user   (NOMAD_TASK_DIR)
        <task>/tmp                               1777
        <task>/secrets, <task>/private           0700 task user, tmpfs, noexec, nosuid, nodev

Nomad makes most of these 0777; tasksd gives the task's own dirs to the task's user instead, so two tasks with
different users cannot read each other's secrets.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from isolation import sys as ksys

ALLOC_NAMESPACE = uuid.UUID("6f1d2a4e-4a7c-4c55-9d47-7a8f4f5c2b10")


def alloc_id_for(job: str, group: str, index: int) -> str:
    """Stable per (job, group, index): alloc/data survives restarts and manifest edits."""
    return str(uuid.uuid5(ALLOC_NAMESPACE, f"{job}/{group}/{index}"))


@dataclass(frozen=True)
class TaskDir:
    alloc_dir: Path  # <state>/alloc/<id>
    task: str

    @property
    def shared(self) -> Path:
        return self.alloc_dir / "alloc"

    @property
    def logs(self) -> Path:
        return self.alloc_dir / "alloc" / "logs"

    @property
    def dir(self) -> Path:
        return self.alloc_dir / self.task

    @property
    def local(self) -> Path:
        return self.dir / "local"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets"

    @property
    def private(self) -> Path:
        return self.dir / "private"


def _mkdir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> None:
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            # Something (maybe a task) put a file or symlink where our directory belongs: never follow it.
            raise RuntimeError(f"{path} exists and is not a directory") from None
    os.chmod(path, mode, follow_symlinks=False)
    os.chown(path, uid, gid, follow_symlinks=False)


def _is_mountpoint(path: Path) -> bool:
    """A tmpfs mounted on `path` has its own device number. O(1): reading /proc/self/mountinfo instead costs
    O(number of mounts) per start, which with two mounts per task made starting N tasks O(N^2)."""
    try:
        return os.lstat(path).st_dev != os.lstat(path.parent).st_dev
    except FileNotFoundError:
        return False


def build(alloc_root: Path, alloc_id: str, task: str, uid: int, gid: int, secrets_mb: int = 1) -> TaskDir:
    """Create (idempotently) the alloc dir, the task's dirs and its tmpfs mounts."""
    alloc_root.mkdir(mode=0o711, parents=True, exist_ok=True)
    td = TaskDir(alloc_root / alloc_id, task)
    _mkdir(td.alloc_dir, 0o711)
    _mkdir(td.shared, 0o755)
    _mkdir(td.shared / "data", 0o1777)
    _mkdir(td.shared / "tmp", 0o1777)
    _mkdir(td.logs, 0o755)
    _mkdir(td.dir, 0o755)
    _mkdir(td.local, 0o755, uid, gid)
    _mkdir(td.tmp, 0o1777)
    for path, size in ((td.secrets, secrets_mb), (td.private, 1)):
        _mkdir(path, 0o700, uid, gid)
        if not _is_mountpoint(path):
            ksys.mount("tmpfs", str(path), "tmpfs", ksys.MS_NOEXEC | ksys.MS_NOSUID | ksys.MS_NODEV,
                       f"size={max(1, size)}m,mode=0700,uid={uid},gid={gid}")
    return td


def unmount_task(td: TaskDir) -> None:
    for path in (td.secrets, td.private):
        while _is_mountpoint(path):
            ksys.umount2(str(path), ksys.MNT_DETACH)


def remove_alloc(alloc_dir: Path) -> None:
    """Unmount everything below the alloc dir, then delete it (GC)."""
    if not alloc_dir.exists():
        return
    prefix = str(alloc_dir) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [ksys.unescape_mountinfo(line.split()[4]) for line in f]
    for p in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        try:
            ksys.umount2(p, ksys.MNT_DETACH)
        except OSError:
            pass
    shutil.rmtree(alloc_dir, ignore_errors=True)
