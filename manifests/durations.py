"""Go-style durations ("1m30s", "250ms", "1h", "2.5s") as float seconds, the unit the model uses everywhere."""
from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu: Go accepts both spellings
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string into seconds. Raises ValueError with a message fit for a user."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as \"30s\", got {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            if re.fullmatch(r"\d+(\.\d*)?", s[pos:]):
                raise ValueError(f"duration {text!r} lacks a unit (use e.g. \"{s[pos:]}s\")")
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as \"1m30s\", \"250ms\", \"1h\")")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of a duration, for messages ("1h30m", "250ms", "0s")."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    if rest < 1:
        ms = rest * 1000
        return f"{sign}{ms:g}ms"
    out = []
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    if hours:
        out.append(f"{int(hours)}h")
    if minutes:
        out.append(f"{int(minutes)}m")
    if rest:
        out.append(f"{round(rest, 9):g}s")
    return sign + "".join(out)
