"""Restart-policy arithmetic (Nomad's restart tracker rules) under a frozen clock."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from reconcilers.restart import (
    REASON_DELAY,
    REASON_NO_RESTARTS,
    REASON_REQUESTED,
    REASON_SUCCESS,
    REASON_UNRECOVERABLE,
    REASON_WITHIN_POLICY,
    Decision,
    DecisionKind,
    RestartTracker,
    jittered_delay,
    on_exit,
    on_restart_requested,
    on_start_failure,
    restarts_at_once,
    restarts_on_success,
)

RESTART, COMPLETE, FAIL = DecisionKind.RESTART, DecisionKind.COMPLETE, DecisionKind.FAIL
EPOCH = "2026-03-01 12:00:00"


@dataclass(frozen=True)
class Policy:
    attempts: int = 2
    interval: float = 1800.0
    delay: float = 15.0
    mode: str = "fail"


def crash(state: RestartTracker, policy: Policy, job_type: str = "service", rand: float = 0.0, **kw):
    kw.setdefault("exit_code", 1)
    return on_exit(state, policy, job_type, now=time.time(), rand=rand, **kw)


def test_service_failures_restart_until_attempts_are_used_then_fail() -> None:
    policy = Policy(attempts=2, interval=1800, delay=15, mode="fail")
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        clock.tick(timedelta(seconds=10))
        state, d1 = crash(state, policy)
        assert d1 == Decision(RESTART, 15.0, REASON_WITHIN_POLICY)
        assert state.count == 1
        clock.tick(timedelta(seconds=20))
        state, d2 = crash(state, policy)
        assert (d2.kind, state.count) == (RESTART, 2)
        clock.tick(timedelta(seconds=20))
        state, d3 = crash(state, policy)
    assert d3.kind is FAIL
    assert d3.reason == "exceeded allowed attempts 2 in interval 30m"
    assert state.reason == d3.reason
    assert (state.count, state.restarts) == (3, 2)


def test_counter_resets_when_more_than_interval_has_passed() -> None:
    policy = Policy(attempts=1, interval=60, delay=5)
    with freeze_time(EPOCH) as clock:
        start = time.time()
        state = RestartTracker.begin(start)
        state, _ = crash(state, policy)
        clock.tick(timedelta(seconds=61))
        state, decision = crash(state, policy)
        assert decision.kind is RESTART
        assert state.count == 1
        assert state.interval_start == start + 61  # the new interval begins at this exit
    assert state.restarts == 2


def test_exactly_interval_later_is_still_the_same_interval() -> None:
    policy = Policy(attempts=1, interval=60, delay=5)
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        state, _ = crash(state, policy)
        clock.tick(timedelta(seconds=60))
        state, decision = crash(state, policy)
    assert decision.kind is FAIL
    assert state.count == 2


def test_the_first_interval_begins_when_the_task_starts_not_at_its_first_exit() -> None:
    policy = Policy(attempts=1, interval=60, delay=5)
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        clock.tick(timedelta(seconds=3600))  # ran for an hour before failing
        state, _ = crash(state, policy)
        assert state.interval_start == time.time()
        clock.tick(timedelta(seconds=1))
        state, decision = crash(state, policy)
    assert decision.kind is FAIL


def test_attempts_zero_mode_fail() -> None:
    policy = Policy(attempts=0, interval=60, delay=5, mode="fail")
    with freeze_time(EPOCH):
        state = RestartTracker.begin(time.time())
        after_fail, d_fail = crash(state, policy, exit_code=1)
        after_ok_service, d_ok_service = crash(state, policy, exit_code=0)
        after_ok_batch, d_ok_batch = crash(state, policy, "batch", exit_code=0)
        _, d_fail_batch = crash(state, policy, "batch", exit_code=3)
    assert d_fail == Decision(FAIL, 0.0, REASON_NO_RESTARTS)
    assert d_ok_service.kind is FAIL  # a service must keep running: exiting at all is a failure here
    assert d_ok_batch.kind is COMPLETE
    assert d_fail_batch.kind is FAIL
    assert after_fail.count == after_ok_service.count == after_ok_batch.count == 0
    assert after_fail.restarts == 0


def test_mode_delay_waits_for_the_interval_end_then_starts_a_new_interval() -> None:
    policy = Policy(attempts=2, interval=300, delay=10, mode="delay")
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        for _ in range(2):
            clock.tick(timedelta(seconds=20))
            state, d = crash(state, policy)
            assert d.kind is RESTART
        clock.tick(timedelta(seconds=20))  # 60 s into the interval, third failure
        state, d = crash(state, policy)
        assert d == Decision(RESTART, 240.0, REASON_DELAY)
        assert state.count == 3
        clock.tick(timedelta(seconds=240 + 2))  # restarted at the interval end, failed again soon after
        state, d = crash(state, policy, rand=0.5)
    assert d == Decision(RESTART, 10.0 * 1.125, REASON_WITHIN_POLICY)
    assert state.count == 1
    assert state.restarts == 4


def test_mode_delay_at_the_very_end_of_the_interval_waits_zero() -> None:
    policy = Policy(attempts=0 + 1, interval=30, delay=5, mode="delay")
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        state, _ = crash(state, policy)
        clock.tick(timedelta(seconds=30))
        state, d = crash(state, policy)
    assert d == Decision(RESTART, 0.0, REASON_DELAY)


@pytest.mark.parametrize("job_type", ["batch", "sysbatch"])
def test_batch_success_completes_and_failure_restarts(job_type: str) -> None:
    policy = Policy(attempts=3, interval=86400, delay=15)
    with freeze_time(EPOCH):
        state = RestartTracker.begin(time.time())
        s_ok, d_ok = crash(state, policy, job_type, exit_code=0)
        s_bad, d_bad = crash(state, policy, job_type, exit_code=2)
    assert d_ok == Decision(COMPLETE, 0.0, REASON_SUCCESS)
    assert s_ok.restarts == 0
    assert d_bad.kind is RESTART
    assert s_bad.restarts == 1


def test_service_restarts_after_success_and_it_counts() -> None:
    policy = Policy(attempts=1, interval=600, delay=15)
    with freeze_time(EPOCH):
        state = RestartTracker.begin(time.time())
        state, d1 = crash(state, policy, exit_code=0)
        state, d2 = crash(state, policy, exit_code=0)
    assert d1.kind is RESTART
    assert d2.kind is FAIL


@pytest.mark.parametrize(
    "kw", [{"exit_code": 0, "signal": 9}, {"exit_code": 0, "oom_killed": True}, {"exit_code": 137, "signal": 9}]
)
def test_a_signal_or_oom_kill_is_not_success(kw: dict) -> None:
    policy = Policy(attempts=3, interval=86400, delay=15)
    with freeze_time(EPOCH):
        _, d = crash(RestartTracker.begin(time.time()), policy, "batch", **kw)
    assert d.kind is RESTART


@pytest.mark.parametrize(
    ("job_type", "hook", "sidecar", "restarts"),
    [
        ("service", None, False, True),
        ("batch", None, False, False),
        ("sysbatch", None, False, False),
        ("system", None, False, True),
        ("service", "prestart", False, False),
        ("service", "prestart", True, True),
        ("batch", "prestart", True, True),
        ("service", "poststart", False, False),
        ("service", "poststart", True, True),
        ("service", "poststop", False, False),
        ("service", "poststop", True, False),
    ],
)
def test_which_tasks_restart_after_success(job_type: str, hook: str | None, sidecar: bool, restarts: bool) -> None:
    assert restarts_on_success(job_type, hook, sidecar) is restarts
    policy = Policy(attempts=3, interval=600, delay=1)
    with freeze_time(EPOCH):
        _, d = on_exit(RestartTracker.begin(time.time()), policy, job_type, exit_code=0, now=time.time(), rand=0.0,
                       hook=hook, sidecar=sidecar)
    assert d.kind is (RESTART if restarts else COMPLETE)


def test_start_failure_counts_as_an_attempt() -> None:
    policy = Policy(attempts=1, interval=600, delay=15)
    with freeze_time(EPOCH) as clock:
        state = RestartTracker.begin(time.time())
        state, d1 = on_start_failure(state, policy, now=time.time(), rand=0.0)
        clock.tick(timedelta(seconds=16))
        state, d2 = crash(state, policy)
    assert d1 == Decision(RESTART, 15.0, REASON_WITHIN_POLICY)
    assert d2.kind is FAIL
    assert state.count == 2


def test_unrecoverable_start_failure_fails_at_once() -> None:
    policy = Policy(attempts=5, interval=600, delay=15)
    with freeze_time(EPOCH):
        state, d = on_start_failure(RestartTracker.begin(time.time()), policy, now=time.time(), rand=0.0,
                                    recoverable=False)
    assert d == Decision(FAIL, 0.0, REASON_UNRECOVERABLE)
    assert state.count == 1


def test_start_failure_with_no_attempts_fails() -> None:
    with freeze_time(EPOCH):
        state, d = on_start_failure(RestartTracker.begin(time.time()), Policy(attempts=0), now=time.time(), rand=0.5)
    assert d == Decision(FAIL, 0.0, REASON_NO_RESTARTS)
    assert state.count == 0


def test_requested_restart_is_immediate_and_not_counted() -> None:
    with freeze_time(EPOCH):
        state = RestartTracker.begin(time.time())
        state, _ = crash(state, Policy())
        after, d = on_restart_requested(state)
    assert d == Decision(RESTART, 0.0, REASON_REQUESTED)
    assert after.count == state.count
    assert after.restarts == state.restarts + 1


@given(rand=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), delay=st.floats(min_value=1e-3, max_value=1e6))
def test_jitter_stays_within_a_quarter_of_the_delay(rand: float, delay: float) -> None:
    d = jittered_delay(delay, rand)
    assert delay <= d <= delay * 1.25
    assert d == pytest.approx(delay * (1 + 0.25 * rand))


def test_jitter_endpoints_and_zero_delay() -> None:
    assert jittered_delay(20.0, 0.0) == 20.0
    assert jittered_delay(20.0, 0.5) == 22.5
    assert 24.99 < jittered_delay(20.0, 0.9999) < 25.0
    assert jittered_delay(0.0, 0.7) == 0.0


@pytest.mark.parametrize("rand", [1.0, -0.1, 2.0])
def test_rand_outside_unit_interval_is_refused(rand: float) -> None:
    with pytest.raises(ValueError):
        jittered_delay(10.0, rand)


def test_the_restart_delay_uses_the_injected_random_number() -> None:
    with freeze_time(EPOCH):
        _, d = crash(RestartTracker.begin(time.time()), Policy(delay=40), rand=0.75)
    assert d.delay == 40 + 40 * 0.25 * 0.75


def test_tracker_state_is_immutable() -> None:
    state = RestartTracker.begin(100.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.count = 5  # type: ignore[misc]
    new, _ = on_exit(state, Policy(), "service", exit_code=1, now=101.0, rand=0.0)
    assert (state.count, new.count) == (0, 1)


def test_works_with_the_manifest_model_defaults() -> None:
    model = pytest.importorskip("manifests.model")
    policy = model.RestartPolicy.default_for("batch")  # 3 / 24h / 15s / fail
    with freeze_time(EPOCH):
        state = RestartTracker.begin(time.time())
        decisions = []
        for _ in range(4):
            state, d = crash(state, policy, "batch")
            decisions.append(d.kind)
    assert decisions == [RESTART, RESTART, RESTART, FAIL]
    assert state.reason == "exceeded allowed attempts 3 in interval 24h"


EXITS = [dict(exit_code=0), dict(exit_code=1), dict(exit_code=137, signal=9), dict(exit_code=137, signal=9, oom_killed=True)]


@given(st.integers(0, 6), st.integers(1, 6), st.floats(0, 1e6), st.floats(-1e6, 1e6), st.sampled_from(EXITS),
       st.sampled_from(["fail", "delay"]), st.floats(0, 0.999))
def test_restarts_at_once_promises_what_on_exit_decides(count, attempts, interval, later, exit, mode, rand) -> None:
    """When it says yes, every later exit (any code, signal or OOM kill; any time, the clock set back included)
    gets RESTART with no delay: the launcher's respawn is then exactly the daemon's decision."""
    policy = Policy(attempts=attempts, interval=interval, delay=0.0, mode=mode)
    state = dataclasses.replace(RestartTracker.begin(1000.0), count=count)
    if restarts_at_once(state, policy, "service"):
        _, d = on_exit(state, policy, "service", now=1000.0 + later, rand=rand, **exit)
        assert (d.kind, d.delay) == (RESTART, 0.0)
    else:
        assert count + 1 > attempts


def test_restarts_at_once_only_for_no_delay_attempts_left_and_restart_on_success() -> None:
    state = RestartTracker.begin(0.0)
    assert restarts_at_once(state, Policy(attempts=1, delay=0.0), "service")
    assert not restarts_at_once(state, Policy(attempts=1, delay=0.5), "service")  # the delay is the daemon's timer
    assert not restarts_at_once(state, Policy(attempts=0, delay=0.0), "service")
    assert not restarts_at_once(state, Policy(attempts=3, delay=0.0), "batch")  # exit 0 completes a batch task
    assert not restarts_at_once(state, Policy(attempts=3, delay=0.0), "service", hook="prestart")
    assert restarts_at_once(state, Policy(attempts=3, delay=0.0), "service", hook="prestart", sidecar=True)
    used = dataclasses.replace(state, count=3)
    assert not restarts_at_once(used, Policy(attempts=3, delay=0.0), "service")  # no attempt left right now
