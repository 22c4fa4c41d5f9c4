"""Restart-policy arithmetic with the rules of Nomad's task restart tracker, as pure functions of (state, event, now).

The tracker state is a frozen value the controller stores with the task (restart counts survive a `kill -9` of the
daemon); every decision takes `now` and a random number in [0, 1) from the caller, so the same inputs always give
the same answer and tests need no mocks.

Rules (Nomad client/allocrunner/taskrunner/restarts):
- attempts == 0: nothing is ever restarted. A successful exit of a task that does not restart on success completes;
  anything else fails, whatever the mode (validation only allows mode "fail" with 0 attempts anyway).
- Otherwise each exit or start failure first checks the interval: when more than `interval` seconds passed since the
  interval began, the count goes back to 0 and a new interval begins now. Then the event counts as one attempt.
- A successful exit (code 0, no signal, no OOM kill) of a task that does not restart on success completes: batch and
  sysbatch tasks, poststop hooks and prestart/poststart hooks that are not sidecars. Service tasks (and sidecars)
  restart after success too, and that restart counts against the policy like a failure.
- A start failure that is not recoverable fails at once.
- More attempts than allowed in the interval: mode "fail" fails the task; mode "delay" restarts it when the current
  interval ends. The count is not reset by that decision: the next exit after the interval's end starts a new one.
- Within the policy: restart after `delay` plus a jitter of up to 25% of `delay`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol

from manifests.durations import format_duration

JITTER_FRACTION = 0.25

REASON_NO_RESTARTS = "policy allows no restarts"
REASON_UNRECOVERABLE = "start error is not recoverable"
REASON_WITHIN_POLICY = "restart within policy"
REASON_DELAY = "exceeded allowed attempts, waiting for the restart interval to end"
REASON_SUCCESS = "terminated successfully, no restart needed"
REASON_REQUESTED = "restart requested"

JOB_TYPES_DONE_ON_SUCCESS = frozenset({"batch", "sysbatch"})


class RestartPolicyLike(Protocol):
    """What this module needs from a restart block (manifests.model.RestartPolicy fits). Durations in seconds."""

    @property
    def attempts(self) -> int: ...

    @property
    def interval(self) -> float: ...

    @property
    def delay(self) -> float: ...

    @property
    def mode(self) -> str: ...


class DecisionKind(enum.StrEnum):
    RESTART = "restart"
    COMPLETE = "complete"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    kind: DecisionKind
    delay: float = 0.0  # seconds to wait before starting again (RESTART only)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RestartTracker:
    """Restart bookkeeping of one task instance. Create it with `RestartTracker.begin(now)` when the task first
    starts: as in Nomad, the first interval begins then, not at the first exit."""

    count: int = 0  # attempts in the current interval
    interval_start: float = 0.0  # wall-clock seconds (time.time()): it must survive a daemon restart
    restarts: int = 0  # total restarts decided, for status; never reset by the interval
    reason: str = ""  # why the last decision was taken

    @classmethod
    def begin(cls, now: float) -> RestartTracker:
        return cls(interval_start=now)


def restarts_on_success(job_type: str, hook: str | None = None, sidecar: bool = False) -> bool:
    """Whether a successful exit leads to a restart rather than completion."""
    if hook in ("prestart", "poststart"):
        return sidecar
    if hook == "poststop":
        return False
    return job_type not in JOB_TYPES_DONE_ON_SUCCESS


def exited_successfully(exit_code: int, signal: int = 0, oom_killed: bool = False) -> bool:
    return exit_code == 0 and signal == 0 and not oom_killed


def on_exit(
    state: RestartTracker,
    policy: RestartPolicyLike,
    job_type: str,
    *,
    exit_code: int,
    signal: int = 0,
    oom_killed: bool = False,
    now: float,
    rand: float,
    hook: str | None = None,
    sidecar: bool = False,
) -> tuple[RestartTracker, Decision]:
    """The task's process exited on its own (not stopped by us): restart, complete or fail, and the new state."""
    done_on_success = exited_successfully(exit_code, signal, oom_killed) and not restarts_on_success(
        job_type, hook, sidecar
    )
    if policy.attempts == 0:
        if done_on_success:
            return _decide(state, Decision(DecisionKind.COMPLETE, reason=REASON_NO_RESTARTS))
        return _decide(state, Decision(DecisionKind.FAIL, reason=REASON_NO_RESTARTS))
    state = _count_attempt(state, policy, now)
    if done_on_success:
        return _decide(state, Decision(DecisionKind.COMPLETE, reason=REASON_SUCCESS))
    return _within_policy(state, policy, now, rand)


def restarts_at_once(state: RestartTracker, policy: RestartPolicyLike, job_type: str, hook: str | None = None,
                     sidecar: bool = False) -> bool:
    """Whatever the task's next exit is (any code, signal or OOM kill) and whenever it comes, on_exit will decide
    RESTART with no delay. The launcher may then restart the task itself, before the daemon hears of the exit.
    The interval is not counted on to end: a clock set back would keep it open, so one attempt must be left now."""
    return (policy.attempts > 0 and policy.delay == 0 and restarts_on_success(job_type, hook, sidecar)
            and state.count + 1 <= policy.attempts)


def on_start_failure(
    state: RestartTracker,
    policy: RestartPolicyLike,
    *,
    now: float,
    rand: float,
    recoverable: bool = True,
) -> tuple[RestartTracker, Decision]:
    """Starting the task failed (spawn error, missing command...). Counts as an attempt, like an exit."""
    if policy.attempts == 0:
        return _decide(state, Decision(DecisionKind.FAIL, reason=REASON_NO_RESTARTS))
    state = _count_attempt(state, policy, now)
    if not recoverable:
        return _decide(state, Decision(DecisionKind.FAIL, reason=REASON_UNRECOVERABLE))
    return _within_policy(state, policy, now, rand)


def on_restart_requested(state: RestartTracker) -> tuple[RestartTracker, Decision]:
    """An operator asked for a restart (`tasksctl restart`): immediate, and not counted against the policy."""
    return _decide(state, Decision(DecisionKind.RESTART, 0.0, REASON_REQUESTED))


def jittered_delay(delay: float, rand: float) -> float:
    """`delay` plus up to 25% of it; `rand` in [0, 1) picks where in that range."""
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")
    return delay + delay * JITTER_FRACTION * rand


def fail_reason(policy: RestartPolicyLike) -> str:
    return f"exceeded allowed attempts {policy.attempts} in interval {format_duration(policy.interval)}"


def _count_attempt(state: RestartTracker, policy: RestartPolicyLike, now: float) -> RestartTracker:
    if now - state.interval_start > policy.interval:
        return replace(state, count=1, interval_start=now)
    return replace(state, count=state.count + 1)


def _within_policy(
    state: RestartTracker, policy: RestartPolicyLike, now: float, rand: float
) -> tuple[RestartTracker, Decision]:
    if state.count > policy.attempts:
        if policy.mode == "delay":
            wait = max(0.0, state.interval_start + policy.interval - now)
            return _decide(state, Decision(DecisionKind.RESTART, wait, REASON_DELAY))
        return _decide(state, Decision(DecisionKind.FAIL, reason=fail_reason(policy)))
    return _decide(state, Decision(DecisionKind.RESTART, jittered_delay(policy.delay, rand), REASON_WITHIN_POLICY))


def _decide(state: RestartTracker, decision: Decision) -> tuple[RestartTracker, Decision]:
    restarts = state.restarts + (decision.kind is DecisionKind.RESTART)
    return replace(state, restarts=restarts, reason=decision.reason), decision
