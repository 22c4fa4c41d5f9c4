"""Kernel primitives Python 3.11 does not expose, called through libc with ctypes.

Everything here may run in a freshly forked child of the single-threaded launcher just before execve: no threads,
no logging, no imports at call time. Every failure is an OSError(errno, "<step>: <strerror>") so the launcher can
report which step failed.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import signal
import socket
import struct
from collections.abc import Iterable

_libc = ctypes.CDLL(None, use_errno=True)

# Syscall numbers that differ per architecture (glibc has no wrapper for these, or only a recent one).
# Numbers from 424 on are shared by every architecture (the unified syscall table).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "capget": 125, "capset": 126, "rt_sigaction": 13},
    "aarch64": {"pivot_root": 41, "capget": 90, "capset": 91, "rt_sigaction": 134},
}
_MACHINE = os.uname().machine  # what platform.machine() returns, without importing platform
_NR = dict(_SYSCALLS.get(_MACHINE, {}))
_NR.update(open_tree=428, move_mount=429, pidfd_open=434, close_range=436, openat2=437, mount_setattr=442,
           landlock_create_ruleset=444, landlock_add_rule=445, landlock_restrict_self=446)

# unshare(2) / setns(2) namespace flags.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags.
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# close_range(2) flags.
CLOSE_RANGE_UNSHARE = 1 << 1
CLOSE_RANGE_CLOEXEC = 1 << 2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_PDEATHSIG = 2
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_LOWER = 3
PR_CAP_AMBIENT_CLEAR_ALL = 4

# pidfd ioctl (include/uapi/linux/pidfd.h): _IOWR(0xFF, 11, struct pidfd_info). The size is encoded in the request;
# we pass the first published size (64 bytes), which already holds exit_code and which every kernel with the ioctl
# accepts (the kernel copies min(user size, its size)).
PIDFD_INFO_PID = 1 << 0
PIDFD_INFO_CREDS = 1 << 1
PIDFD_INFO_CGROUPID = 1 << 2
PIDFD_INFO_EXIT = 1 << 3
PIDFD_INFO_SIZE_VER0 = 64
_IOC_READ_WRITE = 3
PIDFD_GET_INFO = (_IOC_READ_WRITE << 30) | (PIDFD_INFO_SIZE_VER0 << 16) | (0xFF << 8) | 11
# struct pidfd_info: u64 mask, u64 cgroupid, 11 x u32 (pid tgid ppid ruid rgid euid egid suid sgid fsuid fsgid),
# s32 exit_code.
_PIDFD_INFO = struct.Struct("=QQ11Ii")
assert _PIDFD_INFO.size == PIDFD_INFO_SIZE_VER0

# Interface flag ioctls for loopback_up (include/uapi/linux/sockios.h, if.h).
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_c_str = ctypes.c_char_p
_c_ulong = ctypes.c_ulong
_c_long = ctypes.c_long

_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [_c_str, _c_str, _c_str, _c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [_c_str, ctypes.c_int]
# glibc has renameat2 since 2.28; an older one makes rename_noreplace fail with ENOSYS (its callers fall back).
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, _c_str, ctypes.c_int, _c_str, ctypes.c_uint]
_libc.sethostname.argtypes = [_c_str, ctypes.c_size_t]
_libc.ioctl.argtypes = [ctypes.c_int, _c_ulong, ctypes.c_void_p]
_libc.syscall.restype = _c_long
# prctl and syscall are variadic: every argument is passed as a full register-width integer.
_libc.prctl.restype = ctypes.c_int


def _fs(path: str | bytes | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _fail(step: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{step}: {os.strerror(err)}")


def _check(rc: int, step: str) -> int:
    if rc < 0:
        raise _fail(step)
    return rc


def syscall(name: str, *args: int) -> int:
    """Call a raw syscall by name (numbers for x86_64 and aarch64); OSError(ENOSYS) when unknown here."""
    nr = _NR.get(name)
    if nr is None:
        raise OSError(errno.ENOSYS, f"{name}: no syscall number known for {_MACHINE}")
    return _check(_libc.syscall(_c_long(nr), *(_c_long(a) for a in args)), name)


# ---- namespaces, mounts, hostname ---------------------------------------------------------------------------


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace `fd` refers to (an open /proc/PID/ns/* file or a pidfd)."""
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    d = _fs(data)
    rc = _libc.mount(_fs(source), _fs(target), _fs(fstype), flags, d)
    _check(rc, f"mount {source} on {target} ({fstype}, flags {flags:#x})")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_fs(target), flags), f"umount {target}")


_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing `dst` (plain rename replaces an empty directory)."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2: not in this C library")
    _check(_renameat2(AT_FDCWD, _fs(src), AT_FDCWD, _fs(dst), _RENAME_NOREPLACE), f"rename {src} to {dst}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _NR.get("pivot_root")
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no syscall number known for {_MACHINE}")
    new_b, old_b = _fs(new_root), _fs(put_old)
    rc = _libc.syscall(_c_long(nr), _c_str(new_b), _c_str(old_b))
    _check(rc, f"pivot_root({new_root}, {put_old})")


def sethostname(name: str) -> None:
    b = name.encode()
    _check(_libc.sethostname(b, len(b)), f"sethostname({name})")


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace (a new one starts with it down).

    A plain socket ioctl: pyroute2 would fork the caller, which a launcher child must not do."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
    except OSError as e:
        raise OSError(e.errno, f"bring lo up: {os.strerror(e.errno or 0)}") from None


# ---- prctl --------------------------------------------------------------------------------------------------


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0, step: str = "") -> int:
    rc = _libc.prctl(ctypes.c_int(option), _c_ulong(arg2), _c_ulong(arg3), _c_ulong(arg4), _c_ulong(arg5))
    return _check(rc, step or f"prctl({option})")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, step="prctl(PR_SET_NO_NEW_PRIVS)")


def get_no_new_privs() -> bool:
    return bool(prctl(PR_GET_NO_NEW_PRIVS, step="prctl(PR_GET_NO_NEW_PRIVS)"))


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, int(on), step="prctl(PR_SET_CHILD_SUBREAPER)")


def get_child_subreaper() -> bool:
    out = ctypes.c_int(0)
    rc = _libc.prctl(ctypes.c_int(PR_GET_CHILD_SUBREAPER), ctypes.byref(out), _c_ulong(0), _c_ulong(0),
                     _c_ulong(0))
    _check(rc, "prctl(PR_GET_CHILD_SUBREAPER)")
    return bool(out.value)


def set_pdeathsig(sig: int) -> None:
    """Deliver `sig` to this process when its parent thread dies (0 clears; reset by execve of setuid files)."""
    prctl(PR_SET_PDEATHSIG, int(sig), step=f"prctl(PR_SET_PDEATHSIG, {int(sig)})")


def get_pdeathsig() -> int:
    out = ctypes.c_int(0)
    rc = _libc.prctl(ctypes.c_int(PR_GET_PDEATHSIG), ctypes.byref(out), _c_ulong(0), _c_ulong(0), _c_ulong(0))
    _check(rc, "prctl(PR_GET_PDEATHSIG)")
    return out.value


def set_keepcaps(on: bool) -> None:
    prctl(PR_SET_KEEPCAPS, int(on), step=f"prctl(PR_SET_KEEPCAPS, {int(on)})")


def cap_bound_read(cap: int) -> bool:
    return bool(prctl(PR_CAPBSET_READ, cap, step=f"prctl(PR_CAPBSET_READ, {cap})"))


def cap_bound_drop(cap: int) -> None:
    prctl(PR_CAPBSET_DROP, cap, step=f"drop capability {cap} from the bounding set")


def cap_ambient_raise(cap: int) -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, step=f"raise ambient capability {cap}")


def cap_ambient_clear_all() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, step="clear ambient capabilities")


def set_name(name: str) -> None:
    """Set this thread's comm (what /proc/PID/stat shows between the parentheses; 15 bytes max)."""
    b = ctypes.create_string_buffer(name.encode()[:15])
    rc = _libc.prctl(ctypes.c_int(PR_SET_NAME), b, _c_ulong(0), _c_ulong(0), _c_ulong(0))
    _check(rc, "prctl(PR_SET_NAME)")


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas (mallopt M_ARENA_MAX) for threads that first allocate after this call.

    glibc gives each new thread its own arena (up to 8 per core) and a freed block goes back to the arena that
    made it, so a daemon whose pool threads take turns parsing and encoding keeps many half-empty arenas: at 1000
    tasks they held 10-20 MB of the daemon's private memory here. False where the libc has no mallopt (musl)."""
    M_ARENA_MAX = -8
    return _mallopt(M_ARENA_MAX, n)


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Serve every malloc of `size` bytes or more with its own mapping, returned to the kernel when freed
    (mallopt M_MMAP_THRESHOLD). glibc's default starts there but raises the threshold to the size of each mapped
    block that is freed, so after one large response buffer the next ones come from the heap, where their pages
    stay after the free. Setting it fixes it. False where the libc has no mallopt (musl)."""
    M_MMAP_THRESHOLD = -3
    return _mallopt(M_MMAP_THRESHOLD, size)


def _mallopt(param: int, value: int) -> bool:
    mallopt = getattr(_libc, "mallopt", None)
    return mallopt is not None and bool(mallopt(ctypes.c_int(param), ctypes.c_int(value)))


def malloc_trim() -> bool:
    """Give the free pages inside every malloc arena back to the kernel (glibc malloc_trim(0)); True if any
    were. False where the libc has no malloc_trim (musl returns freed memory by itself)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(_c_ulong(0)))


# ---- path resolution that cannot leave a directory, and mounts by file descriptor ------------------------------
# Used where a root process works in a tree that a task can write: a path checked first and used after can have
# a component swapped for a symlink in between; these resolve and attach in one kernel step.

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
OPEN_TREE_CLONE = 1
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _ptr(obj) -> int:
    return ctypes.cast(obj, ctypes.c_void_p).value or 0


_EMPTY = ctypes.create_string_buffer(b"")  # the "" path of the *_EMPTY_PATH calls


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` relative to `dir_fd` under the RESOLVE_* rules (Linux >= 5.6)."""
    how = _OpenHow(flags, mode, resolve)
    b = ctypes.create_string_buffer(os.fsencode(path))
    return syscall("openat2", dir_fd, _ptr(b), ctypes.addressof(how), ctypes.sizeof(how))


def chown_path_fd(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", AT_EMPTY_PATH): chown what an O_PATH descriptor names, a symlink included."""
    rc = _libc.fchownat(ctypes.c_int(fd), b"", ctypes.c_uint(uid), ctypes.c_uint(gid),
                        ctypes.c_int(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
    _check(rc, "fchownat")


def open_tree_clone(path: str) -> int:
    """A detached copy of the mount tree at `path` (recursive, close-on-exec), for move_mount (Linux >= 5.2)."""
    b = ctypes.create_string_buffer(os.fsencode(path))
    return syscall("open_tree", AT_FDCWD, _ptr(b), OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE)


def mount_setattr_fd(fd: int, attr_set: int) -> None:
    """Set mount attributes on every mount of the tree `fd` names (Linux >= 5.12)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    syscall("mount_setattr", fd, _ptr(_EMPTY), AT_EMPTY_PATH | AT_RECURSIVE, ctypes.addressof(attr),
            ctypes.sizeof(attr))


def move_mount_fd(from_fd: int, to_fd: int) -> None:
    """Attach the detached tree `from_fd` on the directory or file `to_fd` (Linux >= 5.2)."""
    syscall("move_mount", from_fd, _ptr(_EMPTY), to_fd, _ptr(_EMPTY),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)

# ---- file descriptors and pidfds ------------------------------------------------------------------------------


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """close_range(2); where the kernel lacks it (< 5.9, or CLOEXEC < 5.11) fall back to walking the open fds."""
    rc = _libc.syscall(_c_long(_NR["close_range"]), _c_long(first), _c_long(last), _c_long(flags))
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.ENOSYS, errno.EINVAL) or flags & ~CLOSE_RANGE_CLOEXEC:
        raise OSError(err, f"close_range({first}, {last}, {flags:#x}): {os.strerror(err)}")
    _close_range_fallback(first, last, flags)


def _close_range_fallback(first: int, last: int, flags: int) -> None:
    # Listing /proc/self/fd opens one fd of its own; collect first, act after.
    fds = [int(n) for n in os.listdir("/proc/self/fd")]
    for fd in fds:
        if first <= fd <= last:
            try:
                if flags & CLOSE_RANGE_CLOEXEC:
                    os.set_inheritable(fd, False)
                else:
                    os.close(fd)
            except OSError:
                pass  # the listing's own fd, already closed


def pidfd_get_info(pidfd: int) -> int | None:
    """The wait status (as waitpid returns it) of the process behind `pidfd` once it has exited and been reaped,
    by anyone; None while it runs or when the kernel has no exit information (PIDFD_GET_INFO needs Linux >= 6.15).

    Works for processes that are not our children: their parent reaps them and the kernel keeps the status."""
    buf = ctypes.create_string_buffer(_PIDFD_INFO.size)
    struct.pack_into("=Q", buf, 0, PIDFD_INFO_EXIT)
    rc = _libc.ioctl(pidfd, _c_ulong(PIDFD_GET_INFO), buf)
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            # Gone without exit information kept (or not reaped yet on some kernels).
            return None
        raise OSError(err, f"ioctl(PIDFD_GET_INFO): {os.strerror(err)}")
    fields = _PIDFD_INFO.unpack(buf.raw)
    mask, exit_code = fields[0], fields[-1]
    if not mask & PIDFD_INFO_EXIT:
        return None
    return exit_code


# ---- inotify (the daemon's file watching goes through watchdog; this is for one directory, briefly) ----------

IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
_INOTIFY_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (then len bytes of name)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, _c_str, ctypes.c_uint32]


def inotify_watch_dir(path: str | os.PathLike, mask: int) -> int:
    """A non-blocking, close-on-exec inotify descriptor watching directory `path` (not followed when it is a
    symlink) for `mask`. OSError when no inotify instance is left (fs.inotify.max_user_instances) or the
    directory is not there."""
    fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
    try:
        _check(_libc.inotify_add_watch(fd, _fs(path), mask | IN_ONLYDIR | IN_DONT_FOLLOW),
               f"inotify_add_watch {os.fsdecode(path)}")
    except OSError:
        os.close(fd)
        raise
    return fd


def inotify_drain(fd: int) -> int:
    """Read every queued event of non-blocking inotify descriptor `fd`; returns the OR of their masks (0 when
    none was queued). IN_IGNORED in it means the watch is gone (its directory was removed)."""
    masks = 0
    while True:
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            return masks
        if not buf:
            return masks
        off = 0
        while off + _INOTIFY_EVENT.size <= len(buf):
            _, mask, _, n = _INOTIFY_EVENT.unpack_from(buf, off)
            masks |= mask
            off += _INOTIFY_EVENT.size + n


# ---- process identity ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes]:
    """Fields 3 (state) onwards of /proc/PID/stat: field N is index N - 3. The comm field may contain spaces and
    parentheses, so fields are counted after the LAST ')'."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # raw: a file object costs 5 more syscalls
    try:
        data = os.read(fd, 4096)  # comm is at most 64 bytes: the whole line fits
    finally:
        os.close(fd)
    end = data.rfind(b")")
    if end < 0:
        raise ValueError(f"/proc/{pid}/stat: unexpected format")
    return data[end + 1:].split()


def process_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    return int(_stat_fields(pid)[19])


PF_EXITING = 0x4


def process_exiting(pid: int) -> bool:
    """The kernel's PF_EXITING flag (field 9 of /proc/PID/stat): the process is past the point of no return. True
    as well when it is gone (reaped meanwhile): waiting for it then says which."""
    try:
        return bool(int(_stat_fields(pid)[6]) & PF_EXITING)
    except OSError:
        return True


SIG_DFL_RAW, SIG_IGN_RAW = 0, 1
_KERNEL_NSIG = 64


def signal_disposition(sig: int, handler: int | None = None) -> int:
    """The kernel's handler value for `sig` (0 default, 1 ignored, else an address), setting it to `handler` when
    given. Raw rt_sigaction: glibc refuses its internal signals 32 and 33, which an ignoring parent can still pass
    down. A zeroed struct is "default, no flags, empty mask" in the x86_64 and aarch64 layouts alike."""
    old = ctypes.create_string_buffer(64)
    new = None
    if handler is not None:
        new = ctypes.create_string_buffer(64)
        struct.pack_into("=Q", new, 0, handler)
    syscall("rt_sigaction", sig, ctypes.addressof(new) if new is not None else 0, ctypes.addressof(old), 8)
    return struct.unpack_from("=Q", old, 0)[0]


def reset_ignored_signals(keep: Iterable[int] = ()) -> list[int]:
    """Put every ignored signal but `keep` back to its default; returns those reset. An ignored signal stays
    ignored across fork and execve, so whatever tasksd's own parent ignored would otherwise reach every task."""
    keep = set(keep) | {signal.SIGKILL, signal.SIGSTOP}
    reset = []
    for sig in range(1, _KERNEL_NSIG + 1):
        if sig in keep:
            continue
        try:
            if signal_disposition(sig) == SIG_IGN_RAW:
                signal_disposition(sig, SIG_DFL_RAW)
                reset.append(sig)
        except OSError:
            continue  # ENOSYS on an unknown architecture: nothing to do there
    return reset


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


_MOUNTINFO_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape_mountinfo(field: str) -> str:
    """/proc/*/mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`): decode a field."""
    return _MOUNTINFO_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
