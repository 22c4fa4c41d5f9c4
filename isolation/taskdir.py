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

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from isolation import sys as ksys
from isolation.safefile import remove_tree
from manifests.digest import uuid5

if TYPE_CHECKING:
    from isolation.spares import SparePool

ALLOC_NAMESPACE = "6f1d2a4e-4a7c-4c55-9d47-7a8f4f5c2b10"


def alloc_id_for(job: str, group: str, index: int) -> str:
    """Stable per (job, group, index): alloc/data survives restarts and manifest edits."""
    return uuid5(ALLOC_NAMESPACE, f"{job}/{group}/{index}")


def logs_dir(alloc_root: Path, alloc_id: str) -> str:
    """str(TaskDir(...).logs) before the task dir exists."""
    return f"{alloc_root}/{alloc_id}/alloc/logs"


@dataclass(frozen=True)
class TaskDir:
    """The paths of one task's directories. Each is computed once (a start asks for them a dozen times, and
    every pathlib join is a few microseconds)."""
    alloc_dir: Path  # <state>/alloc/<id>
    task: str

    @functools.cached_property
    def shared(self) -> Path:
        return self.alloc_dir / "alloc"

    @functools.cached_property
    def logs(self) -> Path:
        return self.shared / "logs"

    @functools.cached_property
    def dir(self) -> Path:
        return self.alloc_dir / self.task

    @functools.cached_property
    def local(self) -> Path:
        return self.dir / "local"

    @functools.cached_property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    @functools.cached_property
    def secrets(self) -> Path:
        return self.dir / "secrets"

    @functools.cached_property
    def private(self) -> Path:
        return self.dir / "private"

    def env_dirs(self) -> tuple[str, str, str, str]:
        """The shared alloc dir, local/, secrets/ and tmp/ as host path strings, joined directly: four pathlib
        joins were 2% of a start, and these four only go into the environment."""
        a = str(self.alloc_dir)
        t = f"{a}/{self.task}"
        return f"{a}/alloc", f"{t}/local", f"{t}/secrets", f"{t}/tmp"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads creating files).
    Raw os calls: a buffered file object made this read a tenth of the whole directory build."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 256)  # "Umask:" is the second line
        finally:
            os.close(fd)
        at = head.index(b"\nUmask:") + 7
        return int(head[at:head.index(b"\n", at)], 8)
    except (OSError, ValueError):
        return 0o777  # unknown: assume everything is masked, so every mode gets set explicitly


def _mkdir(path: str, mode: int, umask: int, uid: int = 0, gid: int = 0, parent_plain: bool = True) -> bool:
    """Make `path` a directory with exactly this mode and owner. True when it was created now.

    A directory we just made is ours and carries mode & ~umask, so chmod and chown are needed only where those
    differ from what we want (a start makes ten of these; the redundant syscalls were a tenth of its cost).
    parent_plain=False: the parent may be set-gid, so the group of a new directory is not ours to assume."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            # Something (maybe a task) put a file or symlink where our directory belongs: never follow it.
            raise RuntimeError(f"{path} exists and is not a directory") from None
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode, follow_symlinks=False)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
        return False
    if mode & umask:
        # Following the path is safe here: mkdir just made it a directory, and its parent is root's and writable
        # by no one else (see the layout above), so nobody can have swapped it for a symlink since. (The
        # no-follow chmod is four system calls through /proc/self/fd.)
        os.chmod(path, mode)
    if not parent_plain or (uid, gid) != (_EUID, _EGID):
        os.chown(path, uid, gid, follow_symlinks=False)
    return True


_EUID, _EGID = os.geteuid(), os.getegid()


def _is_mountpoint(path: Path | str) -> bool:
    """A tmpfs mounted on `path` has its own device number. O(1): reading /proc/self/mountinfo instead costs
    O(number of mounts) per start, which with two mounts per task made starting N tasks O(N^2)."""
    try:
        return os.lstat(path).st_dev != os.lstat(os.path.dirname(path)).st_dev
    except FileNotFoundError:
        return False


# Nomad's layout below an alloc dir, as (path, mode); see the module docstring. TASK_DIRS are below <task>/, and
# those marked True belong to the task's user. isolation.spares makes the same tree ahead of need.
ALLOC_DIRS = (("alloc", 0o755), ("alloc/logs", 0o755), ("alloc/data", 0o1777), ("alloc/tmp", 0o1777))
TASK_DIRS = (("local", 0o755, True), ("tmp", 0o1777, False), ("secrets", 0o700, True), ("private", 0o700, True))


def build(alloc_root: Path, alloc_id: str, task: str, uid: int, gid: int, secrets_mb: int = 1,
          logs_ready: Callable[[], None] | None = None, spares: "SparePool | None" = None,
          log_names: tuple[str, ...] = (), spare_kind: str = "") -> TaskDir:
    """Create (idempotently) the alloc dir, the task's dirs and its tmpfs mounts. `logs_ready` is called as soon
    as alloc/logs exists, before the rest is made: a start has the launcher open the task's log files meanwhile.
    `spares`: a new alloc dir is taken from this pool when it has one (one rename instead of ten mkdirs); its
    empty log files are then named `log_names` (stdout's, stderr's), which the launcher opens as they are, and
    `logs_ready` is not called for them. `spare_kind`: the kind of spare to take (see isolation.spares)."""
    root = str(alloc_root)
    try:
        os.mkdir(root, 0o711)
    except FileExistsError:
        pass
    except FileNotFoundError:
        alloc_root.mkdir(mode=0o711, parents=True, exist_ok=True)
    a = f"{root}/{alloc_id}"
    t = f"{a}/{task}"
    if spares is not None and not os.path.lexists(a) and spares.take(a, task, log_names, spare_kind):
        # The tree is ours, made fresh in a root-only pool and renamed into a root-only parent: only what differs
        # per task is left to do, the owner of the task's own dirs and (below) its mounts. Its log files exist,
        # so logs_ready is not called: the launcher opens existing files after its spawn reply, off the start's
        # path, where asking for them now would put two opens ahead of the spawn in its queue.
        if logs_ready is not None and not log_names:
            logs_ready()
        if (uid, gid) != (_EUID, _EGID):
            for name, _mode, owned in TASK_DIRS:
                if owned:
                    os.chown(f"{t}/{name}", uid, gid, follow_symlinks=False)
        made = {"secrets": True, "private": True}
    else:
        um = _umask()
        _mkdir(a, 0o711, um, parent_plain=False)  # alloc_root is the operator's: it may be set-gid
        for name, mode in ALLOC_DIRS:
            _mkdir(f"{a}/{name}", mode, um)
            if name == "alloc/logs" and logs_ready is not None:
                logs_ready()
        _mkdir(t, 0o755, um)
        made = {name: _mkdir(f"{t}/{name}", mode, um, *((uid, gid) if owned else ()))
                for name, mode, owned in TASK_DIRS}
    for name, size in (("secrets", secrets_mb), ("private", 1)):
        path = f"{t}/{name}"
        if made[name] or not _is_mountpoint(path):
            ksys.mount("tmpfs", path, "tmpfs", ksys.MS_NOEXEC | ksys.MS_NOSUID | ksys.MS_NODEV,
                       f"size={max(1, size)}m,mode=0700,uid={uid},gid={gid}")
    return TaskDir(Path(a), task)


def make_skeleton(path: str, placeholder: str, log_files: tuple[str, ...], log_mode: int,
                  extra: tuple[tuple[str, int | None], ...] = ()) -> None:
    """A new alloc dir at `path` (which must not exist), owned by us, holding one task's dirs under the name
    `placeholder` and empty files `log_files` in alloc/logs: the tree build() makes (and the files the launcher
    opens for a task's output), before anything per task. For isolation.spares.

    extra: more entries of the task dir, (relative path, directory mode or None for an empty file), made as a
    driver's child would make them there (isolation.childplan.root_mount_points): directories with exactly that
    mode, files 0644, whatever our umask; one that exists already (a task dir of the plain tree) is left as it is."""
    um = _umask()
    _mkdir(path, 0o711, um)
    for name, mode in ALLOC_DIRS:
        _mkdir(f"{path}/{name}", mode, um)
    for name in log_files:
        # log_mode under the umask, as the launcher (which inherits the daemon's umask) creates a log file.
        os.close(os.open(f"{path}/alloc/logs/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, log_mode))
    _mkdir(f"{path}/{placeholder}", 0o755, um)
    for name, mode, _owned in TASK_DIRS:
        _mkdir(f"{path}/{placeholder}/{name}", mode, um)
    for rel, mode in extra:
        target = f"{path}/{placeholder}/{rel}"
        if mode is not None:
            _mkdir(target, mode, um)
            continue
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, 0o644)  # the umask may have taken bits: exactly what the child makes
        finally:
            os.close(fd)


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
    remove_tree(alloc_dir)  # not shutil.rmtree: see isolation.safefile
