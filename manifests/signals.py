"""Signal names as manifests write them ("term", "SIGTERM", "Int") normalized to "SIGTERM"."""
from __future__ import annotations

import signal

# Taken from this platform's signal module rather than typed out, so the table can never name a signal the
# kernel would refuse; SIGRTMIN/SIGRTMAX are markers, not signals one sends to stop a task.
SIGNALS: dict[str, int] = {
    s.name: int(s)
    for s in signal.Signals
    if s.name.startswith("SIG") and not s.name.startswith("SIG_") and s.name not in {"SIGRTMIN", "SIGRTMAX"}
}


def normalize_signal(name: str) -> str:
    """Return the canonical "SIGXXX" name. Raises ValueError for anything that is not a signal name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"signal name must be a non-empty string, got {name!r}")
    up = name.strip().upper()
    if not up.startswith("SIG"):
        up = "SIG" + up
    if up not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}")
    return up


def signal_number(name: str) -> int:
    return SIGNALS[normalize_signal(name)]
