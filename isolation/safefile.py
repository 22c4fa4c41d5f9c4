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
