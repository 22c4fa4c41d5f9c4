"""Linux capabilities for tasks: Nomad's exec-driver arithmetic and applying the result in the child.

`compute_caps` is pure (runs in the driver). `apply_caps_and_identity` runs in the forked launcher child right
before execve: no threads, no logging; failures are OSError naming the step.
"""
from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable

from isolation import sys as ksys
from manifests.capabilities import ALL, CAP_LAST, CAPABILITIES, NOMAD_EXEC_DEFAULT_CAPS, expand_caps, normalize_cap

# Nomad's exec/java default allow list (Docker's defaults without NET_RAW), canonical names, sorted.
NOMAD_DEFAULT_ALLOW_CAPS: tuple[str, ...] = tuple(sorted(NOMAD_EXEC_DEFAULT_CAPS))

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class CapabilityError(ValueError):
    """A task asked for capabilities the driver config does not allow (message is Nomad's)."""


def _names(items: Iterable[str] | None) -> set[str]:
    return set(expand_caps(items or ()))


def _short(name: str) -> str:
    return name[len("CAP_"):].lower()


def compute_caps(allow_caps: Iterable[str] | None, cap_add: Iterable[str] | None = None,
                 cap_drop: Iterable[str] | None = None,
                 basis: Iterable[str] = NOMAD_DEFAULT_ALLOW_CAPS) -> frozenset[int]:
    """The capability numbers a task gets, with Nomad's exec rules (drivers/shared/capabilities Calculate):

    start from `basis` (Nomad's defaults) limited to `allow_caps`; remove `cap_drop` ("all" removes everything);
    add `cap_add`. Adding anything outside `allow_caps` is refused. So allow_caps = ["all"] alone still yields
    Nomad's defaults: it only widens what a task may add. Names: any case, optional CAP_ prefix, "all".
    """
    allow = _names(allow_caps)
    adds = _names(cap_add)
    missing = adds - allow
    if missing:
        listed = ", ".join(sorted(_short(n) for n in missing))
        raise CapabilityError(f"driver does not allow the following capabilities: {listed}")
    drops_all = any(normalize_cap(d) == ALL for d in cap_drop or ())
    result = set() if drops_all else (_names(basis) & allow) - _names(cap_drop)
    result |= adds
    return frozenset(CAPABILITIES[n] for n in result)


# What a task running as a non-root user keeps of the defaults without asking. Nomad's executor hands such a
# task every default capability as an ambient one, and CHOWN, DAC_OVERRIDE, FOWNER, FSETID, MKNOD, SETUID, SETGID,
# SETFCAP... let "nobody" read /etc/shadow through the chroot's read-only /etc, make device nodes, or leave a
# setuid-root binary in its task directory for any host user to run. These two are harmless and common (a web
# server on port 80 as nobody); anything else a non-root task needs it names in cap_add.
NONROOT_DEFAULT_CAPS = frozenset({"CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"})


def for_user(caps: frozenset[int], uid: int, cap_add: Iterable[str] | None) -> frozenset[int]:
    """The capabilities a task running as `uid` gets out of `caps` (compute_caps' result): all of them as root
    (Nomad's rule); as any other user only NONROOT_DEFAULT_CAPS and what cap_add names."""
    if uid == 0:
        return caps
    keep = {CAPABILITIES[n] for n in NONROOT_DEFAULT_CAPS | _names(cap_add)}
    return frozenset(c for c in caps if c in keep)


def caps_mask(caps: Iterable[int]) -> int:
    mask = 0
    for c in caps:
        mask |= 1 << c
    return mask


def cap_names(caps: Iterable[int]) -> list[str]:
    by_number = {v: k for k, v in CAPABILITIES.items()}
    return sorted(by_number.get(c, f"CAP_{c}") for c in caps)


@functools.lru_cache(maxsize=1)
def last_cap() -> int:
    """The highest capability this kernel knows (the table may be newer or older than the kernel). Read once per
    process: the running kernel's value cannot change, and the launcher asks at every exec start."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return CAP_LAST


# ---- capget/capset (syscalls: glibc declares no wrapper) -----------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of this thread."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    ksys.syscall("capget", ctypes.addressof(hdr), ctypes.addressof(data))
    eff = data[0].effective | data[1].effective << 32
    prm = data[0].permitted | data[1].permitted << 32
    inh = data[0].inheritable | data[1].inheritable << 32
    return eff, prm, inh


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    try:
        ksys.syscall("capset", ctypes.addressof(hdr), ctypes.addressof(data))
    except OSError as e:
        raise OSError(e.errno, f"capset(effective={effective:#x}, permitted={permitted:#x}, "
                               f"inheritable={inheritable:#x}): {os.strerror(e.errno or 0)}") from None


def apply_caps_and_identity(caps: Iterable[int], uid: int | None, gid: int | None,
                            groups: Iterable[int] | None) -> None:
    """Switch to uid/gid/groups keeping exactly `caps` across the coming execve.

    Order matters: the bounding set can only shrink with CAP_SETPCAP, so it is cut first while still root;
    KEEPCAPS keeps the permitted set through setuid; capset then sets effective = permitted = inheritable = caps,
    and for a non-root uid the ambient set carries them through execve of an ordinary (no file caps) binary.

    For uid 0 the kernel recomputes root's sets at execve from the bounding set, so inheritable and ambient stay
    empty: root with every capability is then exactly what a plain root process has. Capabilities this process
    does not hold itself (e.g. one missing from the launcher's own bounding set) cannot be granted and are left
    out rather than failing. None for uid/gid/groups keeps the current value.
    """
    top = last_cap()
    _, held, _ = capget()
    want = caps_mask(c for c in caps if 0 <= c <= top) & held

    for cap in range(top + 1):
        if not want >> cap & 1 and ksys.cap_bound_read(cap):
            ksys.cap_bound_drop(cap)

    target_uid = os.getuid() if uid is None else uid
    switching = target_uid != os.geteuid()
    if switching:
        ksys.set_keepcaps(True)
    if groups is not None:
        _step("setgroups", os.setgroups, list(groups))
    if gid is not None:
        _step(f"setgid({gid})", os.setresgid, gid, gid, gid)
    if uid is not None:
        _step(f"setuid({uid})", os.setresuid, uid, uid, uid)
    if switching:
        ksys.set_keepcaps(False)

    inheritable = want if target_uid != 0 else 0
    capset(want, want, inheritable)

    ksys.cap_ambient_clear_all()
    if target_uid != 0:
        for cap in range(top + 1):
            if want >> cap & 1:
                ksys.cap_ambient_raise(cap)


def _step(name: str, fn, *args) -> None:
    try:
        fn(*args)
    except OSError as e:
        raise OSError(e.errno, f"{name}: {os.strerror(e.errno or 0)}") from None


def read_proc_caps(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc/PID/status (for checks and tests)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, value = line.split(":", 1)
                out[key] = int(value.strip(), 16)
    return out

