"""plan(desired, observed, now) -> actions. Pure: no I/O, no clock, no randomness; the same inputs give the same plan.

Level-triggered in the controller-runtime sense: the plan depends only on what is wanted and what is, never on
which event woke the controller, so lost, repeated or reordered events cannot make it wrong. Executing a plan twice
is harmless because a task with an action in flight (`busy`) gets no new action.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass

from reconcilers.desired import DesiredTask
from reconcilers.states import PROCESS_STATES, TERMINAL_STATES, TaskState

# A process exists, or a restart is scheduled: such a task must be stopped, not merely forgotten.
_LIVE = PROCESS_STATES | {TaskState.RESTARTING}


@dataclass(frozen=True, slots=True)
class ObservedTask:
    task_id: str
    alloc: str  # "job/group/index"
    state: TaskState
    spec_hash: str | None
    next_start_at: float | None = None
    busy: bool = False  # an action is in flight
    successful: bool = False  # the last run exited 0 (for prestart ordering)
    template_hash: str | None = None  # live templates the running process has (None: unknown)


@dataclass(frozen=True, slots=True)
class Start:
    task_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    task_id: str
    reason: str
    then_start: bool = False  # the spec changed: start the new version once the old one is gone


@dataclass(frozen=True, slots=True)
class Rerender:
    """Live templates (change_mode noop/signal) changed: render them again in place, signal if asked."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Forget:
    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MarkAllocGone:
    alloc: str


@dataclass(frozen=True, slots=True)
class CollectAlloc:
    alloc: str


Action = Start | Stop | Rerender | Forget | MarkAllocGone | CollectAlloc


def alloc_of(task_id: str) -> str:
    # Interned: the alloc name is kept as a key in several maps (records by alloc, allocs, timers), one copy each
    # otherwise (0.2 KB per task).
    return sys.intern(task_id.rsplit("/", 1)[0])


def _may_start(d: DesiredTask, siblings: list[DesiredTask], observed: dict[str, ObservedTask]) -> bool:
    """Nomad's lifecycle order inside one alloc."""

    def state(t: DesiredTask) -> ObservedTask | None:
        o = observed.get(t.task_id)
        return o if o is not None and o.spec_hash == t.spec_hash else None

    prestart = [t for t in siblings if t.hook == "prestart"]
    mains = [t for t in siblings if t.hook is None]
    if d.hook == "prestart":
        return True
    # Ephemeral prestart tasks must have finished successfully; prestart sidecars must be running.
    for t in prestart:
        o = state(t)
        if t.sidecar:
            if o is None or o.state != TaskState.RUNNING:
                return False
        elif o is None or o.state != TaskState.COMPLETE or not o.successful:
            return False
    if d.hook is None:
        return True
    if d.hook == "poststart":
        return all((o := state(t)) is not None and o.state in (TaskState.RUNNING, TaskState.COMPLETE) for t in mains)
    if d.hook == "poststop":
        return bool(mains) and all((o := state(t)) is not None and o.state in TERMINAL_STATES for t in mains)
    return True


def plan(desired: dict[str, DesiredTask], observed: dict[str, ObservedTask], now: float,
         alloc_gone_at: dict[str, float | None], gc_grace: float) -> list[Action]:
    actions: list[Action] = []
    by_alloc: dict[str, list[DesiredTask]] = defaultdict(list)
    for d in desired.values():
        by_alloc[alloc_of(d.task_id)].append(d)

    for tid in sorted(desired):
        d = desired[tid]
        o = observed.get(tid)
        if o is not None and o.busy:
            continue
        if o is None:
            if d.departing:
                # The alloc is going away: its poststop hook runs once nothing else of the alloc is running.
                alloc = alloc_of(tid)
                if all(x.state not in _LIVE
                       for x in observed.values() if x.alloc == alloc and x.task_id != tid):
                    actions.append(Start(tid, "poststop of a removed alloc"))
            elif _may_start(d, by_alloc[alloc_of(tid)], observed):
                actions.append(Start(tid, "new"))
            continue
        if o.spec_hash != d.spec_hash:
            if o.state in _LIVE:
                actions.append(Stop(tid, "spec changed", then_start=True))
            elif _may_start(d, by_alloc[alloc_of(tid)], observed):
                actions.append(Start(tid, "spec changed"))
            continue
        if o.state == TaskState.PENDING and _may_start(d, by_alloc[alloc_of(tid)], observed):
            actions.append(Start(tid, "pending"))
        elif o.state == TaskState.RESTARTING and o.next_start_at is not None and now >= o.next_start_at:
            actions.append(Start(tid, "restart policy"))
        elif (o.state == TaskState.RUNNING and o.template_hash is not None
              and o.template_hash != d.template_hash):
            actions.append(Rerender(tid))

    # Highest index first, as Nomad scales down: with count 3 -> 1, instance 2 goes before instance 1.
    forgotten: set[str] = set()
    for tid in sorted(observed, key=_scale_down_order):
        if tid in desired:
            continue
        o = observed[tid]
        if o.busy:
            continue
        if o.state in _LIVE:
            actions.append(Stop(tid, "no longer in any manifest"))
        else:
            actions.append(Forget(tid, "no longer in any manifest"))
            forgotten.add(tid)

    # An alloc whose last task is forgotten in this very plan is collected in it too (Forget comes first).
    remaining = {alloc_of(t) for t in observed if t not in forgotten}
    for alloc in sorted(set(alloc_gone_at) | remaining | {alloc_of(t) for t in forgotten} | set(by_alloc)):
        if alloc in by_alloc:
            continue
        gone = alloc_gone_at.get(alloc)
        if gone is None:
            actions.append(MarkAllocGone(alloc))
        elif now >= gone + gc_grace and alloc not in remaining:
            actions.append(CollectAlloc(alloc))
    return actions


def _scale_down_order(task_id: str) -> tuple:
    parts = task_id.split("/")
    if len(parts) == 4 and parts[2].isdigit():
        return (parts[0], parts[1], -int(parts[2]), parts[3])
    return (task_id, "", 0, "")


def next_wakeup(observed: dict[str, ObservedTask], alloc_gone_at: dict[str, float | None],
                gc_grace: float) -> float | None:
    """The earliest time at which `plan` could say something new without any event (restart delays, GC)."""
    times = [o.next_start_at for o in observed.values()
             if o.state == TaskState.RESTARTING and o.next_start_at is not None]
    times += [g + gc_grace for g in alloc_gone_at.values() if g is not None]
    return min(times) if times else None
