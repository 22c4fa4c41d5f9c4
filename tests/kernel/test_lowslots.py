"""The C child's descriptors: placed in the launcher's low slots, copied alone into the child, slots reset after."""
from __future__ import annotations

import os

import pytest

from isolation import childplan
from isolation.launcher import LowSlots

pytestmark = pytest.mark.root


def target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_place_moves_every_descriptor_below_the_limit_and_reset_lets_go_of_them():
    low = LowSlots()
    r, w = os.pipe()
    ns = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fds, enter = low.place({"stdin": r, "stdout": w, "stderr": w, "errpipe": w}, {"uts": ns})
        assert fds["stdout"] == fds["stderr"] == fds["errpipe"] != fds["stdin"]  # one slot per descriptor
        assert all(v < low.limit for v in [*fds.values(), *enter.values()])
        assert target(fds["stdin"]) == target(r) and target(enter["uts"]) == target(ns)
        assert all(os.get_inheritable(v) is False for v in fds.values())  # an exec closes them
        low.reset()
        assert {target(s) for s in low.slots} == {"/dev/null"}
        os.close(w)
        assert os.read(r, 1) == b""  # no slot holds the write end any more: the reader sees EOF
        assert low.place({f"fd{i}": i for i in range(LowSlots.SIZE + 1)}, None) is None  # too many: not placed
    finally:
        for fd in (r, ns, low.null, *low.slots):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.mark.skipif(not childplan.available(), reason="the C extension isolation._spawn is not built")
def test_spawn_refuses_an_error_pipe_at_or_above_the_limit():
    from isolation import _spawn

    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="fd_limit"):
            _spawn.spawn(0, w, 5, [], b"/bin/true", [b"true"], [], None, w)
    finally:
        os.close(r)
        os.close(w)
