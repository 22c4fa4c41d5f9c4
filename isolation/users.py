"""Task identities: host accounts (raw_exec, exec) and exec2's dynamic workload users.

`DynamicUserPool` is pure bookkeeping: the controller persists `to_dict()` after every change and restores it with
`from_dict()`, so a restarted daemon keeps every live task's id reserved and never hands it out twice.
"""
from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEFAULT_DYNAMIC_USER_MIN = 80000
DEFAULT_DYNAMIC_USER_MAX = 89999
DYNAMIC_USER_HOME = "/nonexistent"
DYNAMIC_USER_SHELL = "/usr/sbin/nologin"


@dataclass(frozen=True)
class UserInfo:
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, primary gid included (what setgroups should get)
    home: str
    name: str
    shell: str


def lookup_user(name_or_uid: str | int) -> UserInfo:
    """A host account by name or uid ("nobody", "65534", 65534). KeyError when there is no such account.

    A numeric string is tried as a name first (names may be all digits), then as a uid."""
    entry = None
    if isinstance(name_or_uid, int):
        try:
            entry = pwd.getpwuid(name_or_uid)
        except KeyError:
            raise KeyError(f"user with uid {name_or_uid} does not exist") from None
    else:
        try:
            entry = pwd.getpwnam(name_or_uid)
        except KeyError:
            if not name_or_uid.isdigit():
                raise KeyError(f"user {name_or_uid!r} does not exist") from None
            try:
                entry = pwd.getpwuid(int(name_or_uid))
            except KeyError:
                raise KeyError(f"user {name_or_uid!r} does not exist") from None
    groups = tuple(sorted(set(_grouplist(entry.pw_name, entry.pw_gid))))
    return UserInfo(entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_name, entry.pw_shell)


def _grouplist(name: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return [gid]


def dynamic_user(uid: int) -> UserInfo:
    """The identity of a dynamic workload user: no account, gid = uid, named as exec2 names them."""
    return UserInfo(uid, uid, (uid,), DYNAMIC_USER_HOME, f"nomad-{uid}", DYNAMIC_USER_SHELL)


def host_account_exists(id_: int) -> bool:
    """True when a user or a group with this number exists (a dynamic uid is also used as the gid)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(id_)
            return True
        except KeyError:
            pass
    return False


class PoolExhausted(RuntimeError):
    pass


class DynamicUserPool:
    """Allocates UIDs (used as GID too) from [min, max] to task owners; min or max of -1 disables the pool.

    Ids are handed out round-robin from the last one given, so an id just released is reused as late as possible
    (what it left in shared directories is removed before it is released: see note_roots). An owner asking again
    gets the id it already holds.
    Not thread-safe: the caller serialises access (and persists after each change).
    """

    def __init__(self, min_id: int = DEFAULT_DYNAMIC_USER_MIN, max_id: int = DEFAULT_DYNAMIC_USER_MAX):
        if min_id != -1 and max_id != -1:
            if min_id < 1 or max_id < min_id:
                raise ValueError(f"dynamic user range {min_id}-{max_id} is invalid (need 1 <= min <= max)")
        self.min = min_id
        self.max = max_id
        self._owners: dict[str, int] = {}
        # Host directories each held id could make entries in (unveiled with "c" outside the task's own dirs,
        # /tmp by default): what it leaves there is removed before the id goes back (see safefile.remove_owned).
        self._roots: dict[int, tuple[str, ...]] = {}
        self._next = min_id

    @property
    def enabled(self) -> bool:
        return self.min != -1 and self.max != -1

    def allocate(self, owner_key: str, in_use: Iterable[int] = (),
                 account_exists: Callable[[int], bool] = host_account_exists) -> int:
        """An id no host account, no id in `in_use` and no other owner of this pool has."""
        if not self.enabled:
            raise PoolExhausted("dynamic workload users are disabled (dynamic_user_min/max = -1)")
        held = self._owners.get(owner_key)
        if held is not None:
            return held
        taken = set(self._owners.values()) | set(in_use)
        size = self.max - self.min + 1
        start = self._next if self.min <= self._next <= self.max else self.min
        for i in range(size):
            candidate = self.min + (start - self.min + i) % size
            if candidate in taken or account_exists(candidate):
                continue
            self._owners[owner_key] = candidate
            self._next = candidate + 1 if candidate < self.max else self.min
            return candidate
        raise PoolExhausted(f"no free dynamic user id in {self.min}-{self.max}")

    def release(self, uid: int) -> None:
        """Free `uid` (no-op if it is not allocated)."""
        for owner, held in list(self._owners.items()):
            if held == uid:
                del self._owners[owner]
        self._roots.pop(uid, None)

    def release_owner(self, owner_key: str) -> int | None:
        uid = self._owners.pop(owner_key, None)
        if uid is not None:
            self._roots.pop(uid, None)
        return uid

    def note_roots(self, uid: int, roots: Iterable[str]) -> None:
        """Record host directories `uid` may leave entries in; kept (as a union) until the id is released."""
        if uid in self._owners.values():
            merged = tuple(sorted(set(self._roots.get(uid, ())) | set(roots)))
            if merged:
                self._roots[uid] = merged

    def roots_of(self, uid: int) -> tuple[str, ...]:
        return self._roots.get(uid, ())

    def rekey(self, uid: int, owner_key: str) -> None:
        """Hand `uid` (held) to another owner key, its roots with it: a uid being given back is held by
        "releasing:<uid>" while its files are removed, so the task instance that had it gets a new one if it
        starts again meanwhile; one whose files could not all be removed stays held as "quarantined:<uid>"."""
        for owner, held in list(self._owners.items()):
            if held == uid:
                del self._owners[owner]
                self._owners[owner_key] = uid

    def owner_of(self, uid: int) -> str | None:
        for owner, held in self._owners.items():
            if held == uid:
                return owner
        return None

    def allocations(self) -> dict[str, int]:
        return dict(self._owners)

    def to_dict(self) -> dict:
        out = {"min": self.min, "max": self.max, "next": self._next, "owners": dict(self._owners)}
        if self._roots:
            out["roots"] = {str(uid): list(roots) for uid, roots in self._roots.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict, min_id: int | None = None, max_id: int | None = None) -> DynamicUserPool:
        """Restore a saved pool. Passing the configured range lets the operator change it: ids held by live
        owners outside the new range stay reserved until released, so nothing is handed out twice."""
        pool = cls(int(data["min"]) if min_id is None else min_id, int(data["max"]) if max_id is None else max_id)
        owners = data.get("owners") or {}
        if not isinstance(owners, dict):
            raise ValueError("dynamic user pool: 'owners' must be a mapping")
        seen: set[int] = set()
        for owner, uid in owners.items():
            uid = int(uid)
            if uid in seen:
                raise ValueError(f"dynamic user pool: id {uid} is recorded for two owners")
            seen.add(uid)
            pool._owners[str(owner)] = uid
        roots = data.get("roots") or {}  # absent in files written before roots were recorded
        if not isinstance(roots, dict):
            raise ValueError("dynamic user pool: 'roots' must be a mapping")
        for uid, paths in roots.items():
            if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
                raise ValueError(f"dynamic user pool: roots of id {uid} must be a list of absolute paths")
            if int(uid) in seen:
                pool._roots[int(uid)] = tuple(paths)
        nxt = int(data.get("next", pool.min))
        pool._next = nxt if pool.min <= nxt <= pool.max else pool.min
        return pool
