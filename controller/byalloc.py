"""A dict keyed by task id ("job/group/index/task") that also knows which ids each alloc ("job/group/index") has.

A reconcile pass plans only the allocs something touched; finding their tasks by scanning every record and every
desired task cost ~0.25 ms per scan with 1000 tasks, several scans per pass and several passes per restart. The
index is kept by the mapping itself, so no caller can forget to update it.
"""
from __future__ import annotations

from typing import Iterable, TypeVar

from reconcilers.plan import alloc_of

V = TypeVar("V")


class ByAlloc(dict[str, V]):
    def __init__(self, items: Iterable[tuple[str, V]] | dict[str, V] = ()):
        super().__init__()
        # alloc -> its task ids. A tuple, not a set: an alloc has a handful of tasks, and 1000 one-element sets
        # cost ~0.2 MB more than 1000 one-element tuples.
        self._index: dict[str, tuple[str, ...]] = {}
        self.update(items)

    def __setitem__(self, tid: str, value: V) -> None:
        if tid not in self:
            alloc = alloc_of(tid)
            self._index[alloc] = self._index.get(alloc, ()) + (tid,)
        super().__setitem__(tid, value)

    def __delitem__(self, tid: str) -> None:
        super().__delitem__(tid)
        self._unindex(tid)

    def _unindex(self, tid: str) -> None:
        alloc = alloc_of(tid)
        ids = self._index.get(alloc)
        if ids is not None:
            rest = tuple(t for t in ids if t != tid)
            if rest:
                self._index[alloc] = rest
            else:
                del self._index[alloc]

    _missing = object()

    def pop(self, tid: str, default=_missing):
        if tid in self:
            value = super().pop(tid)
            self._unindex(tid)
            return value
        if default is ByAlloc._missing:
            raise KeyError(tid)
        return default

    def popitem(self):
        tid, value = super().popitem()
        self._unindex(tid)
        return tid, value

    def clear(self) -> None:
        super().clear()
        self._index.clear()

    def setdefault(self, tid: str, default=None):
        if tid not in self:
            self[tid] = default
        return self[tid]

    def update(self, items=(), **kw) -> None:
        for tid, value in (items.items() if isinstance(items, dict) else items):
            self[tid] = value
        for tid, value in kw.items():
            self[tid] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def in_allocs(self, allocs: Iterable[str]) -> dict[str, V]:
        """The entries of these allocs, in no particular order."""
        return {tid: self[tid] for a in allocs for tid in self._index.get(a, ())}
