"""The task lifecycle table: allowed moves, refused moves, and the state groups."""
from __future__ import annotations

import itertools
import json

import pytest

from reconcilers.states import (
    ACTIVE_STATES,
    ALLOWED,
    PROCESS_STATES,
    TERMINAL_STATES,
    IllegalTransition,
    TaskState,
    can_transition,
    transition,
)

S = TaskState

EXPECTED_EDGES = {
    (S.PENDING, S.STARTING), (S.PENDING, S.STOPPED),
    (S.STARTING, S.RUNNING), (S.STARTING, S.RESTARTING), (S.STARTING, S.FAILED), (S.STARTING, S.STOPPING),
    (S.RUNNING, S.STOPPING), (S.RUNNING, S.RESTARTING), (S.RUNNING, S.COMPLETE), (S.RUNNING, S.FAILED),
    (S.STOPPING, S.STOPPED), (S.STOPPING, S.RESTARTING),
    (S.RESTARTING, S.STARTING), (S.RESTARTING, S.STOPPED),
    (S.COMPLETE, S.PENDING), (S.FAILED, S.PENDING), (S.STOPPED, S.PENDING),
}
ALL_PAIRS = set(itertools.product(TaskState, TaskState))


def test_values_are_the_lowercase_names_shown_in_json() -> None:
    assert [s.value for s in TaskState] == [
        "pending", "starting", "running", "stopping", "restarting", "complete", "failed", "stopped",
    ]
    assert json.dumps({"state": S.RUNNING}) == '{"state": "running"}'
    assert TaskState("failed") is S.FAILED


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert set(ALLOWED) == set(TaskState)
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == EXPECTED_EDGES


@pytest.mark.parametrize(("current", "new"), sorted(EXPECTED_EDGES))
def test_every_allowed_transition(current: TaskState, new: TaskState) -> None:
    assert transition(current, new) is new
    assert can_transition(current, new)


@pytest.mark.parametrize(("current", "new"), sorted(ALL_PAIRS - EXPECTED_EDGES))
def test_every_other_transition_is_refused_naming_both_states(current: TaskState, new: TaskState) -> None:
    assert not can_transition(current, new)
    with pytest.raises(IllegalTransition) as info:
        transition(current, new)
    assert info.value.current is current and info.value.new is new
    assert f"{current.value} -> {new.value}" in str(info.value)


@pytest.mark.parametrize(
    ("current", "new"),
    [(S.RUNNING, S.PENDING), (S.RUNNING, S.STARTING), (S.FAILED, S.RUNNING), (S.STOPPED, S.STOPPING),
     (S.COMPLETE, S.RESTARTING), (S.PENDING, S.RUNNING), (S.RESTARTING, S.RUNNING), (S.RUNNING, S.RUNNING)],
)
def test_notable_illegal_transitions(current: TaskState, new: TaskState) -> None:
    with pytest.raises(IllegalTransition):
        transition(current, new)


def test_illegal_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        transition(S.COMPLETE, S.RUNNING)


def test_groups_partition_the_states() -> None:
    assert ACTIVE_STATES | TERMINAL_STATES == set(TaskState)
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert TERMINAL_STATES == {S.COMPLETE, S.FAILED, S.STOPPED}
    assert PROCESS_STATES == {S.STARTING, S.RUNNING, S.STOPPING}
    assert PROCESS_STATES < ACTIVE_STATES


def test_terminal_states_only_start_over() -> None:
    for state in TERMINAL_STATES:
        assert ALLOWED[state] == {S.PENDING}


def _reachable(start: TaskState) -> set[TaskState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_pending_and_every_active_state_can_end() -> None:
    assert _reachable(S.PENDING) == set(TaskState)
    for state in ACTIVE_STATES:
        assert _reachable(state) & TERMINAL_STATES, state
        assert S.STOPPED in _reachable(state), state  # whatever happens, a task can always be stopped


def test_a_task_with_a_process_is_stopped_only_through_stopping() -> None:
    for state in PROCESS_STATES - {S.STOPPING}:
        assert S.STOPPED not in ALLOWED[state]
