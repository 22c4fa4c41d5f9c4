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


def remove_owned(root: str | os.PathLike, uid: int, skip: frozenset[tuple[int, int]] = frozenset()) -> int:
    """Delete every entry below `root` that `uid` owns, each with everything below it, and return how many there
    were. For a dynamic uid given back to the pool: whatever its task left in a shared directory (/tmp) would
    otherwise belong to the next task that gets the id. Entries of other owners are kept, and looked into when
    they are directories on root's filesystem (other mounts below it are not entered); `root` itself is never
    removed, nor anything whose (st_dev, st_ino) is in `skip` (tasksd's state dir, when it lies below root). Like
    remove_tree: no symlink is followed, only directories are opened (O_NONBLOCK), no recursion in Python. An
    owned entry that cannot be removed is left (counted all the same; the caller may check again)."""
    try:
        top = open_dir(root)
    except OSError:
        return 0  # missing, or a symlink: nothing of ours to walk
    dev = os.fstat(top).st_dev
    found = 0
    stack = [(top, _names(top))]
    try:
        while stack:
            fd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in skip:
                continue
            if st.st_uid == uid:
                found += 1
                _remove_below(fd, name)
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
                continue
            try:
                sub = os.open(name, _SUBDIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            sst = os.fstat(sub)
            if (sst.st_ino, sst.st_dev) != (st.st_ino, st.st_dev):
                os.close(sub)  # swapped between the stat and the open: not what was looked at
                continue
            stack.append((sub, _names(sub)))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return found


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
