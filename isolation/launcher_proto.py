"""What the daemon and the launcher share about their connection: the socket's place, the message encoder, and
the exit record's shape. Kept apart from isolation.launcher so the daemon never loads the launcher's program
(its child setup, log writers and event loop: ~0.3 MB of bytecode the daemon would hold for nothing)."""
from __future__ import annotations

import json
import os
from pathlib import Path

PROTOCOL_VERSION = 1
# One encoder for every message: json.dumps with separators builds a new JSONEncoder per call.
encode = json.JSONEncoder(separators=(",", ":")).encode


def socket_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "run" / "launcher.sock"


def describe_status(status: int) -> dict:
    """A wait status as the exit record carries it (128+N and the signal when a signal killed it)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"exit_code": 128 + sig, "signal": sig}
    return {"exit_code": os.WEXITSTATUS(status), "signal": None}


def via_short_path(op, path: str) -> None:
    """op(path) for a unix socket's bind or connect, also with paths longer than sun_path allows (108 bytes):
    those go through /proc/self/fd/<fd of the directory>/<name>."""
    if len(path.encode()) < 100:
        op(path)
        return
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        op(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
    finally:
        os.close(dfd)


def is_launcher_cmdline(cmdline: list[str]) -> bool:
    """A process's argv is a tasksd launcher's: the Python one (python -m isolation.launcher) or the C one."""
    return "isolation.launcher" in cmdline or (bool(cmdline) and cmdline[0].endswith("/tasksd-launcher"))
