"""When the daemon trims its heap: once, after a burst of side effects and QUIET seconds without any."""
from __future__ import annotations

from controller.memtrim import BURST, QUIET, TrimSchedule


def test_a_burst_is_trimmed_once_after_the_quiet_period():
    t = TrimSchedule()
    now = 100.0
    for _ in range(BURST):  # one start per pass, passes close together
        t.note_work(1, now)
        assert not t.take(now)
        now += QUIET / 10
    assert not t.take(now)  # the last pass was QUIET/10 ago
    now += QUIET
    assert t.due_at is not None and t.due_at <= now
    assert t.take(now)
    assert not t.take(now + 100) and t.due_at is None  # once per burst


def test_a_pass_with_work_pushes_the_trim_back_and_idle_passes_do_not():
    t = TrimSchedule()
    t.note_work(BURST, 0.0)
    t.note_work(0, QUIET - 0.1)  # an idle pass (a timer, an API call) is not work
    assert t.due_at == QUIET
    t.note_work(1, QUIET - 0.1)
    assert not t.take(QUIET) and t.due_at == QUIET - 0.1 + QUIET


def test_a_little_work_is_not_worth_a_trim():
    t = TrimSchedule()
    t.note_work(BURST - 1, 0.0)
    assert not t.take(QUIET)
    assert t.due_at is None and t.work == 0  # and is forgotten, not added to the next burst
