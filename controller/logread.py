"""Reading task logs for `tasksctl logs`: the tail across rotated files, and following the active file."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

from isolation.logs import read_tail

FOLLOW_INTERVAL = 0.1  # only while a client follows: interactive, not part of supervision


def read_log(logdir: Path, base: str, tail: int) -> bytes:
    if tail is not None and tail >= 0:
        return b"".join(read_tail(logdir, base, tail))
    try:
        return (logdir / base).read_bytes()
    except FileNotFoundError:
        return b""


def follow_log(logdir: Path, base: str, stop: Callable[[], bool]) -> Iterator[bytes]:
    """Yield what is appended to the active file; when it rotates (new inode), continue in the new one."""
    path = logdir / base
    f = None
    ino = None
    try:
        while not stop():
            if f is None:
                try:
                    f = open(path, "rb")
                    st = os.fstat(f.fileno())
                    ino = st.st_ino
                    f.seek(0, os.SEEK_END)
                except FileNotFoundError:
                    time.sleep(FOLLOW_INTERVAL)
                    continue
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            try:
                if os.stat(path).st_ino != ino:
                    rest = f.read()
                    if rest:
                        yield rest
                    f.close()
                    f = open(path, "rb")
                    ino = os.fstat(f.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            yield b""  # lets the caller notice a gone client between polls
            time.sleep(FOLLOW_INTERVAL)
    finally:
        if f is not None:
            f.close()
