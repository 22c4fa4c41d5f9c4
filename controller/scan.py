"""Read the tasks directory: which manifests exist, which are valid, which jobs each one contributes.

Content decides, never mtime: a stat signature (inode, size, mtime_ns, ctime_ns) only lets an unchanged file skip
the read; any change is read, hashed, and re-parsed only when the hash differs. Symlinks are followed (the
Kubernetes ConfigMap `..data` swap). As root, a manifest is root's command line, so files (and the directory)
writable by group/others or owned by another user are refused.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from manifests.digest import sha256_hex
from manifests.loader import MAX_MANIFEST_BYTES, LoadResult, is_manifest_base, load_bytes, read_regular_file


@dataclass(slots=True)
class FileState:
    path: str
    signature: bytes | None  # signature() of the file's stat: unchanged means not read again
    content_hash: str
    result: LoadResult | None  # None when refused before parsing, or when `known`
    refused: str | None = None
    known: bool = False


@dataclass
class ScanResult:
    files: dict[str, FileState] = field(default_factory=dict)
    dir_error: str | None = None
    # Paths whose FileState is not the very object the previous scan returned (new, edited, re-read or refused
    # anew). Every other path is byte-for-byte what the caller already handled, so it need not look at them.
    changed: set[str] = field(default_factory=set)


# inode, device, size, mtime and ctime in ns, mode, owner: packed into one bytes object (89 bytes per manifest; a
# tuple of ints held ~300).
_SIGNATURE = struct.Struct("=QQqqqQQ")


def signature(st: os.stat_result) -> bytes:
    return _SIGNATURE.pack(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def permission_problem(st: os.stat_result, what: str, strict: bool) -> str | None:
    if not strict or os.geteuid() != 0:
        return None
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {st.st_uid}, not root: refused (a manifest is root's command line)"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refused"
    return None


class Scanner:
    def __init__(self, tasks_dir: str | os.PathLike, strict_permissions: bool = True):
        self.tasks_dir = Path(tasks_dir)
        self.strict = strict_permissions
        self._cache: dict[str, FileState] = {}
        self._names: dict[str, bool] = {}  # name -> passes the manifest filter (a regex match per name otherwise)

    def scan(self, known: "Callable[[str, str], bool] | None" = None, reread: bool = False) -> ScanResult:
        """known(path, digest): the caller already holds the parsed result of this exact content (from its state
        store), so the file is not parsed again — a restart with 1000 manifests re-reads them but parses none.

        reread: read and hash every file even when its stat signature is unchanged (the periodic full resync).
        The signature can miss a same-size rewrite within one timestamp tick on filesystems with coarse
        timestamps; content still decides, so an unchanged file costs a read and nothing else."""
        out = ScanResult()
        try:
            dst = os.stat(self.tasks_dir)
        except OSError as e:
            out.dir_error = f"cannot read tasks dir {self.tasks_dir}: {e.strerror}"
            return out
        problem = permission_problem(dst, f"tasks dir {self.tasks_dir}", self.strict)
        if problem:
            out.dir_error = problem
            return out
        # One tight pass: with 1000 manifests this loop is the whole cost of a rescan, and a rescan follows every
        # change in the directory. Unchanged files cost a listing entry and one stat().
        cache, names, files, changed = self._cache, self._names, out.files, out.changed
        seen_names: dict[str, bool] = {}  # the next scan's name cache: only names listed now (no growth by churn)
        try:
            it = os.scandir(self.tasks_dir)
        except OSError as e:
            out.dir_error = f"cannot read tasks dir {self.tasks_dir}: {e.strerror}"
            return out
        with it:
            for entry in it:
                name = entry.name
                wanted = names.get(name)
                if wanted is None:
                    wanted = is_manifest_base(name)
                seen_names[name] = wanted
                if not wanted:
                    continue
                path = entry.path
                try:
                    st = os.stat(path)  # follows symlinks: the target is what gets run
                except OSError:
                    continue  # vanished between listing and stat (a rename in flight): the next scan sees the result
                if not stat.S_ISREG(st.st_mode):
                    continue
                sig = signature(st)
                cached = cache.get(path)
                if cached is not None and cached.signature == sig and not (reread and cached.refused is None):
                    fs = cached
                else:
                    fs = self._scan_file(path, st, sig, cached, known)
                    if fs is None:
                        continue
                if fs is not cache.get(path):
                    changed.add(path)
                files[path] = fs
        self._cache = dict(files)  # a copy: the caller owns out.files
        self._names = seen_names
        return out

    def forget(self) -> None:
        """Drop every cached verdict: the next scan reads each file again (a changed permission rule)."""
        self._cache = {}

    def _scan_file(self, path: str, st: os.stat_result, sig: bytes, cached: FileState | None,
                   known: Callable[[str, str], bool] | None) -> FileState | None:
        """A file whose stat signature is new (or a re-read): read, hash, and parse only when the content is new."""
        problem = permission_problem(st, path, self.strict)
        if problem:
            return FileState(path, sig, "", None, refused=problem)
        if st.st_size > MAX_MANIFEST_BYTES:
            return FileState(path, sig, "", None, refused=f"{path} is {st.st_size} bytes, more than the "
                                                          f"{MAX_MANIFEST_BYTES} allowed for a manifest")
        try:
            # A FIFO or device renamed over the manifest after the stat above must not block the loop.
            data = read_regular_file(path)
        except OSError:
            return None
        digest = sha256_hex(data)
        if cached is not None and cached.content_hash == digest and cached.result is not None:
            cached.signature = sig
            return cached
        if known is not None and known(path, digest):
            return FileState(path, sig, digest, None, known=True)
        return FileState(path, sig, digest, load_bytes(data, path, _digest=digest))
