"""JSON response bodies for listings (every task, every spec), encoded one item at a time.

Encoding a thousand tasks as one object first builds a thousand dicts with their strings, then one 600 KB str,
then its bytes: all of it freed a moment later, and all of it left behind in the allocators. pymalloc keeps a pool
that one long-lived object still uses, malloc keeps what it cannot trim, and the daemon stayed 1.1-1.7 MB larger
after its first `tasksctl status` at 1000 tasks. One item at a time, the same few blocks are reused for every item
and only the output buffer is large (which malloc maps and unmaps whole: see `isolation.sys.fix_mmap_threshold`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

_encode = json.JSONEncoder(default=str).encode  # as json.dumps(obj, default=str), without a new encoder per item


def listing(head: dict[str, Any], key: str, items: Iterable[Any],
            item: Callable[[Any], Any] = lambda x: x, as_object: bool = False) -> bytearray:
    """The JSON of `{**head, key: [item(x) for x in items]}` followed by a newline, where `item` is called for
    one element at a time and its result is dropped once encoded. With `as_object`, `items` yields (name, value)
    pairs and `key` holds an object `{name: item(value)}` instead of a list."""
    buf = bytearray(b"{")
    for k, v in head.items():
        buf += _encode(k).encode()
        buf += b": "
        buf += _encode(v).encode()
        buf += b", "
    buf += _encode(key).encode()
    buf += b": "
    _members(buf, items, item, as_object)
    buf += b"}\n"
    return buf  # not bytes(buf): that would copy it


def array(items: Iterable[Any], item: Callable[[Any], Any] = lambda x: x) -> bytearray:
    """The JSON of `[item(x) for x in items]` followed by a newline, one element at a time (as `listing`)."""
    buf = bytearray()
    _members(buf, items, item, False)
    buf += b"\n"
    return buf


def _members(buf: bytearray, items: Iterable[Any], item: Callable[[Any], Any], as_object: bool) -> None:
    buf += b"{" if as_object else b"["
    first = True
    for x in items:
        if not first:
            buf += b", "
        first = False
        if as_object:
            name, x = x
            buf += _encode(name).encode()
            buf += b": "
        buf += _encode(item(x)).encode()
    buf += b"}" if as_object else b"]"
