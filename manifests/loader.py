"""The public entry point: manifest files and text -> jobs and problems. Never raises on bad input."""
from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from manifests.build import build_jobs
from manifests.digest import sha256_hex
from manifests.hcl import parse_hcl
from manifests.model import Job
from manifests.problems import Problem

MAX_MANIFEST_BYTES = 1024 * 1024  # manifests are small; a bigger file is a mistake or hostile
HCL_SUFFIXES = (".hcl", ".nomad")
YAML_SUFFIXES = (".yaml", ".yml")
# Editor, package-manager and backup droppings that must never be read as manifests.
_IGNORED_PATTERNS = ("*~", "*.swp", "*.swx", "4913", "*.bak", "*.dpkg-*", "*.rpmnew", "*.rpmsave")


@dataclass(frozen=True, slots=True)
class LoadResult:
    path: str
    jobs: tuple[Job, ...]  # empty whenever errors is not: an invalid file yields no job to run
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    content_hash: str  # sha256 of the bytes read, "" when the file could not be read
    names: tuple[str, ...] = field(default=())  # job names found, even in an invalid file

    @property
    def valid(self) -> bool:
        return not self.errors


# One compiled pattern instead of eight fnmatch calls per name: the watcher filters the whole directory on every
# change, so with a thousand manifests this is on the hot path.
_IGNORED = re.compile("|".join(fnmatch.translate(p) for p in _IGNORED_PATTERNS))
_SUFFIXES = HCL_SUFFIXES + YAML_SUFFIXES


def is_manifest_name(name: str) -> bool:
    """The file filter shared by `tasksctl validate DIR` and the watcher."""
    return is_manifest_base(os.path.basename(name))


def is_manifest_base(base: str) -> bool:
    """is_manifest_name for a name that is already a base name (a directory listing's entries)."""
    if not base or base[0] == "." or not base.endswith(_SUFFIXES):
        return False
    return _IGNORED.match(base) is None


def scan_dir(directory: str | os.PathLike[str]) -> list[Path]:
    """Manifest files directly in `directory`, sorted; symlinks are followed (ConfigMap-style `..data` swaps)."""
    return [Path(p) for p in scan_dir_paths(directory)]


def scan_dir_paths(directory: str | os.PathLike[str]) -> list[str]:
    """scan_dir as plain strings (sorting Path objects costs more than the scan itself for big directories)."""
    out = []
    with os.scandir(directory) as it:
        for entry in it:
            if not is_manifest_base(entry.name):  # already a base name: no basename() per file
                continue
            try:
                if entry.is_file(follow_symlinks=True):
                    out.append(entry.path)
            except OSError:
                continue
    out.sort()
    return out


def detect_format(path: str, text: str) -> str:
    lower = path.lower()
    if lower.endswith(YAML_SUFFIXES):
        return "yaml"
    if lower.endswith(HCL_SUFFIXES):
        return "hcl"
    # stdin or an odd name: YAML manifests start with `job:`/`task:` (or a comment, a document marker).
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", "//")):
            continue
        return "yaml" if s == "---" or re.match(r"^[\w-]+\s*:(\s|$)", s) else "hcl"
    return "hcl"


class NotRegularFile(OSError):
    pass


def read_regular_file(path: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """Up to limit+1 bytes of a regular file. Non-blocking open and the type checked on the opened file: a FIFO
    or device named (or swapped in) as a manifest is refused, never waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def load_file(path: str | os.PathLike[str]) -> LoadResult:
    p = str(path)
    try:
        data = read_regular_file(p)
    except NotRegularFile:
        return _failed(p, "not a regular file")
    except OSError as e:
        return _failed(p, f"cannot read: {e.strerror or e}")
    return load_bytes(data, p)


def load_bytes(data: bytes, path: str = "<stdin>", fmt: str | None = None, *, _digest: str | None = None
               ) -> LoadResult:
    if len(data) > MAX_MANIFEST_BYTES:
        return _failed(path, f"file is larger than {MAX_MANIFEST_BYTES // 1024} KiB; refusing to parse it")
    digest = _digest or sha256_hex(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return _failed(path, f"not UTF-8 text (byte {e.start})", digest)
    return load_text(text, path, fmt, _digest=digest)


def load_text(text: str, path: str = "<stdin>", fmt: str | None = None, *, _digest: str | None = None) -> LoadResult:
    digest = _digest or sha256_hex(text.encode("utf-8", "surrogatepass"))
    if len(text) > MAX_MANIFEST_BYTES:
        return _failed(path, f"file is larger than {MAX_MANIFEST_BYTES // 1024} KiB; refusing to parse it", digest)
    if text.startswith("\ufeff"):
        text = text[1:]
    fmt = fmt or detect_format(path, text)
    if fmt not in ("hcl", "yaml"):
        return _failed(path, f"unknown manifest format {fmt!r} (hcl or yaml)", digest)
    try:
        if fmt == "hcl":
            root, problems = parse_hcl(text)
        else:
            from manifests.yaml_loader import parse_yaml  # PyYAML is loaded only once a YAML manifest shows up

            root, problems = parse_yaml(text)
        jobs: list[Job] = []
        names: tuple[str, ...] = ()
        if root is not None:
            jobs = build_jobs(root, None if path == "<stdin>" else path, problems)
            # From the tree, not the jobs: a task too broken to build still names the job it would be.
            top = root.blocks_of("job") or root.blocks_of("task")
            names = tuple(b.labels[0] for b in top if b.labels)
    except RecursionError:
        return _failed(path, "the manifest nests too deeply", digest)
    except Exception as e:  # a parser bug must not take the daemon down; report it as a problem in this file
        return _failed(path, f"internal error while reading the manifest: {type(e).__name__}: {e}", digest)
    errors = tuple(_sorted(p for p in problems if p.is_error))
    warnings = tuple(_sorted(p for p in problems if not p.is_error))
    return LoadResult(
        path=path,
        jobs=() if errors else tuple(jobs),
        errors=errors,
        warnings=warnings,
        content_hash=digest,
        names=names,
    )


def _sorted(problems) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def _failed(path: str, message: str, digest: str = "") -> LoadResult:
    return LoadResult(path=path, jobs=(), errors=(Problem(message),), warnings=(), content_hash=digest)
