"""Spare alloc directories: made while the daemon is idle, so that a new task's start renames one into place.

A new alloc's directories (Nomad's layout, see isolation.taskdir) are ten mkdirs, on this project's VMs 25-80 us
each on ext4 and more after recent deletions: the largest single piece of a raw_exec start. A spare is that tree
made ahead in <state>/spare/<n>/ (root's, mode 0700: no task can reach it), with the task's part under the
placeholder ".task" (no task name starts with a dot) and two empty log files ".stdout" and ".stderr" in
alloc/logs: creating a file costs what a mkdir does, and the launcher opens a task's two log files on the start's
critical path. A start that finds no alloc dir renames the placeholders to its task's names inside the pool,
where nothing else sees them, then moves the whole tree into place with one renameat2(RENAME_NOREPLACE), so an
alloc dir appears complete or not at all and an existing one is never replaced. What differs per task (the owner
of its own dirs, its tmpfs mounts) is applied after, as for a tree made on the spot; a kernel test compares the
two.

Spares are always made new, never recycled from a collected alloc: a task may have changed what it owned (modes,
ACLs, extended attributes), and nothing a task touched is handed to another.

Kinds: a driver may define a kind of spare whose task dir also holds what its start would make there itself. The
exec driver's child makes the chroot's mount points (bin/, etc/, usr/, dev/, proc/, sys/, ...) in the task dir
before mounting on them: a dozen more creates on the start's path, 2 ms after heavy deletions on this project's
VMs. Its kind carries them, and only its starts take that kind: a raw_exec task never finds them in its dir. The
plain kind is "".

Thread-safe: starts run on the controller's worker threads, the pool is refilled on its loop thread.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading

from isolation import sys as ksys
from isolation import taskdir
from isolation.logs import FILE_MODE
from isolation.safefile import remove_tree

log = logging.getLogger("tasksd.spares")

PLACEHOLDER = ".task"
LOG_PLACEHOLDERS = (".stdout", ".stderr")


class SparePool:
    def __init__(self, root: str | os.PathLike, target: int) -> None:
        self.root = str(root)
        self.target = target  # per kind
        self._lock = threading.Lock()
        # kind -> what its task dir holds beyond the plain tree: (path below the task dir, directory mode or None
        # for an empty file), made in this order. "" is the plain kind.
        self._kinds: dict[str, tuple[tuple[str, int | None], ...]] = {"": ()}
        self._names: dict[str, list[str]] = {"": []}
        self._next = 0
        self.disabled: str | None = None  # why spares are not used (the pool cannot work on this state dir)

    def open(self) -> None:
        """Make the pool's directory, emptied: whatever an earlier daemon left there (spares, one half made or
        half removed when it died, trees of an older layout) is removed, never handed out; the daemon makes its
        spares again once idle. A pool that cannot work here is disabled with a warning: starts then make their
        directories as without it."""
        try:
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:
                st = os.lstat(self.root)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    raise OSError(errno.EPERM, "exists and is not a directory of ours") from None
            # Exactly 0700, set-gid cleared: a spare must carry our own group, as a tree made in place does.
            os.chmod(self.root, 0o700, follow_symlinks=False)
            for entry in os.scandir(self.root):
                remove_tree(entry.path)
        except OSError as e:
            self._disable(f"cannot use {self.root}: {e.strerror or e}")

    def _disable(self, why: str) -> None:
        if self.disabled is None:
            log.warning("spare alloc dirs disabled: %s", why)
        self.disabled = why

    def define(self, kind: str, extra: tuple[tuple[str, int | None], ...]) -> None:
        """Have spares of `kind` (see the module docstring), their task dirs holding `extra` as well. A kind
        defined anew with other contents drops the spares made for the old ones."""
        if not kind:
            raise ValueError("the plain kind cannot be redefined")
        for path, _mode in extra:
            parts = path.split("/")
            if not path or "\0" in path or any(c in ("", ".", "..") for c in parts):
                raise ValueError(f"not a plain path below a task dir: {path!r}")
        with self._lock:
            if self._kinds.get(kind) == extra:
                return
            self._kinds[kind] = extra
            stale, self._names[kind] = self._names.get(kind, []), []
        for name in stale:
            remove_tree(f"{self.root}/{name}")

    def count(self, kind: str = "") -> int:
        with self._lock:
            return len(self._names.get(kind, ()))

    def wanted(self) -> int:
        """Spares to make (> 0) or to remove (< 0) to reach the target, for the first kind (the plain one
        first) that is not at its target; 0 when every kind is."""
        if self.disabled is not None:
            return 0
        with self._lock:
            return next((w for w in (self.target - len(n) for n in self._names.values()) if w), 0)

    def take(self, alloc_dir: str, task: str, log_names: tuple[str, ...] = (), kind: str = "") -> bool:
        """Move a spare of `kind` to `alloc_dir` with its task dirs named `task` and its empty log files
        `log_names` (stdout's, stderr's; a placeholder without a name is removed). False (nothing changed) when
        the pool has none or the alloc dir exists; the caller then makes the directories itself."""
        with self._lock:
            names = self._names.get(kind)
            if not names or self.disabled is not None:
                return False
            name = names.pop()
            extra = self._kinds[kind]
        src = f"{self.root}/{name}"
        logs = f"{src}/alloc/logs"
        renamed = [(f"{src}/{PLACEHOLDER}", f"{src}/{task}")]
        renamed += [(f"{logs}/{p}", f"{logs}/{n}") for p, n in zip(LOG_PLACEHOLDERS, log_names)]
        try:
            for old, new in renamed:
                os.rename(old, new)
            for p in LOG_PLACEHOLDERS[len(log_names):]:
                os.unlink(f"{logs}/{p}")
        except OSError:
            remove_tree(src)  # a spare we cannot use: made again later
            return False
        try:
            ksys.rename_noreplace(src, alloc_dir)
        except OSError as e:
            kept = False
            if len(log_names) >= len(LOG_PLACEHOLDERS) and self._undo(renamed):
                with self._lock:
                    kept = self._kinds.get(kind) == extra  # else its kind was defined anew meanwhile
                    if kept:
                        self._names[kind].append(name)
            if not kept:
                remove_tree(src)
            if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                # The alloc root is another filesystem (a mount of its own), or the kernel or filesystem has no
                # renameat2 flags: a spare can never move there.
                self._disable(f"cannot move a spare into {os.path.dirname(alloc_dir)}: {e.strerror}")
            return False
        return True

    @staticmethod
    def _undo(renamed: list[tuple[str, str]]) -> bool:
        try:
            for old, new in reversed(renamed):
                os.rename(new, old)
        except OSError:
            return False
        return True

    def make_one(self, kind: str = "") -> None:
        """Add one spare of `kind`. It is built under a temporary name and renamed when complete. OSError (a
        full or read-only disk) leaves nothing behind."""
        with self._lock:
            n = self._next
            self._next += 1
            extra = self._kinds[kind]
        tmp = f"{self.root}/tmp-{n}"
        try:
            taskdir.make_skeleton(tmp, PLACEHOLDER, LOG_PLACEHOLDERS, FILE_MODE, extra)
            os.rename(tmp, f"{self.root}/{n}")
        except (OSError, RuntimeError):
            remove_tree(tmp)
            raise
        with self._lock:
            if self._kinds.get(kind) == extra:
                self._names[kind].append(str(n))
                return
        remove_tree(f"{self.root}/{n}")  # its kind was defined anew meanwhile

    def remove_one(self, kind: str = "") -> None:
        with self._lock:
            names = self._names.get(kind)
            if not names:
                return
            name = names.pop(0)
        remove_tree(f"{self.root}/{name}")  # one cut short is removed by the next open(), never handed out

    def step(self) -> bool:
        """Make or remove one spare towards the target (the plain kind first). True while more is left to do."""
        if self.disabled is not None:
            return False
        with self._lock:
            gaps = [(kind, self.target - len(names)) for kind, names in self._names.items()]
        for kind, want in gaps:
            if want > 0:
                self.make_one(kind)
                break
            if want < 0:
                self.remove_one(kind)
                break
        return self.wanted() != 0

    def clear(self) -> None:
        """Remove every spare and the pool's directory (a drain leaves nothing of tasksd's behind)."""
        with self._lock:
            for names in self._names.values():
                names.clear()
        remove_tree(self.root)
