"""Landlock "unveil" for the exec2 driver: only the listed paths stay reachable, with the listed modes.

Modes are exec2's letters (hashicorp/nomad-driver-exec2, shoenig/go-landlock), mapped to the rights of the best ABI
the kernel offers:
  r  read files; on a directory also list it
  w  write files; + truncate (ABI >= 3); + device ioctls (ABI >= 5)
  x  execute files
  c  on a directory: create and remove entries (regular files, directories, sockets, fifos, symlinks);
     + rename/link across directories ("refer", ABI >= 2). Device nodes are never creatable.
The ruleset handles every filesystem right of the detected ABI, so whatever is not unveiled is denied.
Network rights (ABI >= 4) and scoping (ABI >= 6) are not handled: exec2 does not restrict the network here.

Differences from go-landlock, on purpose: "c" also grants removal (go-landlock handles REMOVE_* but never grants
them, so a task could not delete its own temp files), and truncate/ioctl rights exist only from ABI 3/5, which
go-landlock does not handle at all (they stayed allowed everywhere).

Rules resolve paths when the ruleset is built (O_PATH follows symlinks), so build it in the process that will exec
the task (e.g. /proc/self/... and /dev/stdout point at that process) and before dropping to the task's uid (the
paths must still be openable). Runs in the launcher child: no threads, no logging; OSError names the step.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable, Sequence

from isolation import sys as ksys

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

_FS_ABI1 = (1 << 13) - 1
# Filesystem rights each ABI knows (ABI 4 added network rights, 6 scoping, 7 audit flags: no new fs rights).
_FS_BY_ABI = {1: _FS_ABI1, 2: _FS_ABI1 | ACCESS_FS_REFER}
_FS_BY_ABI[3] = _FS_BY_ABI[2] | ACCESS_FS_TRUNCATE
_FS_BY_ABI[4] = _FS_BY_ABI[3]
_FS_BY_ABI[5] = _FS_BY_ABI[4] | ACCESS_FS_IOCTL_DEV

# Rights that make sense on a non-directory; the kernel refuses directory-only rights in a rule on a file.
_FILE_RIGHTS = (ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE
                | ACCESS_FS_IOCTL_DEV)

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

MODES = frozenset("rwxc")

# exec2's default unveils (nomad-driver-exec2 + go-landlock's Shared, Stdio, DNS, Certs groups, and the bin dirs).
# Only the ones that exist are used.
EXEC2_DEFAULT_UNVEILS: tuple[tuple[str, str], ...] = (
    ("rx", "/lib"), ("rx", "/lib64"), ("rx", "/usr/lib"), ("rx", "/usr/lib64"), ("rx", "/usr/libexec"),
    ("rx", "/usr/local/lib"), ("rx", "/usr/local/lib64"),
    ("r", "/etc/ld.so.conf"), ("r", "/etc/ld.so.cache"), ("r", "/etc/ld.so.conf.d"),
    ("rx", "/bin"), ("rx", "/usr/bin"), ("rx", "/usr/local/bin"),
    ("rwc", "/tmp"),
    ("rw", "/dev/null"), ("rw", "/dev/full"), ("r", "/dev/zero"), ("r", "/dev/fd"), ("r", "/dev/urandom"),
    ("rw", "/dev/stdin"), ("rw", "/dev/stdout"), ("w", "/dev/log"),
    ("r", "/usr/share/locale"), ("r", "/usr/share/zoneinfo"), ("r", "/usr/share/common-licenses"),
    ("r", "/proc/self/cmdline"), ("r", "/proc/sys/kernel/ngroups_max"), ("r", "/proc/sys/kernel/cap_last_cap"),
    ("r", "/proc/sys/vm/overcommit_memory"),
    ("r", "/etc/hosts"), ("r", "/hostname"), ("r", "/etc/services"), ("r", "/etc/protocols"),
    ("r", "/etc/resolv.conf"),
    ("r", "/etc/ssl/certs"), ("r", "/etc/pki/tls/certs"), ("r", "/etc/ssl/ca-bundle.pem"),
    ("r", "/etc/pki/tls/cacert.pem"), ("r", "/etc/pki/ca-trust-extracted/pem/tls-ca-bundle.pem"),
    ("r", "/etc/ssl/cert.pem"),
)


class _RulesetAttr(ctypes.Structure):
    # Only handled_access_fs: passing size 8 is valid on every ABI and leaves network and scoping unrestricted.
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _RulesetAttrScoped(ctypes.Structure):
    # ABI 6 and later: the struct grew handled_access_net (ABI 4, left 0: TCP stays unrestricted) and scoped.
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


# Abstract unix sockets have no file permissions, so neither DAC nor filesystem rules keep a task on the host
# network from connecting to the host's (a display server's, a container shim's). Signals are not scoped: the
# task's dynamic uid already keeps it from signalling anyone else, and a scope would also stop `tasksctl exec`
# sessions (a Landlock domain of their own) from signalling the task.
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the uapi struct is __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def probe() -> tuple[int, str]:
    """(ABI version, reason); version 0 means Landlock cannot be used here and the reason says why."""
    try:
        return ksys.syscall("landlock_create_ruleset", 0, 0, LANDLOCK_CREATE_RULESET_VERSION), ""
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return 0, "kernel has no Landlock support (landlock_create_ruleset: ENOSYS; needs Linux >= 5.13)"
        if e.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is built in but disabled at boot (add 'landlock' to the lsm= kernel parameter)"
        return 0, f"Landlock unavailable: {e.strerror}"


def abi_version() -> int:
    return probe()[0]


def handled_access_fs(abi: int) -> int:
    """Every filesystem right `abi` knows: a ruleset handling all of them denies whatever is not unveiled."""
    if abi <= 0:
        return 0
    return _FS_BY_ABI.get(abi, _FS_BY_ABI[5])


def parse_unveil(spec: str) -> tuple[str, str]:
    """"rwc:/path" -> ("rwc", "/path"), split at the LAST ':' as exec2 does.

    So a path containing ':' cannot be unveiled ("r:/a:b" reads as modes "r:/a"): rejected, as in exec2."""
    idx = spec.rfind(":")
    if idx < 0:
        raise ValueError(f"unveil {spec!r} does not contain a mode prefix (MODES:PATH, modes from r w x c)")
    modes, path = spec[:idx], spec[idx + 1:]
    validate_unveil(modes, path)
    return modes, path


def validate_unveil(modes: str, path: str) -> None:
    if not modes or set(modes) - MODES:
        raise ValueError(f"unveil {modes}:{path}: modes must be one or more of r, w, x, c")
    if not path.startswith("/"):
        raise ValueError(f"unveil {modes}:{path}: path must be absolute")


def access_for(modes: str, is_dir: bool, abi: int) -> int:
    """The Landlock rights `modes` grant on a file or directory under `abi`."""
    rights = 0
    if "r" in modes:
        rights |= ACCESS_FS_READ_FILE | (ACCESS_FS_READ_DIR if is_dir else 0)
    if "w" in modes:
        rights |= ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
    if "x" in modes:
        rights |= ACCESS_FS_EXECUTE
    if "c" in modes and is_dir:
        rights |= (ACCESS_FS_MAKE_REG | ACCESS_FS_MAKE_DIR | ACCESS_FS_MAKE_SOCK | ACCESS_FS_MAKE_FIFO
                   | ACCESS_FS_MAKE_SYM | ACCESS_FS_REMOVE_FILE | ACCESS_FS_REMOVE_DIR | ACCESS_FS_REFER)
    if not is_dir:
        rights &= _FILE_RIGHTS
    return rights & handled_access_fs(abi)


def build_ruleset(unveils: Sequence[tuple[str, str]], skip_missing: bool = False,
                  optional: Iterable[tuple[str, str]] = (), abi: int | None = None) -> int:
    """A Landlock ruleset fd allowing `unveils` (and `optional`) and denying every other filesystem access.

    Entries in `unveils` must exist unless `skip_missing`: an unveil the operator wrote that names nothing is a
    mistake worth reporting (exec2 fails the same way). Entries in `optional` (the defaults) are skipped when
    missing, and also when the kernel refuses them for resolving to a pseudo-file such as a pipe (EBADFD:
    /dev/stdout of a task whose stdout is a pipe). The caller owns the returned fd (close it after restrict_self).
    """
    version = abi_version() if abi is None else abi
    if version <= 0:
        raise OSError(errno.EOPNOTSUPP, f"landlock: {probe()[1] or 'unavailable'}")
    if version >= 6:
        attr = _RulesetAttrScoped(handled_access_fs(version), 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET)
    else:
        attr = _RulesetAttr(handled_access_fs(version))
    try:
        fd = ksys.syscall("landlock_create_ruleset", ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    except OSError as e:
        raise OSError(e.errno, f"landlock_create_ruleset: {os.strerror(e.errno or 0)}") from None
    try:
        os.set_inheritable(fd, False)
        for modes, path in unveils:
            _add_rule(fd, modes, path, version, lenient=skip_missing)
        for modes, path in optional:
            _add_rule(fd, modes, path, version, lenient=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add_rule(ruleset: int, modes: str, path: str, abi: int, lenient: bool) -> None:
    validate_unveil(modes, path)
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        if lenient and e.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise OSError(e.errno, f"landlock unveil {modes}:{path}: {os.strerror(e.errno or 0)}") from None
    try:
        rights = access_for(modes, stat.S_ISDIR(os.fstat(target).st_mode), abi)
        if not rights:
            return  # e.g. "c" on a file: nothing to grant, and the kernel rejects empty rules
        attr = _PathBeneathAttr(rights, target)
        try:
            ksys.syscall("landlock_add_rule", ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.addressof(attr), 0)
        except OSError as e:
            if lenient and e.errno == errno.EBADFD:
                return
            raise OSError(e.errno, f"landlock unveil {modes}:{path}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(target)


def restrict_self(ruleset: int) -> None:
    """Confine this process (and everything it execs or forks) to the ruleset. Needs no_new_privs set first
    (or CAP_SYS_ADMIN). Does not close the fd."""
    try:
        ksys.syscall("landlock_restrict_self", ruleset, 0)
    except OSError as e:
        hint = " (set no_new_privs first)" if e.errno == errno.EPERM else ""
        raise OSError(e.errno, f"landlock_restrict_self: {os.strerror(e.errno or 0)}{hint}") from None

