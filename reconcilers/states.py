"""The lifecycle of one task instance as an explicit state machine.

Why each transition exists:
    pending    -> starting     the controller launches it
    pending    -> stopped      removed before it ever started
    starting   -> running      the launcher confirmed the process (or it was re-adopted after a daemon restart)
    starting   -> restarting   the start failed (or the process vanished while tasksd was down) and the policy
                               allows another attempt
    starting   -> failed       the start failed and the policy gives up
    starting   -> stopping     a stop was asked while the spawn was in flight
    running    -> restarting   it exited and the restart policy says start again
    running    -> complete     it exited and needs no restart (batch success)
    running    -> failed       it exited and the policy gives up
    running    -> stopping     manifest removed or edited, operator stop or restart, drain
    stopping   -> stopped      the process and its cgroup are gone
    stopping   -> restarting   it was stopped in order to start again (spec update, `tasksctl restart`)
    restarting -> starting     the restart delay is over
    restarting -> stopped      removed while waiting: there is no process to kill
    complete, failed, stopped -> pending    a new spec version or an operator's restart starts over

Values are lowercase strings: they are what `tasksctl status --json` shows. A transition to the same state is not
in the table: re-asserting a state is the caller's no-op to decide, not a transition.
"""
from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    PENDING = "pending"  # desired, not started yet
    STARTING = "starting"  # spawn requested, no confirmed process yet
    RUNNING = "running"
    STOPPING = "stopping"  # kill_signal sent, waiting for the process (and its cgroup) to be gone
    RESTARTING = "restarting"  # no process; waiting out the restart delay
    COMPLETE = "complete"  # exited and needs no restart (batch success)
    FAILED = "failed"  # exited or failed to start, and the restart policy gave up
    STOPPED = "stopped"  # stopped on purpose (manifest removed or edited, drain)


S = TaskState

ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    S.PENDING: frozenset({S.STARTING, S.STOPPED}),
    S.STARTING: frozenset({S.RUNNING, S.RESTARTING, S.FAILED, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING, S.RESTARTING, S.COMPLETE, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.RESTARTING}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPED}),
    S.COMPLETE: frozenset({S.PENDING}),
    S.FAILED: frozenset({S.PENDING}),
    S.STOPPED: frozenset({S.PENDING}),
}

# Nothing happens to these on their own: no process, no timer. Only a new spec or an operator moves them.
TERMINAL_STATES: frozenset[TaskState] = frozenset({S.COMPLETE, S.FAILED, S.STOPPED})
# A process exists or is about to (now, or when a restart delay ends): the controller owes them work.
ACTIVE_STATES: frozenset[TaskState] = frozenset(TaskState) - TERMINAL_STATES
# A process may exist right now: these must be adopted after a daemon restart, and killed before GC.
PROCESS_STATES: frozenset[TaskState] = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


class IllegalTransition(ValueError):
    def __init__(self, current: TaskState, new: TaskState) -> None:
        super().__init__(f"illegal task state transition: {current.value} -> {new.value}")
        self.current = current
        self.new = new


def can_transition(current: TaskState, new: TaskState) -> bool:
    return new in ALLOWED[current]


def transition(current: TaskState, new: TaskState) -> TaskState:
    """Return `new` if the lifecycle allows going there from `current`, else raise IllegalTransition."""
    if new not in ALLOWED[current]:
        raise IllegalTransition(current, new)
    return new
