"""Reading task logs for `tasksctl logs`: the tail across rotated files, and following the active file."""
from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from isolation import sys as ksys
from isolation.logs import read_tail
from isolation.safefile import open_regular_path

# How often a follower looks at the file when it cannot sleep on inotify (no instance left, or the log directory
# is gone or not there yet): only while a client follows, interactive, not part of supervision.
FOLLOW_INTERVAL = 0.1
# A write, and what a rotation does: the active file renamed away, a new one made.
_LOG_EVENTS = ksys.IN_MODIFY | ksys.IN_CREATE | ksys.IN_MOVED_FROM | ksys.IN_MOVED_TO | ksys.IN_DELETE
# Each watching follower holds an inotify instance, and root's are few and shared with the whole host
# (fs.inotify.max_user_instances, 128 by default; systemd and udev need theirs): followers past this many go by
# the clock. The API allows 128 connections, every one of which could be a follower.
MAX_WATCHING_FOLLOWERS = 8
_watch_slots = threading.BoundedSemaphore(MAX_WATCHING_FOLLOWERS)
CHUNK = 65536


def _open(path: Path) -> BinaryIO | None:
    """A log file for reading, or None when missing or not a regular file: logs lie where a task may write, and
    a symlink, FIFO or device node it left there is never opened (see isolation.safefile)."""
    try:
        return os.fdopen(open_regular_path(path), "rb")
    except OSError:
        return None


def open_active(logdir: Path, base: str) -> BinaryIO | None:
    """The active file opened at its current end: where a follower starts. Taken before the tail is read, and the
    tail is read only up to that offset (its tell()), so a line written in between is sent once, not lost."""
    f = _open(logdir / base)
    if f is not None:
        f.seek(0, os.SEEK_END)
    return f


def read_log(logdir: Path, base: str, tail: int, active_end: int | None = None) -> Iterator[bytes]:
    """The last `tail` lines across the files of a stream, or with a negative tail the whole active file, in
    chunks of at most CHUNK bytes: a log file can be as large as the task's max_file_size, and the daemon must not
    hold it in memory for one reader. Reading stops at the file's size when it was opened (or at `active_end`):
    a task writing without pause cannot keep a reader going for ever."""
    if tail is not None and tail >= 0:
        yield from read_tail(logdir, base, tail, active_end=active_end)
        return
    f = _open(logdir / base)
    if f is None:
        return
    with f:
        left = os.fstat(f.fileno()).st_size if active_end is None else active_end
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


class _Wakeups:
    """What a follower sleeps on between reads: inotify events of the log directory, and the client's socket (a
    hang-up shows there at once)."""

    def __init__(self, logdir: Path, client_fd: int | None) -> None:
        self.logdir = logdir
        self.client_fd = client_fd
        self.inotify: int | None = None
        self._watch()

    def _watch(self) -> None:
        if not _watch_slots.acquire(blocking=False):
            return  # enough followers hold an instance already: by the clock
        try:
            self.inotify = ksys.inotify_watch_dir(self.logdir, _LOG_EVENTS)
        except OSError:
            _watch_slots.release()  # no instance left, or no directory (yet): by the clock

    def wait(self, missing: bool) -> None:
        """Sleep until the directory changes or the client is readable. `missing`: the active file is not there
        (a rotation under way, or the alloc dir was removed and may come back as a new directory that the old
        watch would never see): then look again after FOLLOW_INTERVAL, with a fresh watch."""
        if missing or self.inotify is None:
            self.close()
            if self.client_fd is None:
                time.sleep(FOLLOW_INTERVAL)
            else:
                select.select([self.client_fd], [], [], FOLLOW_INTERVAL)
            self._watch()
            return
        fds = [self.inotify] + ([self.client_fd] if self.client_fd is not None else [])
        select.select(fds, [], [])
        if ksys.inotify_drain(self.inotify) & ksys.IN_IGNORED:
            self.close()  # the watched directory is gone for good: the next turn goes by the clock

    def close(self) -> None:
        if self.inotify is not None:
            os.close(self.inotify)
            self.inotify = None
            _watch_slots.release()


def follow_log(logdir: Path, base: str, stop: Callable[[], bool], start: BinaryIO | None = None,
               client_fd: int | None = None) -> Iterator[bytes]:
    """Yield what is appended to the active file (from `start`, see open_active, else from its end when first
    seen); when it rotates (new inode), continue in the new one. Between reads it sleeps until the log directory
    changes or `client_fd` (the client's connection) becomes readable, then asks `stop` whether to end."""
    path = logdir / base
    # Watched before the first read: a write after that read and before the sleep is then an event already
    # queued, never one slept through.
    wakeups = _Wakeups(logdir, client_fd)
    f = start
    ino = os.fstat(f.fileno()).st_ino if f is not None else None
    try:
        while not stop():
            if f is None:
                f = _open(path)
                if f is None:
                    wakeups.wait(missing=True)
                    continue
                ino = os.fstat(f.fileno()).st_ino
                f.seek(0, os.SEEK_END)
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            missing = False
            try:
                if os.lstat(path).st_ino != ino:
                    rest = f.read()
                    if rest:
                        yield rest
                    f.close()
                    f = _open(path)
                    if f is not None:
                        ino = os.fstat(f.fileno()).st_ino
                    continue
            except FileNotFoundError:
                missing = True
            yield b""  # lets the caller notice a gone client between waits
            wakeups.wait(missing)
    finally:
        wakeups.close()
        if f is not None:
            f.close()
