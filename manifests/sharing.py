"""Equal spec values as one object, whether a spec was parsed from a manifest or decoded from the store.

Most manifests leave restart, logs, resources, network and meta at a few common values, and 1000 tasks held 1000
copies of each (0.7 KB per task). They are frozen, so sharing is safe. Keyed with the type of every field too, so
1800 and 1800.0 (equal, yet different JSON and so a different spec hash) never stand in for each other. Bounded:
cleared when full, so a stream of distinct values cannot grow it.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from manifests.frozendict import FrozenDict

_SHARED: dict[tuple, Any] = {}
_SHARED_MAX = 1024
SHORT = 64  # strings up to this long are interned: names, drivers, commands, durations repeat across manifests


def shared(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, FrozenDict):
        parts = tuple(value.items())
        types = tuple(type(v) for _, v in parts)
    else:
        parts = tuple(getattr(value, f.name) for f in dataclasses.fields(value))
        types = tuple(map(type, parts))
    try:
        key = (type(value), parts, types)
        found = _SHARED.get(key)
    except TypeError:  # an unhashable field: not shared
        return value
    if found is not None:
        return found
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    _SHARED[key] = value
    return value


def short(text: str) -> str:
    """One copy of each short string, kept in the specs of every task that names it."""
    return sys.intern(text) if len(text) <= SHORT else text
