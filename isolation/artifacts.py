"""Fetch `artifact` blocks into a task's directory, and the no-follow file placement that templates share.

The daemon runs this as root while `<task>/local` belongs to the task's user, who may have left symlinks there
(from an earlier run, or another task of the alloc running as the same user). So nothing here resolves a path
through the task's directories by name: every step below the alloc dir is an `openat` with O_NOFOLLOW on a
directory fd, and files are written under a temporary name and renamed into place (rename replaces a planted
symlink instead of following it).

Downloads and archive unpacking happen first in a private root-only staging dir under the state dir, where no task
can race us; only checked content is then copied into the task dir.

Sources: an absolute host path, `file://PATH`, `http://` and `https://` (with `headers`). A relative path is taken
beneath the task dir (e.g. a file an earlier artifact fetched). Options (as go-getter's query parameters, which
are also read from the URL): `checksum = "md5|sha1|sha256|sha512:HEX"` (verified before anything is unpacked or
placed; a mismatch is a permanent failure) and `archive = "false"`. Archives recognised by name: .tar, .tar.gz,
.tgz, .tar.xz, .txz, .tar.bz2, .tbz2, .zip; single files .gz/.xz/.bz2 are decompressed. Downloads with a checksum
are cached under `<state>/artifacts/cache/<type>-<hex>`; downloads are retried with exponential backoff on
connection errors, timeouts, 429 and 5xx (not on 4xx: those will not get better).

Archives are refused (whole, before any byte lands in the task dir) when an entry is absolute, has a `..`
component, is a device, FIFO or socket, or is a symlink or hard link whose target leaves the destination.
"""
from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tempfile
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator


from isolation import sys as ksys
from isolation.drivers.base import StartError
from isolation.safefile import open_regular

HASHES = ("md5", "sha1", "sha256", "sha512")  # hashlib (OpenSSL) is loaded only when an artifact is checked
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
# Archive and network modules are imported where used: only tasks with artifacts should pay for them (urllib.request
# alone brings in ssl, email and http.client), and the daemon's memory is one of its targets.
SINGLE_SUFFIXES = {".gz": "gzip", ".xz": "lzma", ".bz2": "bz2"}
# Bounds on what one artifact may put on disk: downloads and unpacking run as root into the state dir, and a
# hostile or broken source must not fill it (the daemon's state lives there too).
MAX_DOWNLOAD_BYTES = 2 << 30
MAX_UNPACKED_BYTES = 4 << 30
MAX_ARCHIVE_ENTRIES = 100_000
ATTEMPTS = 4
TIMEOUT = 30.0
_CHUNK = 1 << 16


class ArtifactError(StartError):
    """Fetching an artifact failed. `recoverable` False: retrying cannot help (bad checksum, unsafe archive)."""

    recoverable = True


class PermanentArtifactError(ArtifactError):
    recoverable = False


@dataclass(frozen=True)
class Request:
    """One artifact with every field interpolated and its options resolved."""

    source: str
    destination: str  # relative to the task dir, may go one level up into the alloc dir
    mode: str = "any"
    checksum: str | None = None  # "type:hex"
    archive: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    chown: bool = False


def request_for(artifact, interpolate) -> Request:
    """Build a Request from a manifests.model.Artifact; `interpolate(str) -> str` expands ${...}."""
    source = interpolate(artifact.source)
    opts = {k: interpolate(str(v)) for k, v in artifact.options.items()}
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme in ("http", "https") and parsed.query:
        # go-getter reads its options from the query string and strips them before fetching.
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        for k, v in query:
            if k in ("checksum", "archive"):
                opts.setdefault(k, v)
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in ("checksum", "archive")])
        source = urllib.parse.urlunsplit(parsed._replace(query=rest))
    checksum = opts.get("checksum") or None
    if checksum:
        kind, _, digest = checksum.partition(":")
        if kind not in HASHES or not digest:
            raise PermanentArtifactError(f"artifact {source}: checksum must be TYPE:HEX with TYPE one of "
                                         f"{', '.join(HASHES)}, got {checksum!r}")
        checksum = f"{kind}:{digest.lower()}"
    return Request(
        source=source, destination=interpolate(artifact.destination), mode=artifact.mode, checksum=checksum,
        archive=str(opts.get("archive", "true")).lower() not in ("false", "0", "no"),
        headers=tuple((k, interpolate(str(v))) for k, v in artifact.headers.items()), chown=artifact.chown)


# ---- no-follow paths below a root dir ----------------------------------------------------------------------
def relative_to_task(task: str, dest: str) -> list[str]:
    """Components of `dest` (relative to <alloc>/<task>/) relative to the alloc dir; refuses escapes."""
    norm = posixpath.normpath(posixpath.join(task, dest.lstrip("/")))
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise PermanentArtifactError(f"{dest!r} is outside the allocation directory")
    return [] if norm == "." else norm.split("/")


@contextmanager
def open_dir(root: Path, parts: list[str], create: bool = False, uid: int = 0, gid: int = 0) -> Iterator[int]:
    """A directory fd for root/parts..., never following a symlink below root; creates missing dirs (0755)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts:
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                # The task writes this directory: between the mkdir and the open it can put a directory of its own
                # (set-gid, say) in ours' place. Ours is owned by us; anything else is not chowned, but refused.
                if os.fstat(nfd).st_uid != os.geteuid():
                    os.close(nfd)
                    raise PermanentArtifactError(f"{'/'.join(parts)}: {name!r} was replaced while being created")
                os.fchown(nfd, uid, gid)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PermanentArtifactError(
                        f"{'/'.join(parts)}: {name!r} is a symlink or not a directory; refusing to follow it"
                    ) from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def write_file_at(dfd: int, name: str, data_src, perms: int, uid: int, gid: int) -> None:
    """Write a file in the directory `dfd` via a temp name and rename (never through a planted symlink)."""
    tmp = f".{name}.tasksd-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data_src, bytes):
                f.write(data_src)
            else:
                shutil.copyfileobj(data_src, f, _CHUNK)
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), perms)
        _replace_at(dfd, tmp, name)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise


def _replace_at(dfd: int, tmp: str, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise PermanentArtifactError(f"{name!r} exists and is a directory")
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def write_beneath(alloc_dir: Path, task: str, dest: str, data: bytes, perms: int, uid: int, gid: int) -> None:
    """Write `data` to `dest` (relative to the task dir) without following symlinks; parents are created."""
    parts = relative_to_task(task, dest)
    if not parts:
        raise PermanentArtifactError(f"{dest!r} names a directory, not a file")
    with open_dir(alloc_dir, parts[:-1], create=True) as dfd:
        write_file_at(dfd, parts[-1], data, perms, uid, gid)


def open_beneath(alloc_dir: Path, task: str, path: str) -> BinaryIO:
    """A file below the alloc dir opened for reading without following symlinks, and only if it is a regular
    file: never a device node or FIFO the task left there (see isolation.safefile)."""
    parts = relative_to_task(task, path)
    if not parts:
        raise PermanentArtifactError(f"{path!r} names a directory, not a file")
    with open_dir(alloc_dir, parts[:-1]) as dfd:
        try:
            fd = open_regular(dfd, parts[-1], os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PermanentArtifactError(f"{path!r} is a symlink; refusing to follow it") from None
            if e.errno == errno.EINVAL:
                raise PermanentArtifactError(f"{path!r} is not a regular file") from None
            raise
    return os.fdopen(fd, "rb")


def read_beneath(alloc_dir: Path, task: str, path: str, limit: int = 16 << 20) -> bytes:
    """Read a file below the alloc dir without following symlinks (template `source`)."""
    with open_beneath(alloc_dir, task, path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PermanentArtifactError(f"{path!r} is larger than {limit} bytes")
    return data


def _copy_beneath(alloc_dir: Path, task: str, path: str, staged: Path, what: str) -> None:
    """Copy a file the task's allocation holds into the staging area: streamed and capped like a download (a
    task can leave a sparse file of any size there)."""
    with open_beneath(alloc_dir, task, path) as src, open(staged, "wb") as dst:
        _copy_limited(src, dst, MAX_DOWNLOAD_BYTES, what)


# ---- fetching ----------------------------------------------------------------------------------------------
class _Transient(Exception):
    pass


def _copy_limited(src, dst, limit: int, what: str) -> int:
    """copyfileobj that refuses to write more than `limit` bytes (a hostile source must not fill the disk)."""
    total = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return total
        total += len(chunk)
        if total > limit:
            raise PermanentArtifactError(f"{what} is larger than {limit} bytes; refused")
        dst.write(chunk)


def _download(url: str, headers: tuple[tuple[str, str], ...], out: Path) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "tasksd", **dict(headers)})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp, open(out, "wb") as f:
            _copy_limited(resp, f, MAX_DOWNLOAD_BYTES, f"artifact {url}")
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise ArtifactError(f"artifact {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise _Transient(str(getattr(e, "reason", e))) from e


def download(url: str, headers: tuple[tuple[str, str], ...], out: Path, attempts: int = ATTEMPTS) -> None:
    import tenacity  # only tasks with artifacts pay for it

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts), wait=tenacity.wait_exponential(multiplier=0.25, max=4),
        retry=tenacity.retry_if_exception_type(_Transient), reraise=True)
    try:
        retrying(_download, url, headers, out)
    except _Transient as e:
        raise ArtifactError(f"artifact {url}: download failed after {attempts} attempts: {e}") from None


def file_digest(path: Path, kind: str) -> str:
    import hashlib

    if kind not in HASHES:
        raise ValueError(f"unknown checksum type {kind!r}")
    h = hashlib.new(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _obtain(req: Request, work: Path, cache_dir: Path, alloc_dir: Path, task: str) -> Path:
    """The artifact's bytes (or directory) in the staging dir, checksum verified."""
    scheme = urllib.parse.urlsplit(req.source).scheme
    name = posixpath.basename(urllib.parse.urlsplit(req.source).path.rstrip("/")) or "download"
    kind, digest = req.checksum.split(":", 1) if req.checksum else (None, None)
    cached = cache_dir / f"{kind}-{digest}" if kind else None
    staged = work / "download" / name
    staged.parent.mkdir(mode=0o700)
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, staged)
    elif scheme in ("http", "https"):
        download(req.source, req.headers, staged)
    elif scheme in ("", "file") and not req.source.startswith(("/", "file://")):
        # A relative source is a file in the task dir (say, fetched by an earlier artifact): read it without
        # following whatever the task may have put there.
        _copy_beneath(alloc_dir, task, req.source, staged, f"artifact {req.source}")
    elif scheme in ("", "file"):
        src = Path(urllib.parse.unquote(urllib.parse.urlsplit(req.source).path) if scheme else req.source)
        inside = _within(src, alloc_dir)
        if inside is not None:
            # A host path into the allocation (say "${NOMAD_TASK_DIR}/conf.json" for raw_exec or exec2): its tasks
            # write there, so it is read like a relative source, never following a link they planted.
            _copy_beneath(alloc_dir, task, posixpath.join("..", *inside), staged, f"artifact {req.source}")
            return _verified(req, staged, kind, digest, cached, cache_dir)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {req.source}: no such file or directory") from None
        if stat.S_ISDIR(st.st_mode):
            if req.checksum:
                raise PermanentArtifactError(f"artifact {req.source}: a checksum needs a file, not a directory")
            shutil.copytree(src, staged, symlinks=True)
            return staged
        if not stat.S_ISREG(st.st_mode):
            raise PermanentArtifactError(f"artifact {req.source}: not a regular file or directory")
        shutil.copyfile(src, staged)
    else:
        raise PermanentArtifactError(
            f"artifact {req.source}: unsupported source scheme {scheme!r} (tasksd fetches local paths, file://, "
            f"http:// and https://)")
    return _verified(req, staged, kind, digest, cached, cache_dir)


def _within(path: Path, root: Path) -> list[str] | None:
    """The components of `path` below `root` (both normalised, no symlink resolved), or None if it is not below."""
    p, r = posixpath.normpath(str(path)), posixpath.normpath(str(root))
    if not p.startswith(r + "/"):
        return None
    return p[len(r) + 1:].split("/")


def _verified(req: Request, staged: Path, kind: str | None, digest: str | None, cached: Path | None,
              cache_dir: Path) -> Path:
    """`staged` once its checksum (if any) matched, added to the cache."""
    if kind:
        got = file_digest(staged, kind)
        if got != digest:
            raise PermanentArtifactError(
                f"artifact {req.source}: checksum mismatch: expected {kind}:{digest}, got {kind}:{got}; "
                f"not retrying (fix the source or the checksum)")
        if cached is not None and not cached.exists():
            tmp = cache_dir / f".{cached.name}.{os.getpid()}.{os.urandom(4).hex()}"
            shutil.copyfile(staged, tmp)
            os.replace(tmp, cached)
    return staged


# ---- archives ----------------------------------------------------------------------------------------------
def archive_kind(name: str) -> str | None:
    low = name.lower()
    if any(low.endswith(s) for s in TAR_SUFFIXES):
        return "tar"
    if low.endswith(".zip"):
        return "zip"
    for s in SINGLE_SUFFIXES:
        if low.endswith(s):
            return s
    return None


def _check_member(name: str, link: str | None, hard: bool, source: str) -> str:
    """The member's normalised path, or PermanentArtifactError when it could land outside the destination."""
    if name.startswith("/") or (link is not None and hard and link.startswith("/")):
        raise PermanentArtifactError(f"artifact {source}: archive entry {name!r} has an absolute path; refused")
    parts = name.split("/")
    if ".." in parts or (hard and link is not None and ".." in link.split("/")):
        raise PermanentArtifactError(f"artifact {source}: archive entry {name!r} contains '..'; refused")
    norm = posixpath.normpath(name)
    if link is not None and not hard:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(norm), link))
        if link.startswith("/") or target == ".." or target.startswith("../"):
            raise PermanentArtifactError(
                f"artifact {source}: archive entry {name!r} is a symlink to {link!r}, outside the destination; "
                f"refused")
    return norm


def _check_totals(entries: int, size: int, source: str) -> None:
    if entries > MAX_ARCHIVE_ENTRIES:
        raise PermanentArtifactError(f"artifact {source}: {entries} archive entries, more than the "
                                     f"{MAX_ARCHIVE_ENTRIES} allowed; refused")
    if size > MAX_UNPACKED_BYTES:
        raise PermanentArtifactError(f"artifact {source}: unpacks to {size} bytes, more than the "
                                     f"{MAX_UNPACKED_BYTES} allowed; refused (an archive bomb?)")


def unpack(archive: Path, kind: str, out: Path, source: str) -> None:
    """Unpack into the (empty, private) dir `out` after checking every entry."""
    import importlib
    import lzma
    import tarfile
    import zipfile

    if kind == "tar":
        try:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_totals(len(members), sum(m.size for m in members if m.isfile()), source)
                for m in members:
                    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        raise PermanentArtifactError(
                            f"artifact {source}: archive entry {m.name!r} is a device, FIFO or socket; refused")
                    _check_member(m.name, m.linkname if (m.issym() or m.islnk()) else None, m.islnk(), source)
                # The stdlib's "data" filter re-checks the same rules against the real tree as it extracts.
                tf.extractall(out, members=members, filter="data")
        except tarfile.FilterError as e:
            raise PermanentArtifactError(f"artifact {source}: unsafe archive: {e}") from None
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as e:
            raise PermanentArtifactError(f"artifact {source}: not a readable tar archive: {e}") from None
    elif kind == "zip":
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                # zipfile stops every entry at its declared size, so declared sizes bound what is written.
                _check_totals(len(infos), sum(i.file_size for i in infos), source)
                for info in infos:
                    mode = info.external_attr >> 16
                    link = zf.read(info).decode() if stat.S_ISLNK(mode) else None
                    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                        raise PermanentArtifactError(
                            f"artifact {source}: archive entry {info.filename!r} is a special file; refused")
                    norm = _check_member(info.filename, link, False, source)
                    dest = out / norm
                    if not dest.resolve().is_relative_to(out.resolve()):
                        raise PermanentArtifactError(
                            f"artifact {source}: archive entry {info.filename!r} leaves the destination; refused")
                    if info.is_dir():
                        dest.mkdir(parents=True, exist_ok=True)
                    elif link is not None:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(link, dest)
                    else:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(dest, "xb") as f:
                            shutil.copyfileobj(src, f, _CHUNK)
                        os.chmod(dest, (mode & 0o755) or 0o644)
        except zipfile.BadZipFile as e:
            raise PermanentArtifactError(f"artifact {source}: not a readable zip archive: {e}") from None
    else:
        opener = importlib.import_module(SINGLE_SUFFIXES[kind]).open
        name = archive.name[: -len(kind)] or "file"
        try:
            with opener(archive, "rb") as src, open(out / name, "xb") as f:
                _copy_limited(src, f, MAX_UNPACKED_BYTES, f"artifact {source} (decompressed)")
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise PermanentArtifactError(f"artifact {source}: cannot decompress: {e}") from None


# ---- placing into the task dir -----------------------------------------------------------------------------
def _copy_into(src: Path, dfd: int, name: str, uid: int, gid: int) -> None:
    """Copy the checked staging entry `src` to `name` in directory `dfd`, never following what is there."""
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, 0o755, dir_fd=dfd)
        except FileExistsError:
            pass
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PermanentArtifactError(f"{name!r} in the destination is a symlink or a file where the "
                                             f"artifact has a directory; refused") from None
            raise
        try:
            os.fchown(sub, uid, gid)
            os.fchmod(sub, stat.S_IMODE(st.st_mode) & 0o755 | 0o700)
            for child in sorted(os.listdir(src)):
                _copy_into(src / child, sub, child, uid, gid)
        finally:
            os.close(sub)
    elif stat.S_ISLNK(st.st_mode):
        tmp = f".{name}.tasksd-{os.urandom(4).hex()}"
        os.symlink(os.readlink(src), tmp, dir_fd=dfd)
        # Chowned through a descriptor of the link we made, not by name: the task writes this directory and can
        # learn the temp name (inotify), and a hard link it swapped in would be chowned in the link's place.
        pfd = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            st = os.fstat(pfd)
            if not stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
                raise PermanentArtifactError(f"{name!r}: the link being placed was replaced; refused")
            ksys.chown_path_fd(pfd, uid, gid)
        finally:
            os.close(pfd)
        _replace_at(dfd, tmp, name)
    elif stat.S_ISREG(st.st_mode):
        with open(src, "rb") as f:
            write_file_at(dfd, name, f, stat.S_IMODE(st.st_mode) & 0o777 & ~0o022 | 0o400, uid, gid)


def fetch(req: Request, *, alloc_dir: Path, task: str, state_dir: Path, uid: int, gid: int) -> list[str]:
    """Fetch one artifact into the task dir. Returns the names placed (relative to the destination)."""
    cache_dir = state_dir / "artifacts" / "cache"
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir / "artifacts", 0o700)
    parts = relative_to_task(task, req.destination)
    owner = (uid, gid) if req.chown else (0, 0)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=state_dir / "artifacts") as tmpd:
        work = Path(tmpd)
        got = _obtain(req, work, cache_dir, alloc_dir, task)
        kind = archive_kind(got.name) if req.archive and got.is_file() and req.mode != "file" else None
        if kind is not None:
            out = work / "unpacked"
            out.mkdir(mode=0o700)
            unpack(got, kind, out, req.source)
            got = out
        if req.mode == "file":
            if not got.is_file():
                raise PermanentArtifactError(f"artifact {req.source}: mode \"file\" needs a single file")
            if not parts:
                raise PermanentArtifactError(f"artifact {req.source}: mode \"file\" needs a file destination")
            with open_dir(alloc_dir, parts[:-1], True, *owner) as dfd:
                _copy_into(got, dfd, parts[-1], *owner)
            return [parts[-1]]
        if req.mode == "dir" and not got.is_dir():
            raise PermanentArtifactError(f"artifact {req.source}: mode \"dir\" needs an archive or a directory")
        with open_dir(alloc_dir, parts, True, *owner) as dfd:
            if got.is_dir():
                names = sorted(os.listdir(got))
                for child in names:
                    _copy_into(got / child, dfd, child, *owner)
                return names
            _copy_into(got, dfd, got.name, *owner)
            return [got.name]


def fetch_all(artifacts, interpolate, *, alloc_dir: Path, task: str, state_dir: Path, uid: int,
              gid: int) -> None:
    for a in artifacts:
        req = request_for(a, interpolate)
        try:
            fetch(req, alloc_dir=alloc_dir, task=task, state_dir=state_dir, uid=uid, gid=gid)
        except ArtifactError:
            raise
        except OSError as e:
            raise ArtifactError(f"artifact {req.source}: {e}") from None

