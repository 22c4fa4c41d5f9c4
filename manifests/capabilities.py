"""The Linux capability table (numbers from include/uapi/linux/capability.h) and name normalization.

Manifests write capabilities the way Nomad's exec driver accepts them: any case, with or without "CAP_", or
"all". The canonical form used in the model and by the isolation layer is the kernel's "CAP_NET_ADMIN".
"""
from __future__ import annotations

from collections.abc import Iterable

ALL = "all"

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
CAP_LAST = max(CAPABILITIES.values())

# The exec driver's default allow list in Nomad: Docker's defaults without NET_RAW.
NOMAD_EXEC_DEFAULT_CAPS: frozenset[str] = frozenset(
    "CAP_" + n
    for n in (
        "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP "
        "SETUID SYS_CHROOT"
    ).split()
)


def normalize_cap(name: str) -> str:
    """"net_admin", "CAP_NET_ADMIN", "Net_Admin" -> "CAP_NET_ADMIN"; "all"/"ALL" -> "all". ValueError if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"capability name must be a non-empty string, got {name!r}")
    up = name.strip().upper()
    if up == "ALL":
        return ALL
    if not up.startswith("CAP_"):
        up = "CAP_" + up
    if up not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return up


def expand_caps(names: Iterable[str]) -> frozenset[str]:
    """Normalized names with "all" expanded to every capability in the table."""
    out: set[str] = set()
    for n in names:
        c = normalize_cap(n)
        if c == ALL:
            out.update(CAPABILITIES)
        else:
            out.add(c)
    return frozenset(out)
