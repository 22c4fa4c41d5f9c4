"""The key of a respawned run is derived from its predecessor's, so storing one key stores the next (the launcher
may start that run before the daemon hears of it)."""
from __future__ import annotations

from isolation.drivers.base import respawn_key
from isolation.drivers.common import new_key


def test_a_respawn_key_is_fixed_by_the_key_keeps_its_prefix_and_never_repeats_along_a_chain() -> None:
    key = new_key("0123abcd-alloc", "web.v2")  # a task name with a dot in it
    assert respawn_key(key) == respawn_key(key)
    chain = [key]
    for _ in range(1000):
        chain.append(respawn_key(chain[-1]))
    assert len(set(chain)) == len(chain)
    assert all(k.rsplit(".", 1)[0] == "0123abcd-alloc.web.v2" for k in chain)
    assert respawn_key(new_key("0123abcd-alloc", "web.v2")) != respawn_key(key)  # drawn keys start new chains
