"""Host account lookup and the dynamic workload user pool (pure; no root needed)."""
from __future__ import annotations

import json
import os
import pwd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolation.users import (
    DynamicUserPool,
    PoolExhausted,
    UserInfo,
    dynamic_user,
    host_account_exists,
    lookup_user,
)


def no_accounts(_id: int) -> bool:
    return False


# ---- lookup_user -------------------------------------------------------------------------------------------


def test_lookup_by_name_and_uid_agree():
    root = pwd.getpwuid(0)
    by_name, by_uid, by_digits = lookup_user(root.pw_name), lookup_user(0), lookup_user("0")
    assert by_name == by_uid == by_digits
    assert (by_name.uid, by_name.gid, by_name.home, by_name.name) == (0, root.pw_gid, root.pw_dir, root.pw_name)


def test_lookup_includes_primary_and_supplementary_groups():
    me = pwd.getpwuid(os.getuid())
    info = lookup_user(me.pw_name)
    assert info.gid in info.groups
    assert set(info.groups) == set(os.getgrouplist(me.pw_name, me.pw_gid))


@pytest.mark.parametrize("who", ["tasksd-no-such-user", 4_000_000_000 - 7, "3999999993"])
def test_unknown_user_raises_keyerror(who):
    with pytest.raises(KeyError):
        lookup_user(who)


def test_dynamic_user_identity():
    expected = UserInfo(80001, 80001, (80001,), "/nonexistent", "nomad-80001", "/usr/sbin/nologin")
    assert dynamic_user(80001) == expected


def test_host_account_exists_sees_root():
    assert host_account_exists(0)


# ---- DynamicUserPool ------------------------------------------------------------------------------------


def test_allocate_skips_accounts_in_use_and_other_owners():
    pool = DynamicUserPool(100, 110)
    a = pool.allocate("job/g/0/a", in_use={100}, account_exists=lambda i: i == 101)
    b = pool.allocate("job/g/0/b", account_exists=no_accounts)
    assert (a, b) == (102, 103)


def test_same_owner_gets_the_same_id_back():
    pool = DynamicUserPool(100, 110)
    first = pool.allocate("t", account_exists=no_accounts)
    assert pool.allocate("t", account_exists=no_accounts) == first
    assert pool.allocations() == {"t": first}


def test_released_ids_are_reused_last():
    pool = DynamicUserPool(100, 102)
    a = pool.allocate("a", account_exists=no_accounts)
    pool.release(a)
    assert pool.owner_of(a) is None
    # Round-robin: the id just freed comes back only after the rest of the range.
    assert [pool.allocate(k, account_exists=no_accounts) for k in ("b", "c", "d")] == [101, 102, 100]


def test_exhaustion_and_disabled_pool():
    pool = DynamicUserPool(100, 101)
    pool.allocate("a", account_exists=no_accounts)
    pool.allocate("b", account_exists=no_accounts)
    with pytest.raises(PoolExhausted, match="100-101"):
        pool.allocate("c", account_exists=no_accounts)
    off = DynamicUserPool(-1, -1)
    assert not off.enabled
    with pytest.raises(PoolExhausted, match="disabled"):
        off.allocate("a", account_exists=no_accounts)


@pytest.mark.parametrize("lo,hi", [(0, 10), (10, 5)])
def test_invalid_range(lo, hi):
    with pytest.raises(ValueError):
        DynamicUserPool(lo, hi)


def test_restart_never_hands_a_live_id_to_another_task():
    pool = DynamicUserPool(100, 103)
    live = {k: pool.allocate(k, account_exists=no_accounts) for k in ("a", "b")}
    pool.release(live.pop("a"))
    saved = json.loads(json.dumps(pool.to_dict()))  # what the controller writes to disk
    restored = DynamicUserPool.from_dict(saved)
    new = [restored.allocate(k, account_exists=no_accounts) for k in ("c", "d", "e")]
    assert live["b"] not in new
    assert len(set(new)) == 3
    assert restored.allocate("b", account_exists=no_accounts) == live["b"]


def test_from_dict_with_a_new_range_keeps_old_ids_reserved():
    pool = DynamicUserPool(100, 101)
    held = pool.allocate("a", account_exists=no_accounts)
    moved = DynamicUserPool.from_dict(pool.to_dict(), min_id=200, max_id=201)
    assert moved.owner_of(held) == "a"
    assert moved.allocate("b", account_exists=no_accounts) == 200


def test_from_dict_rejects_an_id_recorded_twice():
    with pytest.raises(ValueError, match="two owners"):
        DynamicUserPool.from_dict({"min": 1, "max": 9, "next": 1, "owners": {"a": 3, "b": 3}})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "release", "restart"]), st.integers(0, 7)), max_size=60))
def test_live_ids_are_always_distinct(ops):
    pool = DynamicUserPool(10, 15)
    for op, n in ops:
        key = f"task-{n}"
        if op == "alloc":
            try:
                pool.allocate(key, in_use={12}, account_exists=lambda i: i == 14)
            except PoolExhausted:
                assert len(pool.allocations()) == 4  # 6 ids minus one in use minus one account
        elif op == "release":
            uid = pool.allocations().get(key)
            if uid is not None:
                pool.release(uid)
        else:
            pool = DynamicUserPool.from_dict(json.loads(json.dumps(pool.to_dict())))
        ids = list(pool.allocations().values())
        assert len(ids) == len(set(ids))
        assert all(10 <= i <= 15 and i not in (12, 14) for i in ids)


def test_roots_are_kept_per_id_until_release_and_survive_a_restart():
    pool = DynamicUserPool(100, 110)
    a = pool.allocate("a", account_exists=no_accounts)
    b = pool.allocate("b", account_exists=no_accounts)
    pool.note_roots(a, ["/tmp"])
    pool.note_roots(a, ["/srv/scratch", "/tmp"])  # a manifest edit unveiled one more: the union is kept
    pool.note_roots(b, [])
    pool.note_roots(105, ["/tmp"])  # an id nobody holds records nothing
    assert pool.roots_of(a) == ("/srv/scratch", "/tmp")
    assert pool.roots_of(b) == ()
    assert pool.roots_of(105) == ()
    restored = DynamicUserPool.from_dict(json.loads(json.dumps(pool.to_dict())))
    assert restored.roots_of(a) == ("/srv/scratch", "/tmp")
    restored.release(a)
    assert restored.roots_of(a) == ()
    assert "roots" not in restored.to_dict()  # nothing held with roots: the file reads as before
    assert restored.release_owner("b") == b


def test_release_owner_drops_the_roots_too():
    pool = DynamicUserPool(100, 110)
    a = pool.allocate("a", account_exists=no_accounts)
    pool.note_roots(a, ["/tmp"])
    assert pool.release_owner("a") == a
    again = pool.allocate("a2", account_exists=no_accounts)
    assert pool.roots_of(again) == ()


def test_a_pool_file_without_roots_still_loads_and_bad_roots_are_refused():
    old = {"min": 100, "max": 110, "next": 101, "owners": {"a": 100}}
    assert DynamicUserPool.from_dict(old).roots_of(100) == ()
    for bad in ({"100": "/tmp"}, {"100": ["tmp"]}, ["/tmp"]):
        with pytest.raises(ValueError):
            DynamicUserPool.from_dict({**old, "roots": bad})
    # Roots of an id no owner holds (a hand-edited file) are dropped, not kept forever.
    assert DynamicUserPool.from_dict({**old, "roots": {"105": ["/tmp"]}}).to_dict().get("roots") is None


def test_rekey_moves_an_id_and_its_roots_to_another_owner():
    pool = DynamicUserPool(100, 110)
    a = pool.allocate("a", account_exists=no_accounts)
    pool.note_roots(a, ["/tmp"])
    pool.rekey(a, f"releasing:{a}")
    assert pool.owner_of(a) == f"releasing:{a}" and pool.roots_of(a) == ("/tmp",)
    again = pool.allocate("a", account_exists=no_accounts)  # the instance, starting again meanwhile
    assert again != a
    pool.rekey(a, f"quarantined:{a}")
    assert pool.owner_of(a) == f"quarantined:{a}"
    assert a not in [pool.allocate(f"t{i}", account_exists=no_accounts) for i in range(9)]  # never handed on
