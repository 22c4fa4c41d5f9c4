"""Reading task logs for `tasksctl logs`: the tail across rotated files, and following the active file."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from isolation.logs import read_tail
from isolation.safefile import open_regular_path

FOLLOW_INTERVAL = 0.1  # only while a client follows: interactive, not part of supervision
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


def follow_log(logdir: Path, base: str, stop: Callable[[], bool], start: BinaryIO | None = None) -> Iterator[bytes]:
    """Yield what is appended to the active file (from `start`, see open_active, else from its end when first
    seen); when it rotates (new inode), continue in the new one."""
    path = logdir / base
    f = start
    ino = os.fstat(f.fileno()).st_ino if f is not None else None
    try:
        while not stop():
            if f is None:
                f = _open(path)
                if f is None:
                    time.sleep(FOLLOW_INTERVAL)
                    continue
                ino = os.fstat(f.fileno()).st_ino
                f.seek(0, os.SEEK_END)
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
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
                pass
            yield b""  # lets the caller notice a gone client between polls
            time.sleep(FOLLOW_INTERVAL)
    finally:
        if f is not None:
            f.close()
