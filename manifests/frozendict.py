"""An immutable, hashable mapping for spec fields such as env and meta.

Specs are compared for equality to decide whether a task must restart, and cached as JSON, so the mapping keeps
its items sorted: two manifests that differ only in key order give equal, equally-hashed specs.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

_NO_ITEMS: dict[str, Any] = {}


class FrozenDict(Mapping[str, Any]):
    __slots__ = ("_items", "_index", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = dict(data or {})
        merged.update(kwargs)
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(merged.items()))
        # Most specs' env and meta are empty: they share one empty index (never written to) instead of a dict each.
        self._index = dict(self._items) if self._items else _NO_ITEMS
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._index[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._items)
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._index == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._index!r})"

    def __reduce__(self):
        return (FrozenDict, (self._index,))

    def to_dict(self) -> dict[str, Any]:
        return dict(self._items)
