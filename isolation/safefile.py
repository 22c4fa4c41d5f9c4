"""Opening files that a task can replace, as root, without ever opening anything but a regular file.

Log files and template sources lie in directories a task may write (a root task or one granted DAC_OVERRIDE
writes alloc/logs through /alloc; every task writes its local/). There it can leave a symlink (root would read or
write through it anywhere), a FIFO (an open or read blocks forever) or, with CAP_MKNOD, a device node: the task's
own mounts are nodev, but we open it on the host, where the driver's open() runs for real (a watchdog device
reboots the machine when opened and left). So the name is first opened O_PATH, which opens nothing, then checked
on that descriptor, then reopened through it: the inode checked is the inode opened.
"""
from __future__ import annotations

import errno
import os
import stat

from isolation import sys as ksys

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def open_regular(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """Open `name` in the directory `dir_fd` with `flags` only if it is a regular file. O_CREAT makes a missing
    file (exclusively, so nothing can be slipped in between). Raises OSError: ELOOP for a symlink, EINVAL for
    anything else that is not a regular file, ENOENT when missing without O_CREAT."""
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
    if flags & os.O_CREAT:
        # Making it is the common case (a new task's log file): O_EXCL creates a regular file or fails, so what is
        # opened needs no check. Only when something is there already is it looked at first.
        try:
            return os.open(name, flags | os.O_EXCL, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
    for _ in range(8):
        try:
            pfd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            try:
                return os.open(name, flags | os.O_EXCL, mode, dir_fd=dir_fd)
            except FileExistsError:
                continue  # made meanwhile: look at what it is
        try:
            st = os.fstat(pfd)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, f"{name}: a symlink, not followed")
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{name}: not a regular file")
            return os.open(f"/proc/self/fd/{pfd}", flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))
        finally:
            os.close(pfd)
    raise OSError(errno.EAGAIN, f"{name}: replaced again and again while being opened")


def open_dir(path: str | os.PathLike) -> int:
    """A directory descriptor for `path` whose last component is not a symlink."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_regular_path(path: str | os.PathLike, flags: int = os.O_RDONLY) -> int:
    """open_regular for a path: its directory is opened without following a final symlink, then the file."""
    head, name = os.path.split(os.fspath(path))
    dfd = open_dir(head or ".")
    try:
        return open_regular(dfd, name, flags)
    finally:
        os.close(dfd)


_SUBDIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def remove_tree(path: str | os.PathLike) -> None:
    """Delete `path` and everything below it, in a tree that others may be changing while we do (an alloc dir:
    its tmp and data directories are world-writable). Never follows a symlink; never opens anything but a
    directory, and that with O_DIRECTORY|O_NONBLOCK, so a directory swapped for a FIFO at the right moment cannot
    block us (shutil.rmtree opens what it saw as a directory with a plain O_RDONLY, which waits forever for a
    FIFO's writer, and a hung GC holds one of the controller's workers); never recurses in Python (a task can nest
    directories deeper than the interpreter's limit). What cannot be removed is left, as rmtree(ignore_errors)
    would: the caller decides whether leftovers matter."""
    head, name = os.path.split(os.path.normpath(os.fspath(path)))
    try:
        top = open_dir(head or ".")
    except OSError:
        return
    try:
        _remove_below(top, name)
    finally:
        os.close(top)


def _remove_below(parent: int, name: str) -> None:
    if _unlink_nondir(parent, name):
        return
    try:
        fd = os.open(name, _SUBDIR_FLAGS, dir_fd=parent)
    except OSError:
        _unlink_nondir(parent, name)  # swapped for a non-directory meanwhile, or gone
        return
    # Frames of (directory fd, names left in it, its parent's fd, its name): one fd per level, no recursion.
    stack = [(fd, _names(fd), parent, name)]
    while stack:
        fd, names, up, here = stack[-1]
        if not names:
            stack.pop()
            os.close(fd)
            try:
                os.rmdir(here, dir_fd=up)
            except OSError:
                pass
            continue
        entry = names.pop()
        if _unlink_nondir(fd, entry):
            continue
        try:
            sub = os.open(entry, _SUBDIR_FLAGS, dir_fd=fd)
        except OSError:
            _unlink_nondir(fd, entry)
            continue
        stack.append((sub, _names(sub), fd, entry))


MAX_OWNED_DEPTH = 256  # directory levels remove_owned descends (one descriptor each); deeper is reported as left


def remove_owned(root: str | os.PathLike, uid: int, skip: frozenset[tuple[int, int]] = frozenset()) -> tuple[int, int]:
    """Delete what `uid` owns below `root`; return (entries removed, owned entries left).

    For a dynamic uid given back to the pool: what its task left in a shared directory (/tmp) would otherwise
    belong to the next task that gets the id. Every directory on root's filesystem is looked into, whoever owns
    it. An owned file, symlink, socket or FIFO is unlinked; an owned directory is first chowned to root through the
    descriptor it was verified on (so whatever happens next, it is no longer the uid's), emptied of the uid's
    entries, and removed when nothing else is in it: other owners' entries, and mounts, are never deleted. Entries
    on other filesystems and those whose (st_dev, st_ino) is in `skip` (tasksd's state dir) are not touched. No
    symlink is followed, `root`'s path included; only directories are opened (O_NONBLOCK), each checked to be the
    inode that was looked at. At most MAX_OWNED_DEPTH levels are held open: a deeper tree counts as left, as does
    a root that cannot be opened safely, so the caller keeps the uid out of the pool rather than hand it on with
    files. Names are unlinked by name: in a directory writable by a third party that party could swap one in
    between, but could unlink it as well, so nothing is removed that it could not remove itself."""
    try:
        top = ksys.openat2(ksys.AT_FDCWD, os.fspath(root), _SUBDIR_FLAGS, ksys.RESOLVE_NO_SYMLINKS)
    except FileNotFoundError:
        return 0, 0
    except OSError:
        return 0, 1  # a symlink on the way, or unreadable: cannot be walked safely
    dev = os.fstat(top).st_dev
    removed = left = 0
    # Frames: [directory fd, names left in it, parent fd, its name there if it was the uid's, else None].
    stack: list[list] = [[top, _names(top), -1, None]]
    try:
        while stack:
            fd, names, up, here = stack[-1]
            if not names:
                stack.pop()
                if here is not None:  # an owned directory (root's now): gone if nothing else is left in it
                    try:
                        os.rmdir(here, dir_fd=up)
                        removed += 1
                    except OSError:
                        pass  # others' entries or a mount remain: it stays, root's
                os.close(fd)
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev or (st.st_dev, st.st_ino) in skip:
                continue
            owned = st.st_uid == uid
            if not stat.S_ISDIR(st.st_mode):
                if owned:
                    try:
                        os.unlink(name, dir_fd=fd)
                        removed += 1
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left += 1
                continue
            if len(stack) >= MAX_OWNED_DEPTH:
                left += 1  # what lies below is not known
                continue
            try:
                sub = os.open(name, _SUBDIR_FLAGS, dir_fd=fd)
            except OSError:
                left += owned
                continue
            sst = os.fstat(sub)
            if (sst.st_dev, sst.st_ino) != (st.st_dev, st.st_ino):
                os.close(sub)  # swapped between the look and the open: not what was looked at
                left += owned
                continue
            if sst.st_uid == uid:
                try:
                    os.fchown(sub, 0, 0)
                except OSError:
                    os.close(sub)
                    left += 1
                    continue
                stack.append([sub, _names(sub), fd, name])  # removed once empty (it is root's now)
            else:
                stack.append([sub, _names(sub), fd, None])  # someone else's: only looked into
    finally:
        for frame in stack:
            os.close(frame[0])
    return removed, left


def _names(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []


def _unlink_nondir(dir_fd: int, name: str) -> bool:
    """Unlink `name` unless it is a directory (Linux's unlink says EISDIR then). True when it is gone."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        return False
    except OSError:
        return True  # cannot be removed (EPERM on an immutable file...): leave it, as rmtree(ignore_errors) does
