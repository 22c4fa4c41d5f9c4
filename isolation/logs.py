"""Task output files: `<dir>/<base>` is always the active file, rotated files are `<base>.1` (newest) ... `<base>.N`.

Naming: the active file never changes name, so `tail -F alloc/logs/web.stdout` keeps following across rotations
(Nomad writes `<task>.stdout.<N>` with a moving N, hashicorp/nomad#17366, #27460). On rotation the active file
becomes `<base>.1`, `.1` becomes `.2`, and so on; at most `max_files` files exist, the active one included, so the
oldest is dropped.

Line rule (what a reader can rely on):
- Output is written through at once, partial lines too: nothing waits in memory, so `tail -F` is current and a
  launcher that dies loses nothing it has read from the pipe.
- A file is rotated only between lines. A line that does not fit in what is left of the active file goes to a
  fresh file; a line that was already begun in the active file is finished there, so a file may grow past
  max_file_size by the rest of that one line.
- A line is split only when it is longer than max_file_size: once more than max_file_size bytes of a line sit past
  the limit (the file would exceed 2 x max_file_size), the file is rotated mid-line and the line goes on in the next
  file. Disk use per file is therefore bounded by 2 x max_file_size, memory by nothing at all.

Write errors (ENOSPC, EDQUOT, EIO, a removed directory...) never reach the caller: the bytes are dropped and
counted in `dropped_bytes`, `last_errno` says why. Output that resumes after a drop continues whatever line was on
disk, so a full disk can merge two lines; that is the price of never blocking the task.

This runs inside the single-threaded launcher for every task, hence raw fds, no userspace buffer and one fstat
plus usually one write(2) per chunk read from the pipe.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from isolation.safefile import open_dir, open_regular, open_regular_path

# O_RDWR only so a reopened file's last byte can be pread (O_APPEND still puts every write at the end).
# open_regular adds O_NOFOLLOW and O_CLOEXEC, and opens nothing that is not a regular file (a FIFO, a device).
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT
# Task output can hold secrets; the alloc/logs directory decides who may enter, this keeps others out of the file.
FILE_MODE = 0o640
_NL = 0x0A


def rotated_name(base: str, n: int) -> str:
    """Name of the n-th newest rotated file (n >= 1); n == 0 is the active file."""
    return base if n == 0 else f"{base}.{n}"


def _rotated_indexes(directory: Path | int, base: str) -> list[int]:
    """Indexes of the rotated files present, ascending (newest first). Names that only look similar are ignored.
    `directory` may be an open directory descriptor."""
    prefix = base + "."
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if name.startswith(prefix):
            suffix = name[len(prefix):]
            if suffix.isdigit() and suffix[0] != "0":
                out.append(int(suffix))
    out.sort()
    return out


class RotatingLog:
    """Append-only writer of one output stream with size-based rotation at line boundaries (see module doc)."""

    # Two per task in the launcher, for the task's whole life: slots and a plain string for the directory (a Path
    # with its parts list cost ~1 KB per writer).
    __slots__ = ("dir", "base", "max_files", "max_file_size", "dropped_bytes", "last_errno", "rotations", "_fd",
                 "_size", "_line_open", "_closed")

    def __init__(self, dir: str | os.PathLike, base: str, max_files: int, max_file_size: int) -> None:
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files}")
        if max_file_size < 1:
            raise ValueError(f"max_file_size must be >= 1 byte, got {max_file_size}")
        if not base or "/" in base or base in (".", ".."):
            raise ValueError(f"log base name must be a plain file name, got {base!r}")
        self.dir = os.fspath(dir)
        self.base = base
        self.max_files = max_files
        self.max_file_size = max_file_size
        self.dropped_bytes = 0
        self.last_errno: int | None = None
        self.rotations = 0
        self._fd: int | None = None
        self._size = 0
        # True when the active file ends inside a line (its last byte is not a newline).
        self._line_open = False
        self._closed = False
        self._open(prune_beyond=max_files - 1)

    # ---- public ------------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes in the active file as far as this writer knows."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append task output. Never raises for I/O errors (see module doc) and never blocks on a full disk."""
        if self._closed:
            raise ValueError("write to a closed RotatingLog")
        buf = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        n = len(buf)
        if n == 0:
            return
        if not self._ensure_open():
            self._drop(n, self.last_errno)
            return
        mv = memoryview(buf)  # slices of it go to write(2) without copying
        limit = self.max_file_size
        pos = 0
        while pos < n:
            if self._fd is None:  # a rotation could not open the new active file
                self._drop(n - pos, self.last_errno)
                return
            room = limit - self._size
            rest = n - pos
            if rest <= room:
                end = n
            else:
                # Whole lines that still fit go to this file; the first line that does not fit decides below.
                cut = buf.rfind(b"\n", pos, pos + room) if room > 0 else -1
                if cut >= 0:
                    end = cut + 1
                elif self._size > 0 and not self._line_open:
                    if self._rotate():
                        continue
                    end = n  # see below
                else:
                    # The line began in this file (or the file is empty): finish it here, up to twice the limit.
                    cap = 2 * limit - self._size
                    if cap <= 0:
                        if self._rotate():
                            continue
                        end = n
                    else:
                        nl = buf.find(b"\n", pos, pos + min(cap, rest))
                        if nl >= 0:
                            end = nl + 1
                        elif rest <= cap:
                            end = n
                        else:
                            # Longer than the limit allows: split the line (the only place a line is ever split).
                            end = pos + cap
            # end == n after a failed rotation (rename refused, e.g. a read-only remount): the output stays in the
            # current file rather than being lost; the next write tries rotating again.
            if not self._write(mv, pos, end):
                self._drop(n - end, self.last_errno)
                return
            pos = end

    def flush(self) -> None:
        """Nothing to do: every byte is handed to the kernel in write(). Kept so callers can treat this like a file."""

    def release(self) -> None:
        """Close the file descriptor but stay usable: the next write reopens the active file (and re-reads its
        size). Lets a launcher with thousands of quiet tasks keep only the recently written logs open."""
        self._close_fd()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """Close the active file. Idempotent."""
        self._closed = True
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------------------------
    @contextmanager
    def _dir_fd(self) -> Iterator[int]:
        """The log directory, never through a symlink: it lies in the task's alloc dir, and a task that may
        rename there (a root task in its chroot) could otherwise point us, as root, at any host directory. Every
        open, rename and unlink below is relative to this descriptor."""
        fd = open_dir(self.dir)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open(self, prune_beyond: int | None = None) -> bool:
        """Open (or make) the active file. prune_beyond: first remove the rotated files past that index (through
        the same directory descriptor: a new task's two log files were a tenth of its start)."""
        try:
            with self._dir_fd() as dfd:
                if prune_beyond is not None:
                    self._prune(dfd, prune_beyond)
                fd = open_regular(dfd, self.base, _OPEN_FLAGS, FILE_MODE)
        except OSError as e:
            self.last_errno = e.errno
            self._fd = None
            return False
        try:
            size = os.fstat(fd).st_size
            # Continue a file left by an earlier launcher: its size counts, and so does a line it left unfinished.
            last = os.pread(fd, 1, size - 1) if size else b"\n"
        except OSError as e:
            self.last_errno = e.errno
            size, last = 0, b"\n"
        self._fd = fd
        self._size = size
        self._line_open = last != b"\n"
        return True

    def _ensure_open(self) -> bool:
        """Reopen the active file if it is not open or was deleted behind our back (an operator's rm)."""
        fd = self._fd
        if fd is not None:
            try:
                if os.fstat(fd).st_nlink > 0:
                    return True
            except OSError as e:
                self.last_errno = e.errno
            self._close_fd()
        return self._open()

    def _write(self, mv: memoryview, start: int, end: int) -> bool:
        """Write mv[start:end] completely, or drop what could not be written. True if everything was written."""
        fd = self._fd
        assert fd is not None
        pos = start
        while pos < end:
            try:
                done = os.write(fd, mv[pos:end])
            except InterruptedError:
                continue
            except OSError as e:
                self._drop(end - pos, e.errno)
                break
            if done <= 0:  # not expected for regular files; treat like a full disk instead of spinning
                self._drop(end - pos, errno.ENOSPC)
                break
            pos += done
        if pos > start:
            self._size += pos - start
            self._line_open = mv[pos - 1] != _NL
        return pos == end

    def _drop(self, n: int, err: int | None) -> None:
        self.dropped_bytes += n
        self.last_errno = err

    def _rotate(self) -> bool:
        """Shift `.k` to `.k+1`, the active file to `.1`, and open a fresh active file. False if renaming failed."""
        keep = self.max_files - 1
        try:
            with self._dir_fd() as d:
                try:
                    self._shift(d, keep)
                except FileNotFoundError:
                    pass  # the active file was removed meanwhile: a fresh one is what we want anyway
        except OSError as e:
            self.last_errno = e.errno
            return False
        self._close_fd()
        self.rotations += 1
        self._open()
        return True

    def _shift(self, d: int, keep: int) -> None:
        """Rotate the files in directory `d`: `.k` to `.k+1`, the active file to `.1` (or away when keep is 0)."""
        if keep == 0:
            os.unlink(self.base, dir_fd=d)
            return
        # Renaming onto the oldest kept name replaces it, which is the deletion of the oldest file. Only the files
        # present are renamed: rotation costs O(files), not O(max_files).
        for k in reversed(_rotated_indexes(d, self.base)):
            if k < keep:
                try:
                    os.rename(rotated_name(self.base, k), rotated_name(self.base, k + 1), src_dir_fd=d, dst_dir_fd=d)
                except FileNotFoundError:
                    pass
        os.rename(self.base, rotated_name(self.base, 1), src_dir_fd=d, dst_dir_fd=d)

    def _prune(self, d: int, keep: int) -> None:
        """Remove rotated files beyond what max_files allows (max_files may have been lowered since last run)."""
        for k in _rotated_indexes(d, self.base):
            if k > keep:
                try:
                    os.unlink(rotated_name(self.base, k), dir_fd=d)
                except OSError:
                    pass


def log_files(dir: Path, base: str) -> list[Path]:
    """The files of one stream, oldest first, the active file last (if it exists)."""
    d = Path(dir)
    out = [d / rotated_name(base, k) for k in reversed(_rotated_indexes(d, base))]
    active = d / base
    if active.exists():
        out.append(active)
    return out


def read_tail(dir: Path, base: str, n_lines: int, block_size: int = 65536, active_end: int | None = None) -> list[bytes]:
    """The last n_lines lines across the active and rotated files, oldest first, each with its newline (the last one
    may lack it: a line still being written). A line split across files (see the module doc) is joined again.
    active_end: read the active file only up to this offset (a follower continues from there)."""
    if n_lines <= 0:
        return []
    chunks: list[bytes] = []  # newest first
    newlines = 0
    first = True  # the newest byte of all: a trailing newline there ends the last line, it does not start one
    for path in reversed(log_files(dir, base)):
        try:
            f = os.fdopen(open_regular_path(path), "rb")
        except OSError:
            continue  # rotated away meanwhile, or not a regular file (never opened: see isolation.safefile)
        with f:
            end = f.seek(0, os.SEEK_END)
            if active_end is not None and path == dir / base:
                end = min(end, active_end)
            while end > 0:
                start = max(0, end - block_size)
                f.seek(start)
                block = f.read(end - start)
                end = start
                if first and block:
                    newlines -= block.endswith(b"\n")
                    first = False
                chunks.append(block)
                newlines += block.count(b"\n")
                if newlines >= n_lines:
                    break
        if newlines >= n_lines:
            break
    data = b"".join(reversed(chunks))
    return data.splitlines(keepends=True)[-n_lines:]
