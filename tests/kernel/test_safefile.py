"""Files a task can replace are never opened unless they are regular files: not through a symlink, not a FIFO
(an open or read would block), not a device node (its driver's open() runs for real on the host, where the
task's nodev mounts do not apply). inotify's IN_OPEN tells whether a node was really opened: an O_PATH open,
which is how tasksd looks first, does not count."""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from controller import logread
from isolation import artifacts
from isolation.logs import RotatingLog, read_tail
from isolation.safefile import open_regular, remove_owned, remove_tree

pytestmark = pytest.mark.root

_IN_OPEN = 0x20
_libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    """Counts real opens of one path (IN_OPEN events)."""

    def __init__(self, path: Path):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert _libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_OPEN) >= 0, os.strerror(ctypes.get_errno())

    def opened(self) -> bool:
        """Whether an IN_OPEN arrived since the last call (IN_IGNORED also arrives once the node is deleted)."""
        seen = False
        while True:
            try:
                buf = os.read(self.fd, 4096)
            except BlockingIOError:
                return seen
            off = 0
            while off < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, off)
                seen |= bool(mask & _IN_OPEN)
                off += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def device(path: Path) -> OpenWatch:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null: harmless if the check were wrong
    watch = OpenWatch(path)
    probe = os.open(path, os.O_RDONLY)  # the watch itself works: a real open is seen
    os.close(probe)
    assert watch.opened()
    return watch


def test_open_regular_opens_only_regular_files(tmp):
    d = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    secret = tmp / "secret"
    secret.write_text("s3cret")
    (tmp / "link").symlink_to(secret)
    os.mkfifo(tmp / "fifo")
    watch = device(tmp / "dev")
    try:
        for name, err in (("link", errno.ELOOP), ("fifo", errno.EINVAL), ("dev", errno.EINVAL)):
            # With O_CREAT too: creating first (the log writer's common case) must not bypass the checks.
            for flags in (os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_APPEND):
                with pytest.raises(OSError) as e:
                    open_regular(d, name, flags)
                assert e.value.errno == err, (name, flags, e.value)
        assert not watch.opened()
        fd = open_regular(d, "secret", os.O_RDONLY)
        assert os.read(fd, 100) == b"s3cret"
        os.close(fd)
        fd = open_regular(d, "secret", os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # an existing file is reopened
        os.write(fd, b"!")
        os.close(fd)
        assert secret.read_text() == "s3cret!"
        fd = open_regular(d, "new", os.O_WRONLY | os.O_CREAT, 0o640)
        os.write(fd, b"x")
        os.close(fd)
        assert stat.S_IMODE((tmp / "new").stat().st_mode) == 0o640 & ~_umask()
        with pytest.raises(FileNotFoundError):
            open_regular(d, "missing", os.O_RDONLY)
    finally:
        watch.close()
        os.close(d)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_the_launchers_log_writer_never_opens_a_device_node_planted_as_its_file(tmp):
    # A task granted CAP_MKNOD and DAC_OVERRIDE can write alloc/logs (through /alloc) and leave a node there.
    watch = device(tmp / "t.stdout")
    try:
        log = RotatingLog(tmp, "t.stdout", 2, 1 << 20)
        log.write(b"output\n")
        log.close()
        assert not watch.opened()
        assert stat.S_ISCHR((tmp / "t.stdout").lstat().st_mode)  # left alone, not written through
    finally:
        watch.close()


def test_log_readers_skip_fifos_devices_and_symlinks(tmp):
    (tmp / "t.stdout").write_bytes(b"new line\n")
    os.mkfifo(tmp / "t.stdout.1")  # a rotated file that is a FIFO: opening it for reading would block forever
    watch = device(tmp / "t.stdout.2")
    out: list = []
    reader = threading.Thread(target=lambda: out.append(b"".join(read_tail(tmp, "t.stdout", 10))), daemon=True)
    reader.start()
    reader.join(timeout=30)
    try:
        assert not reader.is_alive(), "read_tail blocked on a FIFO"
        assert out == [b"new line\n"]
        assert not watch.opened()
    finally:
        watch.close()
        if reader.is_alive():  # unblock it so the test leaves nothing behind
            os.close(os.open(tmp / "t.stdout.1", os.O_WRONLY | os.O_NONBLOCK))
    secret = tmp / "secret"
    secret.write_text("host secret\n")
    (tmp / "e.stdout").symlink_to(secret)
    assert b"".join(logread.read_log(tmp, "e.stdout", tail=-1)) == b""
    assert logread.open_active(tmp, "e.stdout") is None
    assert b"host secret" not in b"".join(read_tail(tmp, "e.stdout", 10))


def test_a_template_source_that_is_a_device_node_is_refused_unopened(tmp):
    alloc = tmp / "alloc"
    (alloc / "t" / "local").mkdir(parents=True)
    watch = device(alloc / "t" / "local" / "app.conf")
    try:
        with pytest.raises(artifacts.PermanentArtifactError, match="not a regular file"):
            artifacts.read_beneath(alloc, "t", "local/app.conf")
        assert not watch.opened()
    finally:
        watch.close()


def test_remove_tree_removes_everything_without_following_or_opening_it(tmp):
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    top = tmp / "alloc"
    (top / "a/b/c").mkdir(parents=True)
    (top / "a/b/c/file").write_text("x")
    (top / "a/link-to-outside").symlink_to(outside)
    (top / "a/b/file-link").symlink_to(outside / "keep")
    os.mkfifo(top / "a/fifo")
    watch = device(top / "a/b/dev")
    deep = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):  # deeper than Python's recursion limit: a task can build this in its tmp
        os.mkdir("d", dir_fd=deep)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=deep)
        os.close(deep)
        deep = nxt
    os.close(deep)
    try:
        remove_tree(top)
        assert not top.exists()
        assert not watch.opened()
        assert (outside / "keep").read_text() == "host file"
    finally:
        watch.close()


UID = 86543  # no account has it: stands for a dynamic uid given back to the pool


def owned(path: Path, uid: int = UID) -> Path:
    os.lchown(path, uid, uid)
    return path


def test_remove_owned_takes_only_what_the_uid_owns_wherever_it_is(tmp):
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    owned(outside / "keep")  # owned, but outside the root: a symlink to it must not lead there
    root = tmp / "shared-tmp"
    root.mkdir(mode=0o1777)
    (root / "f").write_text("x")
    owned(root / "f")
    (root / "mine/deep").mkdir(parents=True)  # the uid's own tree: goes entirely
    (root / "mine/deep/x").write_text("x")
    for p in (root / "mine", root / "mine/deep", root / "mine/deep/x"):
        owned(p)
    (root / "d/sub").mkdir(parents=True)  # the uid's directory holding another user's file
    (root / "d/sub/foreign").write_text("another user's, inside the uid's directory")
    (root / "d/own").write_text("x")
    owned(root / "d")
    owned(root / "d/own")
    (root / "link").symlink_to(outside)
    owned(root / "link")
    (root / "foreign-link").symlink_to(outside)  # root's symlink to a dir of owned files: never followed
    os.mkfifo(root / "fifo")
    owned(root / "fifo")
    (root / "host/.X11-unix").mkdir(parents=True)  # root's directories, with the uid's entries deep inside
    (root / "host/.X11-unix/sock").write_text("")
    owned(root / "host/.X11-unix/sock")
    (root / "host/keep").write_text("root's")
    (root / "other").write_text("another uid's")
    owned(root / "other", UID + 1)
    state = root / "state"  # tasksd's state dir below the root: never entered
    (state / "alloc").mkdir(parents=True)
    (state / "alloc/data").write_text("alloc data stays until its GC")
    owned(state / "alloc/data")

    st = os.stat(state)
    removed, left = remove_owned(root, UID, frozenset({(st.st_dev, st.st_ino)}))
    assert (removed, left) == (8, 0)  # f, mine/deep/x, mine/deep, mine, d/own, link, fifo, .X11-unix/sock
    assert sorted(p.name for p in root.iterdir()) == ["d", "foreign-link", "host", "other", "state"]
    # The other user's file stays, and its directory is no longer the uid's: root's, with its mode kept.
    assert (root / "d/sub/foreign").exists() and not (root / "d/own").exists()
    assert os.stat(root / "d").st_uid == 0 and os.stat(root / "d").st_gid == 0
    assert sorted(p.name for p in (root / "host").rglob("*")) == [".X11-unix", "keep"]
    assert (outside / "keep").read_text() == "host file"
    assert (state / "alloc/data").exists()
    assert root.is_dir()  # the root itself stays, whoever owns it
    assert remove_owned(root, UID) == (1, 0)  # without the skip: the state dir's owned file
    assert remove_owned(root, UID) == (0, 0)


def test_remove_owned_never_leaves_its_filesystem_nor_follows_the_root(tmp):
    from isolation import sys as ksys

    root = tmp / "shared-tmp"
    (root / "mnt").mkdir(parents=True)
    (root / "own/mnt").mkdir(parents=True)  # a mount inside one of the uid's directories
    owned(root / "own")
    mounts = [root / "mnt", root / "own/mnt"]
    for m in mounts:
        ksys.mount("tmpfs", str(m), "tmpfs", 0, "size=1m")
    try:
        for m in mounts:
            (m / "f").write_text("on another filesystem")
            owned(m / "f")
        owned(root / "mnt")  # the mount's own root, owned too: still another filesystem
        assert remove_owned(root, UID) == (0, 0)
        assert all((m / "f").exists() for m in mounts)
        assert os.stat(root / "own").st_uid == 0  # not the uid's any more, though it could not go
    finally:
        for m in mounts:
            ksys.umount2(str(m))
    target = tmp / "target"
    target.mkdir()
    (target / "x").write_text("x")
    owned(target / "x")
    (tmp / "root-link").symlink_to(target)
    assert remove_owned(tmp / "root-link", UID) == (0, 1)  # not walked, and said so
    (tmp / "real").mkdir()
    (tmp / "real/x").write_text("x")
    owned(tmp / "real/x")
    assert remove_owned(tmp / "root-link" / ".." / "real", UID) == (0, 1)  # a symlink anywhere on the way
    assert (target / "x").exists() and (tmp / "real/x").exists()
    assert remove_owned(tmp / "missing", UID) == (0, 0)


def test_remove_owned_reports_what_is_too_deep_to_walk(tmp, monkeypatch):
    from isolation import safefile

    monkeypatch.setattr(safefile, "MAX_OWNED_DEPTH", 3)
    root = tmp / "shared-tmp"
    deep = root / "a/b/c/d"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    owned(deep / "f")
    assert remove_owned(root, UID) == (0, 1)
    assert (deep / "f").exists()
    monkeypatch.setattr(safefile, "MAX_OWNED_DEPTH", 8)
    assert remove_owned(root, UID) == (1, 0)


_FIFO_FLIPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
top = sys.argv[1]
d, f = os.path.join(top, "d"), os.path.join(top, "f")
print("ready", flush=True)
while True:  # keep a directory and a FIFO side by side and swap them, as fast as possible
    try:
        os.mkdir(d)
    except OSError:
        pass
    try:
        os.mkfifo(f)
    except OSError:
        pass
    libc.renameat2(-100, d.encode(), -100, f.encode(), 2)  # RENAME_EXCHANGE
"""


def test_remove_tree_is_not_blocked_by_a_directory_swapped_for_a_fifo(tmp):
    """GC removes alloc dirs whose tmp and data directories anyone may write. Something that swaps a directory for
    a FIFO between the walk's look and its open made shutil.rmtree open the FIFO and wait for a writer forever (a
    controller worker lost for good). Probabilistic by nature: many removals while the swap runs."""
    top = tmp / "shared"
    top.mkdir()
    flipper = subprocess.Popen([sys.executable, "-c", _FIFO_FLIPPER, str(top)], stdout=subprocess.PIPE, text=True)
    done = threading.Event()

    def remove_many():
        for _ in range(300):
            remove_tree(top)
            top.mkdir(exist_ok=True)
        done.set()

    worker = threading.Thread(target=remove_many, daemon=True)
    try:
        assert flipper.stdout.readline().strip() == "ready"
        worker.start()
        finished = done.wait(timeout=120)
    finally:
        flipper.kill()
        flipper.wait()
        if not done.is_set():  # unblock a reader stuck in a FIFO's open, so the test leaves nothing behind
            for name in ("d", "f"):
                try:
                    os.close(os.open(top / name, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            worker.join(timeout=30)
    assert finished, "a removal blocked on a FIFO"
    remove_tree(top)
    assert not top.exists()
