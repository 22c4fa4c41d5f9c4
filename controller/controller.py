"""The reconcile loop: one thread owns all state; everything else talks to it through a queue.

Inputs (watch events, launcher exit events, finished actions, API calls, timers) only wake the loop; each pass
rescans what it needs and runs the pure `plan(desired, observed, now)`. Actions that can take time (stops wait up to
kill_timeout, starts fork) run on a small worker pool, one action per task at a time (`busy`), so one slow or
failing task never blocks the others. Every transition is written to the store before it is acted on.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from controller.scan import Scanner
from controller import jsonbody
from controller.byalloc import ByAlloc
from controller.memtrim import TrimSchedule
from controller.store import Store, StoreError
from isolation import netns as netns_mod
from isolation import sys as ksys
from isolation import taskdir
from isolation.drivers.base import UNKNOWN_EXIT, ExitResult, StartError, TaskContext, TaskHandle, respawn_key
from isolation.drivers.common import new_key, task_cgroup
from isolation.runtime import Runtime
from manifests.agent_config import AgentConfig
from manifests.model import Job, Task
from reconcilers import restart as restart_policy
from reconcilers.desired import DesiredTask, desired_tasks, is_live_template, task_instances, template_hash
from reconcilers.plan import (CollectAlloc, Forget, MarkAllocGone, ObservedTask, Rerender, Start, Stop, alloc_of,
                              plan)
from reconcilers.states import TaskState

log = logging.getLogger("tasksd.controller")

WARM_LEAD = 0.015  # seconds before a timer (a delayed restart) that the cgroup lock warm-up begins
SPARE_QUIET = 0.1  # seconds without side effects before spare alloc dirs are made (see isolation.spares)
SPARE_RETRY = 30.0  # seconds before trying again after making one failed (a full or read-only disk), doubling
SPARE_RETRY_MAX = 600.0
# Starts submitted and not yet reported: past this, a pass leaves the rest of its starts for later passes. A converge
# of 1000 tasks otherwise submitted all 1000 at once, and what each start holds until the loop takes its result
# (its context, its pool work item, its exec environment) lived just long enough to leave CPython's memory pools
# fragmented for good: ~2-3 MB of the daemon's PSS at rest. 32 keeps the 8 workers and the launcher busy.
MAX_STARTS_IN_FLIGHT = 32
REMOVAL_GRACE = 0.25  # seconds a manifest must stay absent before its tasks stop (editor saves, see rescan)


@dataclass(slots=True)
class TaskRecord:
    task_id: str
    job: str
    grp: str
    idx: int
    task: str
    driver: str
    manifest: str | None
    state: TaskState = TaskState.PENDING
    spec_hash: str | None = None
    handle: TaskHandle | None = None
    pending_key: str | None = None
    restart_state: restart_policy.RestartTracker | None = None
    restarts: int = 0
    next_start_at: float | None = None
    exit: dict | None = None
    last_error: str | None = None
    started_at: float | None = None
    busy: bool = False  # not persisted: an action is in flight
    template_hash: str | None = None  # not persisted: derived from the Task (live templates of the process)
    # The Task this record runs, the desired state's own object (so it costs nothing here). Persisted as the row's
    # task_json when it changes (Controller._dirty_specs), not held as JSON: 0.6 KB per task. None for a record
    # recovered from the store and not started since: Controller.task_spec reads the stored one then.
    task_obj: Any = field(default=None, repr=False, compare=False)
    # Not persisted: the cleanup after the last exit found (or made) the cgroup empty, in this daemon's lifetime.
    # The next start skips its kill of leftovers (three reads of every hierarchy's member list per restart were
    # one fifth of the restart's time); a recovered record never has it, so a start after a crash still kills.
    cgroup_empty: bool = field(default=False, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "job": self.job, "grp": self.grp, "idx": self.idx, "task": self.task,
            "driver": self.driver, "manifest": self.manifest, "state": self.state.value,
            "spec_hash": self.spec_hash,
            "handle": json.dumps(self.handle.to_dict()) if self.handle else None,
            "pending_key": self.pending_key,
            "restart_state": (json.dumps(dataclasses.asdict(self.restart_state)) if self.restart_state is not None
                              else None),
            "restarts": self.restarts, "next_start_at": self.next_start_at,
            "exit": json.dumps(self.exit) if self.exit is not None else None,
            "last_error": self.last_error, "started_at": self.started_at,
        }

    @classmethod
    def from_row(cls, r: dict) -> "TaskRecord":
        # Interned as in a record made from desired state, which shares these strings with it.
        return cls(
            task_id=sys.intern(r["task_id"]), job=sys.intern(r["job"]), grp=sys.intern(r["grp"]), idx=r["idx"],
            task=sys.intern(r["task"]), driver=sys.intern(r["driver"]), manifest=sys.intern(r["manifest"]),
            state=TaskState(r["state"]), spec_hash=r["spec_hash"],
            handle=TaskHandle.from_dict(json.loads(r["handle"])) if r["handle"] else None,
            pending_key=r["pending_key"],
            restart_state=_tracker(json.loads(r["restart_state"])) if r["restart_state"] else None,
            restarts=r["restarts"], next_start_at=r["next_start_at"],
            exit=json.loads(r["exit"]) if r["exit"] else None, last_error=r["last_error"],
            started_at=r["started_at"])

    def status(self) -> dict[str, Any]:
        ex = self.exit or {}
        return {
            "id": self.task_id, "job": self.job, "group": self.grp, "task": self.task, "index": self.idx,
            "driver": self.driver, "state": self.state.value,
            "pid": self.handle.pid if self.handle and self.state in (TaskState.RUNNING, TaskState.STOPPING) else None,
            "restarts": self.restarts, "exit_code": ex.get("exit_code"), "signal": ex.get("signal"),
            "oom_killed": bool(ex.get("oom_killed")), "started_at": self.started_at, "manifest": self.manifest,
            "alloc_dir": self.handle.alloc_dir if self.handle else None,
            "task_dir": self.handle.task_dir if self.handle else None,
            "last_error": self.last_error, "next_start_at": self.next_start_at,
        }


def _tracker(d: dict) -> restart_policy.RestartTracker:
    """A stored restart tracker; fields it does not know (a newer version's) are left out."""
    known = restart_policy.RestartTracker.__dataclass_fields__
    return restart_policy.RestartTracker(**{k: v for k, v in d.items() if k in known})


@dataclass(slots=True)
class ManifestInfo:
    path: str
    content_hash: str
    status: str  # applied | rejected
    jobs: tuple[str, ...]
    errors: Sequence[dict]
    warnings: Sequence[dict]
    good_hash: str | None  # content hash of the last valid version; None if the file never was valid
    first_seen: float
    # What runs from this file right now: the last valid version's jobs. Kept once, as Jobs; the store's JSON
    # copy is made when the record is written (a decoded dict copy per manifest cost MBs at 1000 files).
    effective: tuple[Job, ...] = ()

    def good_jobs(self) -> list[dict] | None:
        return [j.to_dict() for j in self.effective] if self.good_hash is not None else None


class Controller:
    def __init__(self, config: AgentConfig, tasks_dir: str, store: Store, runtime: Runtime, drivers: dict,
                 clock: Callable[[], float] = time.time, workers: int = 8):
        self.config = config
        self.tasks_dir = tasks_dir
        self.store = store
        self.runtime = runtime
        self.drivers = drivers
        self.clock = clock
        self.queue: queue.Queue = queue.Queue()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="action")
        self.scanner = Scanner(tasks_dir, config.strict_manifest_permissions)
        self.records: ByAlloc[TaskRecord] = ByAlloc()
        self.manifests: dict[str, ManifestInfo] = {}
        self.desired: ByAlloc[DesiredTask] = ByAlloc()
        self.specs: dict[str, tuple[Job, Any, Task]] = {}
        self.allocs: dict[str, dict] = {}
        self.collecting: set[str] = set()
        self.cores_in_use: dict[str, list[int]] = {}
        self.dir_error: str | None = None
        self.stopping = False
        self.failure: str | None = None  # why the loop stopped on its own, when tasksd must exit non-zero
        self.draining = False
        self._desired_cache: dict = {}
        # Set whenever the set of manifests or one's content changes; rescans that find nothing new (the burst
        # of events around one rename, resyncs) then skip recompute_desired, which walks every task.
        self._desired_stale = True
        # For the incremental recompute: files applied or removed since the last one, and who owns each job name.
        self._stale_paths: set[str] = set()
        self._owner: dict[str, str] = {}
        self._had_duplicates = False
        self._warmed_for: float | None = None  # the timer whose start the runtime was told to expect
        self._spare_due: float | None = None  # when to make (or remove) the next spare alloc dir
        self._running = 0  # side effects submitted and not finished (each posts "effect_done" at its end)
        self._starting = 0  # of those, starts
        self._held: list[tuple[Callable[[], None], bool]] | None = None  # side effects of the pass being planned
        # Allocs whose Start waited for a free start slot (see MAX_STARTS_IN_FLIGHT), oldest first; re-planned as
        # slots free up, so a start runs on what is desired then, not on a stale plan.
        self._deferred: dict[str, None] = {}
        self._spare_error: str | None = None
        self._spare_retry = SPARE_RETRY
        self._early_exits: dict[str, tuple[TaskHandle, ExitResult]] = {}  # launcher key -> exit seen early
        # Task ids whose templates are being re-rendered (busy, yet still RUNNING), and an exit that arrived
        # meanwhile: it is handled when the re-render is done, not dropped as if a stop would collect it.
        self._rerendering: set[str] = set()
        self._exits_in_rerender: dict[str, tuple[TaskHandle, ExitResult]] = {}
        self._loaded_stored = False
        self._dirty_tasks: set[str] = set()
        self._dirty_specs: set[str] = set()  # records whose task_obj the store has not taken yet
        self._pending_exec_envs: dict[str, tuple[str, str]] = {}  # task id -> (handle key, exec_env JSON) to store
        # task id -> (stored key, new key): a respawned run has its predecessor's exec environment (same request).
        self._exec_env_moves: dict[str, tuple[str, str]] = {}
        # task id -> the state a stop ends in, when not STOPPED (a respawn the restart policy did not allow).
        self._state_after_stop: dict[str, TaskState] = {}
        # Side effects that may only follow what is now written: run by the next flush_store that commits.
        self._after_flush: list[Callable[[], None]] = []
        self._missing_since: dict[str, float] = {}
        self._rescan_at: float | None = None
        self.departing: dict[str, tuple[DesiredTask, tuple]] = {}
        self._last_specs: dict[str, tuple] = {}
        self._touched: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._full_pending = False
        self._dirty_manifests: set[str] = set()
        self._dirty_allocs: set[str] = set()
        self.ready = threading.Event()
        self.last_resync = 0.0
        self.store_error: str | None = None
        self.listeners: list[Callable[[dict], None]] = []
        self.metrics: dict[str, float] = {"watch_events": 0, "memory_trims": 0}  # see also metrics.instrument
        self._side_effects = 0  # in the current pass
        self._trim = TrimSchedule()
        self._rand = random.Random()
        runtime.on_exit = lambda h, r: self.queue.put(("exit", h, r))
        runtime.on_launcher_lost = lambda: self.queue.put(("launcher_lost",))

    # ---- public, thread-safe -----------------------------------------------------------------------------
    def wake(self, reason: str = "watch") -> None:
        self.queue.put(("rescan", reason))

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run fn on the loop thread (API handlers read and change state only this way)."""
        fut: Future = Future()
        self.queue.put(("call", fn, fut))
        return fut.result(timeout)

    def stop_loop(self) -> None:
        self.queue.put(("quit",))

    # ---- events ------------------------------------------------------------------------------------------
    def event(self, type_: str, message: str, task_id: str | None = None, manifest: str | None = None,
              **details) -> None:
        ts = self.clock()
        ev_id = self.store.add_event(type_, message, task_id, manifest, details or None, ts)
        ev = {"id": ev_id, "ts": ts, "type": type_, "task_id": task_id, "manifest": manifest,
              "message": message, "details": details or None}
        log.info("%s%s: %s", type_, f" {task_id}" if task_id else (f" {manifest}" if manifest else ""), message)
        for fn in list(self.listeners):
            try:
                fn(ev)
            except Exception:  # noqa: BLE001
                pass

    def persist(self, rec: TaskRecord) -> None:
        """Record a change of `rec`. It reaches the disk at the next flush_store, which runs before any side effect
        (see `_submit`) and at the end of every pass."""
        self.touch(rec.task_id)
        if rec.state == TaskState.RESTARTING and rec.next_start_at is not None:
            self._timer(rec.next_start_at, alloc_of(rec.task_id))
        self._dirty_tasks.add(rec.task_id)

    def _submit(self, work: Callable[[], None], start: bool = False) -> None:
        """Run a side effect (spawn, kill, cleanup) on the pool, after everything decided so far is on disk: a
        spawn's key is stored before the process exists, so a crash at any moment cannot duplicate it. Within a
        reconcile pass the side effects wait for the end of the pass, and one commit covers them all."""
        self._side_effects += 1
        self._running += 1
        self._starting += start
        if self._held is not None:
            self._held.append((work, start))
            return
        self.flush_store()
        self._dispatch(work, start)

    def _dispatch(self, work: Callable[[], None], start: bool) -> None:
        def run() -> None:
            try:
                work()
            finally:
                self.queue.put(("effect_done", start))

        try:
            self.pool.submit(run)
        except BaseException:
            self._running -= 1  # never runs, so no "effect_done" will count it
            self._starting -= start
            raise

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held:
            self.flush_store()
            for work, start in held:
                try:
                    self._dispatch(work, start)
                except Exception as e:  # noqa: BLE001 - e.g. the pool shut down: the others are tried alike
                    log.exception("side effect not run: %s", e)

    def flush_store(self) -> None:
        """Write every record, alloc and manifest the store has not taken yet, in one transaction. When the state
        dir is full or read-only, tasks keep running on the in-memory state and each later pass retries (nothing
        is marked written before its commit succeeded), so nothing is lost once the disk takes writes again (a
        restart after that re-adopts instead of starting duplicates)."""
        envs, tasks, specs = dict(self._pending_exec_envs), set(self._dirty_tasks), set(self._dirty_specs)
        manifests, allocs, moves = set(self._dirty_manifests), set(self._dirty_allocs), dict(self._exec_env_moves)
        try:
            # Before the task rows: a row naming a handle whose exec environment is not stored yet would make a
            # crash in between lose it; the other way round the next start simply overwrites it.
            for tid, (old, new) in sorted(moves.items()):
                self.store.move_exec_env(tid, old, new)
            for tid, (key, env) in sorted(envs.items()):
                self.store.put_exec_env(tid, key, env)
            for tid in sorted(tasks):
                rec = self.records.get(tid)
                if rec is None:
                    self.store.delete_task(tid)
                else:
                    self.store.put_task(rec.row())
            for tid in sorted(specs):
                rec = self.records.get(tid)
                if rec is not None and rec.task_obj is not None:
                    self.store.put_task_json(tid, json.dumps(rec.task_obj.to_dict()))
            for alloc in sorted(allocs):
                a = self.allocs.get(alloc)
                if a is None:
                    self.store.delete_alloc(alloc)
                else:
                    self.store.put_alloc(alloc, a["alloc_id"], a.get("gone_at"), a.get("netns"), a.get("slot"))
            for path in sorted(manifests):
                m = self.manifests.get(path)
                if m is None:
                    self.store.delete_manifest(path)
                else:
                    self.store.put_manifest(m.path, m.content_hash, m.status, m.jobs, m.errors, m.warnings,
                                            m.good_jobs(), m.good_hash, m.first_seen)
            self.store.commit()
        except StoreError as e:
            if self.store_error != str(e):
                log.error("%s; running tasks are unaffected, state is kept in memory and retried", e)
            self.store_error = str(e)
            return
        for tid, entry in envs.items():
            if self._pending_exec_envs.get(tid) is entry:
                del self._pending_exec_envs[tid]
        for tid, move in moves.items():
            if self._exec_env_moves.get(tid) is move:
                del self._exec_env_moves[tid]
        self._dirty_tasks -= tasks
        self._dirty_specs -= specs
        self._dirty_allocs -= allocs
        self._dirty_manifests -= manifests
        after, self._after_flush = self._after_flush, []
        for fn in after:
            fn()
        if self.store_error:
            self.store_error = None
            log.warning("state store writable again")
            self.event("store_recovered", "the state store accepts writes again")
            self.flush_store()  # commits the event

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        self.recover()
        self.rescan()
        self.reconcile(full=True)
        self.flush_store()
        self.ready.set()
        while not self.stopping:
            resync_at = self.last_resync + self.config.resync_interval
            deadline = min(self._timers[0][0], resync_at) if self._timers else resync_at
            if self._timers and self._warmed_for != self._timers[0][0]:
                # A timer is mostly a restart after its delay: prepare the kernel for its cgroup migration a
                # little ahead (see isolation.cgroups.warm), so the delay is all the task waits.
                lead = self._timers[0][0] - WARM_LEAD
                if self.clock() >= lead:
                    self._warmed_for = self._timers[0][0]
                    self.runtime.expect_start()
                else:
                    deadline = min(deadline, lead)
            if self._rescan_at is not None:
                deadline = min(deadline, self._rescan_at)
            if self._trim.due_at is not None:
                deadline = min(deadline, self._trim.due_at)
            if self._spare_due is not None:
                deadline = min(deadline, self._spare_due)
            timeout = max(0.0, deadline - self.clock())
            try:
                ev = self.queue.get(timeout=timeout)
            except queue.Empty:
                ev = ("tick",)
            rescan = self.handle(ev)
            # Drain whatever else is queued so a burst of events costs one reconcile, not one each.
            while True:
                try:
                    ev = self.queue.get_nowait()
                except queue.Empty:
                    break
                rescan = self.handle(ev) or rescan
            # Not kept while the loop waits: a handled call's Future holds its result (the status of 1000 tasks
            # is ~0.5 MB) until the next event would replace it.
            ev = None
            if self.stopping:
                break
            full = self.clock() >= resync_at
            if self._rescan_at is not None and self.clock() >= self._rescan_at:
                self._rescan_at, rescan = None, True
            if rescan or full:
                self.rescan(reread=full)
            if full:
                for key in self.runtime.sweep_unclaimed_exits():
                    log.info("dropped the exit record of %s: no task claimed it", key)
            self._fire_timers()
            self.reconcile(full=full)
            if self.draining and not self.records and not self.allocs and not self.collecting:
                self.event("drained", "every task stopped and every alloc collected; exiting")
                self.stopping = True
            self.flush_store()  # one commit for the whole pass (events included)
            self._trim.note_work(self._side_effects, self.clock())
            self._tend_spares()
            self._side_effects = 0
            if self._trim.take(self.clock()):
                self.metrics["memory_trims"] += 1
                ksys.malloc_trim()
        self.flush_store()

    def _tend_spares(self) -> None:
        """Make or remove one spare alloc dir (isolation.spares) once no side effect has been submitted or run for
        SPARE_QUIET, one per pass: an event that arrives meanwhile waits for one spare's mkdirs at most. Nothing
        is scheduled while the pool is at its target, so an idle daemon never wakes for it."""
        spares = self.runtime.spares
        if spares is None:
            return
        now = self.clock()
        if self._side_effects or self._running:
            # Not while side effects run on the workers (a converge of 1000 starts): each spare made now would be
            # taken by one of them at once, and the loop would only make their directories for them, slower. The
            # last one's "effect_done" brings the loop back here; no wake-up is scheduled meanwhile.
            self._spare_due = None
            return
        if not spares.wanted():
            self._spare_due = None
            return
        if self._spare_due is None:
            self._spare_due = now + SPARE_QUIET
        if now < self._spare_due or not self.queue.empty():
            return
        try:
            more = spares.step()
        except (OSError, RuntimeError) as e:
            why = f"{getattr(e, 'strerror', None) or e} ({spares.root})"
            if why != self._spare_error:
                log.warning("cannot make a spare alloc dir: %s; retrying in %.0f s", why, self._spare_retry)
            self._spare_error = why
            self._spare_due = now + self._spare_retry
            # A state dir that stays full or read-only wakes an idle daemon ever more rarely, at most every 10 min.
            self._spare_retry = min(self._spare_retry * 2, SPARE_RETRY_MAX)
            return
        self._spare_error = None
        self._spare_retry = SPARE_RETRY
        self._spare_due = now if more else None

    # ---- what needs planning -----------------------------------------------------------------------------
    def touch(self, task_or_alloc: str) -> None:
        """Mark an alloc ("job/group/index", or any task id in it) for the next reconcile. Plans are per alloc
        (lifecycle order and GC are decided inside one), so planning only touched allocs gives the same
        actions as planning everything, at a cost that does not grow with the number of tasks. The periodic
        resync still plans everything, in case anything was missed."""
        self._touched.add(task_or_alloc if task_or_alloc.count("/") == 2 else alloc_of(task_or_alloc))

    def _timer(self, when: float, alloc: str) -> None:
        heapq.heappush(self._timers, (when, alloc))

    def _fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, alloc = heapq.heappop(self._timers)
            self._touched.add(alloc)

    def handle(self, ev: tuple) -> bool:
        kind = ev[0]
        if kind == "rescan":
            self.metrics["watch_events"] += ev[1] == "watch"
            return True
        if kind == "exit":
            self.on_exit(ev[1], ev[2])
        elif kind == "done":
            ev[1]()
        elif kind == "effect_done":
            self._running -= 1
            self._starting -= ev[1]
        elif kind == "call":
            fn, fut = ev[1], ev[2]
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
        elif kind == "quit":
            self.stopping = True
        elif kind == "launcher_lost":
            # Without it nothing can be spawned or signalled and no exit is heard. Exit non-zero so the service
            # manager restarts us: the next start runs a new launcher and re-adopts the running tasks (their
            # exits are then watched through pidfds).
            log.error("the launcher exited; tasksd exits so that it is restarted with a new one "
                      "(running tasks are re-adopted)")
            self.event("launcher_lost", "the launcher exited; tasksd exits to be restarted with a new one")
            self.failure = "the launcher exited"
            self.stopping = True
        return False

    # ---- desired state -----------------------------------------------------------------------------------
    def rescan(self, reread: bool = False) -> None:
        self.last_resync = self.clock()
        if not self._loaded_stored:
            self._load_stored_manifests()
        result = self.scanner.scan(known=lambda path, digest: (
            (m := self.manifests.get(path)) is not None and m.content_hash == digest), reread=reread)
        if result.dir_error != self.dir_error:
            if result.dir_error:
                self.event("tasks_dir_error", result.dir_error)
            self.dir_error = result.dir_error
        if result.dir_error:
            return  # keep running what runs; an unreadable directory is not a request to stop everything
        seen = result.files
        # Only what the scanner saw change, plus files we hold nothing for; the periodic resync looks at all.
        todo = seen.keys() if reread else result.changed | (seen.keys() - self.manifests.keys())
        for path in sorted(todo):
            fs = seen[path]
            info = self.manifests.get(path)
            if fs.known:
                continue  # same content as the version we hold
            digest = fs.content_hash if fs.result is not None else f"refused:{fs.refused}"
            if info is not None and info.content_hash == digest:
                continue
            self.apply_file(path, fs, info, digest)
            self._desired_stale = True
            self._stale_paths.add(path)
        now = self.clock()
        for path in [p for p in self._missing_since if p in seen]:
            del self._missing_since[path]
        for path in sorted(self.manifests.keys() - seen.keys()):
            # Editors save by renaming the old file away and writing a new one: for a moment the manifest is
            # absent. Act on a removal only once it has lasted REMOVAL_GRACE, so a save never stops the tasks.
            since = self._missing_since.setdefault(path, now)
            if now - since < REMOVAL_GRACE:
                self._rescan_timer(since + REMOVAL_GRACE)
                continue
            del self._missing_since[path]
            info = self.manifests.pop(path)
            self._dirty_manifests.add(path)
            self._desired_stale = True
            self._stale_paths.add(path)
            self.event("manifest_removed", f"removed; its jobs ({', '.join(info.jobs)}) will stop", manifest=path)
        if self._desired_stale:
            self.recompute_desired()

    def _rescan_timer(self, when: float) -> None:
        """Rescan at `when` even if no event comes (the removal grace)."""
        if self._rescan_at is None or when < self._rescan_at:
            self._rescan_at = when

    def _load_stored_manifests(self) -> None:
        """What the last run applied, so unchanged files need no parsing and invalid edits made while tasksd was
        down still keep the last good version."""
        self._loaded_stored = True
        for r in self.store.iter_manifests():
            path = r["path"]
            info = ManifestInfo(path, r["content_hash"], r["status"], tuple(json.loads(r["jobs"])),
                                json.loads(r["errors"]) or (), json.loads(r["warnings"]) or (),  # most: none
                                r["good_hash"] if r["good_jobs"] else None, r["first_seen"])
            try:
                good = json.loads(r["good_jobs"]) if r["good_jobs"] else []
                info.effective = tuple(Job.from_dict(j) for j in good)
            except Exception as e:  # noqa: BLE001 - a cache from an older tasksd: parse the file again
                log.warning("cached jobs of %s unreadable (%s); re-parsing", path, e)
                info.content_hash = ""
            self.manifests[path] = info

    def apply_file(self, path: str, fs, info: ManifestInfo | None, digest: str) -> None:
        now = self.clock()
        first_seen = info.first_seen if info else now
        good_hash = info.good_hash if info else None
        if fs.result is None:
            errors = [{"message": fs.refused, "line": None, "column": None, "where": ""}]
            warnings: Sequence[dict] = ()
            names: tuple[str, ...] = tuple(info.jobs) if info else ()
            valid_jobs = None
        else:
            errors = [p.to_dict() for p in fs.result.errors]
            warnings = [p.to_dict() for p in fs.result.warnings] or ()  # held per file: most have none
            # The load result's own tuples, not copies: held for as long as the file stays.
            names = fs.result.names
            valid_jobs = fs.result.jobs if fs.result.valid else None
        if valid_jobs is not None:
            new = ManifestInfo(path, digest, "applied", names, (), warnings, digest, first_seen, valid_jobs)
            self.event("manifest_applied", f"applied (jobs: {', '.join(names)})", manifest=path,
                       warnings=[w["message"] for w in warnings] or None)
        else:
            keep = info.effective if info and good_hash is not None else ()
            new = ManifestInfo(path, digest, "rejected", names, errors, warnings, good_hash, first_seen, keep)
            first = errors[0]["message"] if errors else "invalid"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            kept = "; the last valid version keeps running" if keep else ""
            self.event("manifest_rejected", f"{first}{more}{kept}", manifest=path, errors=errors)
        self.manifests[path] = new
        self._store_manifest(new)

    def _add_departing(self, old_desired: dict[str, DesiredTask]) -> None:
        """Nomad runs an alloc's poststop hooks when the alloc stops, job removal included. When an alloc leaves
        desired state, keep its poststop tasks (with the spec they had) desired, marked departing, until they
        have run once. Not on drain (which stops everything) and not kept across a daemon restart."""
        if self.draining:
            self.departing.clear()
        live_allocs = {alloc_of(t) for t in self.desired}
        for tid, d in old_desired.items():
            if (d.hook == "poststop" and not d.departing and tid not in self.departing and not self.draining
                    and alloc_of(tid) not in live_allocs and tid in self._last_specs):
                rec = self.records.get(tid)
                if rec is not None and rec.state in (TaskState.COMPLETE, TaskState.FAILED):
                    continue  # it already ran for this alloc
                self.departing[tid] = (dataclasses.replace(d, departing=True), self._last_specs[tid])
                self.event("poststop_pending", "the alloc was removed: its poststop hook runs once the other "
                           "tasks stopped", tid)
        for tid, (d, spec) in self.departing.items():
            if alloc_of(tid) in live_allocs:
                continue  # the job came back: its own desired state rules again
            self.desired[tid] = d
            self.specs[tid] = spec
        self._last_specs = dict(self.specs)

    def _store_manifest(self, m: ManifestInfo) -> None:
        self._dirty_manifests.add(m.path)

    def recompute_desired(self) -> None:
        """Effective jobs per file, with duplicate job names resolved: the file seen first keeps the job."""
        if self._recompute_changed():
            return
        owner: dict[str, str] = {}
        jobs_by_manifest: dict[str, list[Job]] = {}
        duplicates = False
        for m in sorted(self.manifests.values(), key=lambda m: (m.first_seen, m.path)):
            clash = [j.name for j in m.effective if j.name in owner]
            if clash:
                duplicates = True
                msg = (f"job {clash[0]!r} is already defined in {owner[clash[0]]}; this file is rejected "
                       f"until one of them is renamed or removed")
                if m.status != "duplicate" or m.errors[:1] != [{"message": msg, "line": None, "column": None,
                                                                 "where": ""}]:
                    m.status = "duplicate"
                    m.errors = [{"message": msg, "line": None, "column": None, "where": ""}]
                    self.event("manifest_rejected", msg, manifest=m.path)
                    self._store_manifest(m)
                continue
            if m.status == "duplicate":
                # The file that held its job name first is gone or renamed it: this one runs now (its last valid
                # version, when the current content is not).
                if m.content_hash == m.good_hash:
                    m.status, m.errors = "applied", []
                    self.event("manifest_applied", f"applied (jobs: {', '.join(m.jobs)}): the job it duplicated "
                               "is gone", manifest=m.path)
                else:
                    m.status = "rejected"
                    m.errors = [{"message": "invalid; the job it duplicated is gone, so its last valid version "
                                 "runs", "line": None, "column": None, "where": ""}]
                    self.event("manifest_rejected", m.errors[0]["message"], manifest=m.path)
                self._store_manifest(m)
            for j in m.effective:
                owner[j.name] = m.path
            jobs_by_manifest[m.path] = m.effective
        self._owner, self._had_duplicates, self._stale_paths = owner, duplicates, set()
        if self.draining:
            jobs_by_manifest = {}
        # Expanding a file's jobs hashes every task spec: cache it per file and version, so one changed file
        # among a thousand costs one expansion, not a thousand.
        entries: dict[str, tuple] = {}
        for path, jobs in jobs_by_manifest.items():
            entries[path] = self._desired_entry(path, jobs)
        if not (self.draining or self.departing) and self._patch_desired(entries):
            return
        old_desired = self.desired
        self.desired, self.specs = ByAlloc(), {}
        for _, rows in entries.values():
            for tid, d, spec in rows:
                self.desired[tid], self.specs[tid] = d, spec
        self._desired_cache = entries
        self._desired_stale = False
        self._add_departing(old_desired)
        for tid in old_desired.keys() ^ self.desired.keys():
            self.touch(tid)
        for tid, d in self.desired.items():
            if old_desired.get(tid, d) != d:
                self.touch(tid)

    def _desired_entry(self, path: str, jobs: Sequence[Job]) -> tuple:
        """(key, rows) of one file, rows being (task id, DesiredTask, (job, group, task)) per task instance: the
        cached entry while the file's version is unchanged. Tuples, not two dicts per file: most files hold one
        task, and two one-entry dicts cost 0.2 KB more per task."""
        key = (self.manifests[path].good_hash, id(jobs))
        cached = self._desired_cache.get(path)
        if cached is not None and cached[0] == key:
            return cached
        desired = desired_tasks({path: jobs})
        rows = tuple((tid, desired[tid], (job, group, t)) for tid, job, group, _, t in task_instances(jobs))
        return (key, rows)

    def _recompute_changed(self) -> bool:
        """recompute_desired for the usual case, one file among a thousand changed: only the changed files are
        looked at (the full pass sorts and walks every manifest). Declines (False: do the full pass) whenever
        job ownership is in question: a duplicate exists, or a changed file claims a job name another file
        holds or claimed too (which file keeps it depends on first_seen order, the full pass's business)."""
        paths = self._stale_paths
        if not paths or not self._desired_cache or self._had_duplicates or self.draining or self.departing:
            return False
        owner = self._owner
        claimed: dict[str, str] = {}
        for p in paths:
            m = self.manifests.get(p)
            for j in (m.effective if m is not None else ()):
                if owner.get(j.name, p) != p or claimed.setdefault(j.name, p) != p:
                    return False
        entries = dict(self._desired_cache)
        for p in paths:
            m = self.manifests.get(p)
            if m is None:
                entries.pop(p, None)
            else:
                entries[p] = self._desired_entry(p, m.effective)
        if not self._patch_desired(entries):
            return False
        for name in [n for n, o in owner.items() if o in paths and claimed.get(n) != o]:
            del owner[name]
        owner.update(claimed)
        self._stale_paths = set()
        return True

    def _patch_desired(self, entries: dict[str, tuple]) -> bool:
        """Apply only the files that changed, came or went to desired state; the same result as rebuilding it,
        without walking the other 999 tasks. Declines (False: rebuild) when a leaving task is a poststop hook,
        whose departure the rebuild handles (see _add_departing)."""
        old = self._desired_cache
        changed = [p for p, entry in entries.items() if old.get(p) is not entry]
        gone = [p for p in old if p not in entries]
        leaving = [(tid, d) for p in changed + gone if p in old for tid, d, _ in old[p][1]]
        if any(d.hook == "poststop" for _, d in leaving):
            return False
        before = {tid: self.desired.get(tid) for tid, _ in leaving}
        for tid, _ in leaving:
            self.desired.pop(tid, None)
            self.specs.pop(tid, None)
        for p in changed:
            for tid, d, spec in entries[p][1]:
                self.desired[tid], self.specs[tid] = d, spec
                before.setdefault(tid, None)
        self._desired_cache = entries
        self._desired_stale = False
        self._last_specs = self.specs  # the rebuild replaces self.specs, so this keeps what it needs
        for tid, was in before.items():
            if self.desired.get(tid) != was:
                self.touch(tid)
        return True

    # ---- observed state and the plan ---------------------------------------------------------------------
    def observed(self, allocs: set[str] | None = None) -> dict[str, ObservedTask]:
        records = self.records if allocs is None else self.records.in_allocs(allocs)
        return {
            tid: ObservedTask(tid, alloc_of(tid), r.state, r.spec_hash, r.next_start_at, r.busy,
                              successful=bool(r.exit and r.exit.get("exit_code") == 0 and not r.exit.get("error")),
                              template_hash=r.template_hash)
            for tid, r in records.items()
        }

    def gone_times(self, allocs: set[str] | None = None) -> dict[str, float | None]:
        """When each alloc (or each of `allocs`) was marked gone; allocs being collected are left out."""
        keys = self.allocs if allocs is None else [a for a in allocs if a in self.allocs]
        return {a: self.allocs[a].get("gone_at") for a in keys if a not in self.collecting}

    def reconcile(self, full: bool = False) -> None:
        grace = self._gc_grace()
        if full or self._full_pending:
            self._full_pending, self._touched = False, set()  # a full pass covers whatever was touched
            desired, observed, gone = self.desired, self.observed(), self.gone_times()
        else:
            touched, self._touched = self._touched, set()
            for alloc in list(itertools.islice(self._deferred, max(0, MAX_STARTS_IN_FLIGHT - self._starting))):
                del self._deferred[alloc]  # oldest first; planned again now that a slot is free
                touched.add(alloc)
            if not touched:
                return
            desired = self.desired.in_allocs(touched)
            observed = self.observed(touched)
            gone = self.gone_times(touched)
        actions = plan(desired, observed, self.clock(), gone, grace)
        self._held = []
        try:
            self._execute(actions)
        finally:
            self._release_held()

    def _execute(self, actions: list) -> None:
        for a in actions:
            try:
                if isinstance(a, Start):
                    alloc = alloc_of(a.task_id)
                    if alloc in self.collecting:
                        # Its job came back while the old alloc is being removed (cgroups, dirs, netns): start
                        # once that is done (_collected touches the alloc), not into what is being deleted.
                        continue
                    if self._starting >= MAX_STARTS_IN_FLIGHT:
                        self._deferred[alloc] = None
                        if a.task_id not in self.records:  # listed as pending meanwhile, as kubelet lists a pod
                            self.persist(self._new_record(a.task_id))
                        continue
                    self._deferred.pop(alloc, None)
                    self.start(a.task_id, a.reason)
                elif isinstance(a, Stop):
                    self.stop(a.task_id, a.reason, then_start=a.then_start)
                elif isinstance(a, Rerender):
                    self.rerender(a.task_id)
                elif isinstance(a, Forget):
                    self.forget(a.task_id, a.reason)
                elif isinstance(a, MarkAllocGone):
                    self.mark_alloc_gone(a.alloc)
                elif isinstance(a, CollectAlloc):
                    self.collect_alloc(a.alloc)
            except Exception as e:  # noqa: BLE001 - one action's bug must not stop the others
                log.exception("action %s failed: %s", a, e)

    # ---- actions -----------------------------------------------------------------------------------------
    def _alloc_id(self, alloc: str) -> str:
        job, group, index = alloc.split("/")
        return taskdir.alloc_id_for(job, group, int(index))

    def _ensure_alloc(self, alloc: str, group) -> dict:
        rec = self.allocs.get(alloc)
        if rec is None or rec.get("gone_at") is not None:
            rec = {"alloc": alloc, "alloc_id": self._alloc_id(alloc), "gone_at": None,
                   "netns": rec.get("netns") if rec else None, "slot": rec.get("slot") if rec else None}
        mode = getattr(group.network, "mode", "host")
        if mode == "bridge" and not rec.get("netns"):
            used = {a.get("slot") for a in self.allocs.values() if a.get("slot") is not None}
            slot = next(i for i in range(1 << 20) if i not in used)
            rec["netns"] = netns_mod.create_group_netns(rec["alloc_id"], self.config.bridge_name,
                                                        self.config.bridge_subnet, slot)
            rec["slot"] = slot
        self.allocs[alloc] = rec
        self._dirty_allocs.add(alloc)
        return rec

    def _reserve_cores(self, tid: str, n: int) -> str:
        used = {c for t, cs in self.cores_in_use.items() if t != tid for c in cs}
        free = [c for c in sorted(os.sched_getaffinity(0)) if c not in used]
        if len(free) < n:
            raise StartError(f"resources.cores = {n} but only {len(free)} cores are free on this node")
        self.cores_in_use[tid] = free[:n]
        return ",".join(map(str, free[:n]))

    def _new_record(self, tid: str) -> TaskRecord:
        d = self.desired[tid]
        rec = self.records[tid] = TaskRecord(tid, d.job, d.group, d.index, d.task, d.driver, d.manifest)
        return rec

    def start(self, tid: str, reason: str) -> None:
        d = self.desired[tid]
        job, group, task = self.specs[tid]
        rec = self.records.get(tid) or self._new_record(tid)
        if rec.spec_hash != d.spec_hash or rec.restart_state is None:
            # A new spec gets a fresh restart budget; the interval starts at the first start, as in Nomad.
            rec.restart_state = restart_policy.RestartTracker.begin(self.clock())
            if rec.spec_hash is not None and rec.spec_hash != d.spec_hash:
                rec.restarts = 0
        rec.manifest, rec.driver = d.manifest, d.driver
        if rec.task_obj is not task:
            rec.task_obj = task
            self._dirty_specs.add(tid)
        rec.spec_hash = d.spec_hash
        rec.template_hash = d.template_hash
        try:
            alloc = self._ensure_alloc(alloc_of(tid), group)
            cpuset = self._reserve_cores(tid, task.resources.cores) if task.resources.cores else None
        except (StartError, OSError, ValueError) as e:
            self._start_failed(rec, str(e))
            return
        key = new_key(alloc["alloc_id"], task.name)
        rec.state, rec.busy, rec.pending_key, rec.next_start_at = TaskState.STARTING, True, key, None
        self.persist(rec)  # the key is on disk before the process exists: a crash now cannot duplicate it
        ctx = TaskContext(job=job, group=group, task=task, index=d.index, alloc_id=alloc["alloc_id"],
                          config=self.config, cpuset=cpuset, netns=alloc.get("netns"), key=key,
                          cgroup_empty=rec.cgroup_empty, arm=self._may_arm(rec))
        rec.cgroup_empty = False  # once: a start that fails after its fork may leave something there
        driver = self.drivers[d.driver]

        def work():
            try:
                handle = driver.start(ctx)
                # Encoded here, on the worker: the store takes JSON anyway, and one string is one malloc block,
                # given back whole once stored. As a dict (~30 small objects) it waited in the queue and then for
                # the next commit: garbage that lived just long enough to leave CPython's pools fragmented.
                env = json.dumps(handle.exec_env) if handle.exec_env else None
                handle = handle.without_exec_env()
                self.queue.put(("done", lambda: self._started(tid, key, handle, env)))
            except Exception as e:  # noqa: BLE001 - reported as the task's error
                msg = str(e) if isinstance(e, (StartError, OSError)) else f"{type(e).__name__}: {e}"
                recoverable = getattr(e, "recoverable", True)  # e.g. an artifact checksum mismatch is not
                self.queue.put(("done", lambda: self._start_error(tid, key, msg, recoverable)))

        self._submit(work, start=True)

    def _started(self, tid: str, key: str, handle: TaskHandle, exec_env_json: str | None = None) -> None:
        rec = self.records.get(tid)
        early = self._early_exits.pop(key, None)
        if rec is None or rec.pending_key != key:
            if early is not None:
                self.runtime.ack(early[0])  # nobody will handle that exit: let the launcher forget it
            return
        if exec_env_json:
            self._pending_exec_envs[tid] = (handle.key, exec_env_json)
        rec.handle = self.runtime.registered(handle.key) or handle
        rec.pending_key, rec.busy = None, False
        rec.state, rec.started_at, rec.last_error = TaskState.RUNNING, handle.started_at, None
        self.persist(rec)
        self.event("started", f"started (pid {handle.pid})", tid, pid=handle.pid, started_at=handle.started_at)
        result = early[1] if early is not None else self.runtime.result(handle.key)
        if result is not None:  # it already exited while the start reply travelled
            self.on_exit(handle, result)

    def _start_error(self, tid: str, key: str, msg: str, recoverable: bool = True) -> None:
        early = self._early_exits.pop(key, None)
        if early is not None:
            # It ran and exited, yet the start failed afterwards (e.g. recording its handle): the exit is moot.
            self._kill_orphan_successor(early[1], None)
            self.runtime.ack(early[0])
        after = self._early_exits.pop(respawn_key(key), None)
        if after is not None:  # and so did the run the launcher respawned in its place
            self.runtime.ack(after[0])
        rec = self.records.get(tid)
        if rec is None or rec.pending_key != key:
            return
        rec.pending_key, rec.busy = None, False
        self._start_failed(rec, msg, recoverable)

    def _start_failed(self, rec: TaskRecord, msg: str, recoverable: bool = True) -> None:
        rec.last_error = msg
        self.cores_in_use.pop(rec.task_id, None)  # reserved for a process that never ran
        self.event("start_failed", msg, rec.task_id)
        self._apply_decision(rec, None, start_failure=True, recoverable=recoverable)

    def on_exit(self, handle: TaskHandle, result: ExitResult) -> None:
        # A launcher key belongs to one spawn of one task: look the task up, then check it is this spawn.
        rec = self.records.get(handle.task_id)
        if rec is None or rec.handle is None or rec.handle.key != handle.key:
            if rec is not None and rec.pending_key is not None and handle.key in (
                    rec.pending_key, respawn_key(rec.pending_key)):
                # It exited before its start reply was processed (a short task), or so did the run the launcher
                # respawned in its place: keep it for _started (or for _start_error, which acks it).
                self._early_exits[handle.key] = (handle, result)
                return
            if (rec is not None and rec.handle is not None and handle.key == respawn_key(rec.handle.key)
                    and (rec.state == TaskState.STOPPING or rec.busy)):
                # The run a stop in flight found respawned (its disarm came too late) and stops itself: the stop
                # collects this exit, and acks it.
                return
            self._kill_orphan_successor(result, rec)
            # Not acked before the pass's commit: an exit delivered twice (recovery) may be one this pass took in.
            self._ack_after_commit(handle)
            return
        if rec.state == TaskState.STOPPING or rec.busy:
            if rec.task_id in self._rerendering:
                self._exits_in_rerender[rec.task_id] = (handle, result)
            return  # otherwise the stop, or the exit cleanup, in flight collects it
        # The handle's key goes with the exit: after a crash before the restart decision is stored (the launcher
        # forgets an exit once acked), recovery can tell this run's recorded exit from an unknown one.
        rec.exit = {**result.to_dict(), "key": handle.key}
        what = (f"exited with code {result.exit_code}" if result.signal is None
                else f"killed by signal {result.signal}")
        if result.oom_killed:
            what += " (OOM killed)"
        if result.error:
            what = result.error
        self.event("exited", what, rec.task_id, exit_code=result.exit_code, signal=result.signal,
                   oom_killed=result.oom_killed)
        if result.respawned is not None:
            self._respawned(rec, handle, result)
            return
        if result.respawn_error:
            log.info("%s: the launcher did not restart it: %s", rec.task_id, result.respawn_error)
        rec.busy = True
        self.persist(rec)
        driver = self.drivers[rec.driver]

        def cleanup(known_empty: bool = False) -> bool:
            try:
                # Leftovers die; a dynamic uid stays for the restart.
                driver.destroy(handle, keep_identity=True, known_empty=known_empty)
                return True
            except Exception as e:  # noqa: BLE001
                log.warning("cleanup of %s: %s", rec.task_id, e)
                return False

        if driver.left_nothing(handle):
            # The usual exit: nothing to kill, so the cleanup is an ack and cannot block the loop. Done here it
            # saves two thread hand-offs (~1 ms) on the way to the restart. The ack (the launcher forgets the
            # exit) waits for the commit that makes the exit durable: the restart's own, one commit instead of two.
            # While the store fails, acks go out at once, as before: they must not pile up behind a disk that
            # stays full (the launcher's exit records would pile up with them).
            if self.store_error:
                cleanup(known_empty=True)
            else:
                self._after_flush.append(lambda: cleanup(known_empty=True))
            self._exited(rec.task_id, handle, result, cgroup_empty=True)
            return

        def work():
            empty = cleanup()  # a kill that returns has waited for the cgroup to be empty
            self.queue.put(("done", lambda: self._exited(rec.task_id, handle, result, cgroup_empty=empty)))

        self._submit(work)

    def _exited(self, tid: str, handle: TaskHandle, result: ExitResult, cgroup_empty: bool = False) -> None:
        rec = self.records.get(tid)
        if rec is None or rec.handle is None or rec.handle.key != handle.key:
            return
        rec.busy = False
        rec.cgroup_empty = cgroup_empty
        rec.handle = None
        self.cores_in_use.pop(tid, None)
        self._apply_decision(rec, result)

    def _decide(self, rec: TaskRecord, result: ExitResult | None, start_failure: bool = False,
                recoverable: bool = True) -> restart_policy.Decision | None:
        """The restart policy's decision on this exit (or failed start), its tracker kept in `rec`; None when the
        task is no longer desired."""
        spec = self.specs.get(rec.task_id)
        if spec is None:
            return None
        job, _, task = spec
        now = self.clock()
        d = self.desired[rec.task_id]
        tracker = rec.restart_state or restart_policy.RestartTracker.begin(now)
        if start_failure or result is None:
            tracker, decision = restart_policy.on_start_failure(
                tracker, task.restart, now=now, rand=self._rand.random(), recoverable=recoverable)
        else:
            tracker, decision = restart_policy.on_exit(
                tracker, task.restart, job.type, exit_code=result.exit_code if result.exit_code is not None else -1,
                signal=result.signal or 0, oom_killed=result.oom_killed, now=now, rand=self._rand.random(),
                hook=d.hook, sidecar=d.sidecar)
        rec.restart_state = tracker
        return decision

    # ---- respawns by the launcher (see isolation/launcher.c) ------------------------------------------------
    def _may_arm(self, rec: TaskRecord) -> bool:
        """Whether the launcher may restart this task's run itself when it exits: only where that restart is
        exactly what the daemon would do. The restart policy must restart it at once whatever the exit; and the
        start must be the same spawn request again: no artifacts or templates (rendered at each start), no
        reserved cores (given back at each exit), no lifecycle hook (the reconciler orders those)."""
        spec = self.specs.get(rec.task_id)
        d = self.desired.get(rec.task_id)
        if spec is None or d is None or self.draining or d.hook is not None or d.departing:
            return False
        job, _, task = spec
        if task.artifacts or task.templates or task.resources.cores:
            return False
        tracker = rec.restart_state or restart_policy.RestartTracker.begin(self.clock())
        return restart_policy.restarts_at_once(tracker, task.restart, job.type, d.hook, d.sidecar)

    def _respawned(self, rec: TaskRecord, handle: TaskHandle, result: ExitResult) -> None:
        """Run `handle` exited and the launcher started its successor at once (it was armed). Count the restart
        as the policy does, adopt the new run, and let the launcher do it again when the policy still allows."""
        nxt = result.respawned
        assert nxt is not None
        tid = rec.task_id
        decision = self._decide(rec, result)
        rec.handle = self.runtime.registered(nxt.key) or nxt
        rec.state, rec.started_at, rec.last_error, rec.cgroup_empty = TaskState.RUNNING, nxt.started_at, None, False
        restart = decision is not None and decision.kind == restart_policy.DecisionKind.RESTART
        if restart:
            rec.restarts += 1
            self.event("restarting", "restarted at once by the launcher (restart within policy)", tid, delay=0.0)
        self.persist(rec)
        self.event("started", f"started (pid {nxt.pid})", tid, pid=nxt.pid, started_at=nxt.started_at)
        parked = self._early_exits.pop(nxt.key, None)  # it exited too before its predecessor's start was taken in
        pending = self._pending_exec_envs.get(tid)
        if pending is not None and pending[0] == handle.key:
            self._pending_exec_envs[tid] = (nxt.key, pending[1])
        else:
            old = self._exec_env_moves.get(tid, (handle.key, handle.key))[0]
            self._exec_env_moves[tid] = (old, nxt.key)
        if decision is not None and not restart:
            # Cannot happen while restarts_at_once holds (it was true when this run was armed, and neither time
            # nor anything but this run's exits changes the tracker); should it, the policy's word stands.
            log.warning("%s: the launcher restarted it, but the restart policy says %s", tid, decision.kind)
            self._state_after_stop[tid] = (TaskState.COMPLETE if decision.kind == restart_policy.DecisionKind.COMPLETE
                                           else TaskState.FAILED)
            self._after_flush.append(lambda: self.runtime.ack(handle))
            self.event("failed" if self._state_after_stop[tid] == TaskState.FAILED else "complete", decision.reason,
                       tid)
            self.stop(tid, decision.reason)
            return
        # The exit is acked, and the new run armed, once both runs' keys are on disk: the new run's handle names
        # the key its own successor would get (respawn_key), which recovery looks for.
        if parked is not None:
            self._ack_after_commit(handle)
            self.on_exit(*parked)
            return
        if self.store_error:
            self.runtime.ack(handle)  # as in on_exit: acks must not pile up behind a full disk; nor is it re-armed
            return

        def after() -> None:
            self.runtime.ack(handle)
            cur = self.records.get(tid)
            if cur is not None and cur.handle is not None and cur.handle.key == nxt.key and not cur.busy \
                    and cur.state == TaskState.RUNNING and self._may_arm(cur):
                try:
                    self.runtime.arm(nxt.key)
                except Exception as e:  # noqa: BLE001 - not armed: the daemon restarts it, as any other task
                    log.debug("arm %s: %s", tid, e)

        self._after_flush.append(after)

    def _ack_after_commit(self, handle: TaskHandle) -> None:
        """Let the launcher forget `handle`'s exit once the pass's commit has made what was decided about it
        durable; at once while the store fails, so that acks do not pile up behind a full disk."""
        if self.store_error:
            self.runtime.ack(handle)
        else:
            self._after_flush.append(lambda: self.runtime.ack(handle))

    def _kill_orphan_successor(self, result: ExitResult, rec: TaskRecord | None) -> None:
        """An exit nobody owns any more carried a respawn: the new run must not outlive its owner's record. Killed
        by its launcher key alone (never its cgroup: a later run of the task may be in it)."""
        nxt = result.respawned
        if nxt is None or (rec is not None and (
                (rec.handle is not None and rec.handle.key == nxt.key) or (rec.exit or {}).get("key") == nxt.key)):
            return  # none, or the record's run, or its last exit: an exit delivered twice, as in recovery
        log.warning("%s: killing run %s the launcher started for an exit nobody owns", nxt.task_id, nxt.key)
        try:
            self.runtime.send_signal(nxt, 9)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: %s", nxt.task_id, e)

    def _apply_decision(self, rec: TaskRecord, result: ExitResult | None, start_failure: bool = False,
                        recoverable: bool = True) -> None:
        decision = self._decide(rec, result, start_failure, recoverable)
        if decision is None:  # no longer desired: nothing to restart
            rec.state = TaskState.STOPPED
            self.persist(rec)
            return
        now = self.clock()
        if decision.kind == restart_policy.DecisionKind.RESTART:
            rec.restarts += 1
            rec.state = TaskState.RESTARTING
            rec.next_start_at = now + decision.delay
            self.event("restarting", f"restarting in {decision.delay:.3g}s ({decision.reason})", rec.task_id,
                       delay=decision.delay)
        elif decision.kind == restart_policy.DecisionKind.COMPLETE:
            rec.state = TaskState.COMPLETE
            self.event("complete", "completed successfully", rec.task_id)
        else:
            rec.state = TaskState.FAILED
            self.event("failed", decision.reason, rec.task_id)
        self.persist(rec)
        if rec.state in (TaskState.COMPLETE, TaskState.FAILED) and self.departing.pop(rec.task_id, None):
            # The removed alloc's poststop hook has run: now nothing of it is desired, so it is forgotten and
            # collected like any removed alloc.
            self.desired.pop(rec.task_id, None)
            self.specs.pop(rec.task_id, None)
            self.touch(rec.task_id)

    def stop(self, tid: str, reason: str, then_start: bool = False) -> None:
        """then_start: the task instance runs again once stopped (its spec changed, or a restart was asked for),
        so its identity stays, as across a restart by policy: the cgroup, tmpfs mounts and, above all, exec2's
        dynamic uid, which owns the files the last run left in local/ and alloc/data. Given back by forget."""
        rec = self.records[tid]
        if rec.handle is None:
            rec.state, rec.next_start_at = TaskState.STOPPED, None
            self.persist(rec)
            return
        task = self.task_spec(rec)
        sig = task.kill_signal if task else "SIGINT"
        timeout = task.kill_timeout if task else 5.0
        rec.state, rec.busy = TaskState.STOPPING, True
        self.persist(rec)
        self.event("killing", f"stopping ({reason}): {sig}, kill_timeout {timeout:g}s", tid)
        driver, handle = self.drivers[rec.driver], rec.handle
        new = self.specs.get(tid)
        # A new user or driver is a new identity: the old one goes.
        keep = then_start and new is not None and task is not None and (new[2].driver, new[2].user) == (
            task.driver, task.user)

        def work():
            try:
                result = driver.stop(handle, sig, timeout)
            except Exception as e:  # noqa: BLE001
                result = ExitResult(exit_code=None, error=f"stop failed: {e}")
            try:
                driver.destroy(handle, keep_identity=keep)
            except Exception as e:  # noqa: BLE001
                log.warning("cleanup of %s: %s", tid, e)
            self.queue.put(("done", lambda: self._stopped(tid, handle, result)))

        self._submit(work)

    def _stopped(self, tid: str, handle: TaskHandle, result: ExitResult) -> None:
        rec = self.records.get(tid)
        if rec is None:
            return
        rec.busy, rec.handle, rec.exit = False, None, result.to_dict()
        rec.state, rec.next_start_at = self._state_after_stop.pop(tid, TaskState.STOPPED), None
        self.cores_in_use.pop(tid, None)
        self.persist(rec)
        self.event("killed", f"stopped (exit {result.exit_code}, signal {result.signal})", tid)

    def rerender(self, tid: str) -> None:
        """Live templates changed in the manifest: render them for the running process (Nomad's change_mode
        noop: files only; signal: files, then change_signal)."""
        rec = self.records[tid]
        job, group, task = self.specs[tid]
        d = self.desired[tid]
        old = self.task_spec(rec)
        old_live = {(t.destination, t.data, t.source, t.perms) for t in old.templates} if old else set()
        to_render = [t for t in task.templates if is_live_template(t)
                     and (t.destination, t.data, t.source, t.perms) not in old_live]
        rec.busy = True
        self._rerendering.add(tid)
        driver, handle = self.drivers[rec.driver], self.full_handle(rec)

        def work():
            error, changed = None, []
            try:
                changed = driver.rerender(handle, task.name, to_render)
                for sig in sorted({t.change_signal for t in changed if t.change_mode == "signal" and t.change_signal}):
                    driver.signal(handle, sig)
            except Exception as e:  # noqa: BLE001 - reported; the running task is left as it is
                error = f"{type(e).__name__}: {e}"
            self.queue.put(("done", lambda: self._rerendered(tid, handle, task, d, changed, error)))

        self._submit(work)

    def _rerendered(self, tid: str, handle: TaskHandle, task: Task, d: DesiredTask, changed: list, error: str | None):
        self._rerendering.discard(tid)
        exited = self._exits_in_rerender.pop(tid, None)
        rec = self.records.get(tid)
        if rec is None or rec.handle is None or rec.handle.key != handle.key:
            if exited is not None:
                self.runtime.ack(exited[0])
            return
        rec.busy = False
        if error:
            rec.last_error = f"template re-render failed: {error}"
            rec.template_hash = d.template_hash  # do not retry in a loop; the next manifest change tries again
            self.event("template_failed", rec.last_error, tid)
        else:
            rec.task_obj, rec.template_hash = task, d.template_hash
            self._dirty_specs.add(tid)
            what = ", ".join(f"{t.destination} ({t.change_mode}{' ' + t.change_signal if t.change_signal else ''})"
                             for t in changed) or "no output changed"
            self.event("template_rendered", f"re-rendered without a restart: {what}", tid)
        self.persist(rec)
        if exited is not None:  # it exited (perhaps from change_signal) while the files were being written
            self.on_exit(*exited)

    def forget(self, tid: str, reason: str) -> None:
        self.touch(tid)
        rec = self.records.pop(tid, None)
        if rec is not None and rec.driver in self.drivers:
            try:
                self.drivers[rec.driver].forget(tid)
            except Exception as e:  # noqa: BLE001
                log.warning("forget %s: %s", tid, e)
        self.cores_in_use.pop(tid, None)
        self._state_after_stop.pop(tid, None)
        self._dirty_tasks.add(tid)

    def _gc_grace(self) -> float:
        """How long a gone alloc waits before GC: none while draining (drain collects everything at once)."""
        return 0.0 if self.draining else self.config.gc_grace

    def mark_alloc_gone(self, alloc: str) -> None:
        rec = self.allocs.get(alloc) or {"alloc": alloc, "alloc_id": self._alloc_id(alloc), "netns": None,
                                          "slot": None}
        rec["gone_at"] = self.clock()
        self.allocs[alloc] = rec
        self._timer(rec["gone_at"] + self._gc_grace(), alloc)
        self._dirty_allocs.add(alloc)

    def collect_alloc(self, alloc: str) -> None:
        rec = self.allocs[alloc]
        self.collecting.add(alloc)
        alloc_dir = self.runtime.alloc_root / rec["alloc_id"]

        def work():
            try:
                # Task cgroups kept across restarts (destroy with keep_identity) go with their alloc.
                for name in self.runtime.cgroups.names():
                    if name.startswith(rec["alloc_id"] + "."):
                        self.runtime.cgroups.forget(name)
                        cg = self.runtime.cgroups.open(name)
                        if cg is not None:
                            cg.kill()
                            cg.remove()
                taskdir.remove_alloc(alloc_dir)
                if rec.get("netns"):
                    netns_mod.remove_group_netns(rec["alloc_id"])
            except Exception as e:  # noqa: BLE001
                log.warning("GC of %s: %s", alloc, e)
            self.queue.put(("done", lambda: self._collected(alloc)))

        self._submit(work)

    def _collected(self, alloc: str) -> None:
        self.touch(alloc)
        self.collecting.discard(alloc)
        self.allocs.pop(alloc, None)
        self._dirty_allocs.add(alloc)
        self.event("gc", f"alloc {alloc} garbage-collected")

    # ---- recovery after a restart ------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-adopt what the last run left: running tasks keep running; exits seen meanwhile go through policy."""
        self.allocs = self.store.allocs()
        for alloc, a in self.allocs.items():
            if a.get("gone_at") is not None:
                self._timer(a["gone_at"] + self._gc_grace(), alloc)
        self.runtime.begin_recovery()
        try:
            self._recover_tasks()
        finally:
            self.runtime.end_recovery()

    def _kill_unowned(self, rec: TaskRecord) -> None:
        name = task_cgroup(taskdir.alloc_id_for(rec.job, rec.grp, rec.idx), rec.task)
        try:
            if rec.pending_key:
                # Not respawned when the kill below ends it; a successor started already is in the same cgroup.
                try:
                    self.runtime.disarm(rec.pending_key, timeout=5.0)
                except Exception as e:  # noqa: BLE001 - the kill goes ahead; its own failure is reported below
                    log.warning("%s: disarm of a lost start: %s", rec.task_id, e)
            cg = self.runtime.cgroups.open(name)
            if cg is not None and cg.pids():
                log.warning("%s: killing the processes of a start whose handle was lost in a crash", rec.task_id)
                cg.kill()
        except Exception as e:  # noqa: BLE001 - recovery goes on; the next start kills them if it comes
            log.warning("%s: cannot kill the processes of a lost start: %s", rec.task_id, e)

    def _recover_tasks(self) -> None:
        for row in self.store.iter_tasks():
            rec = TaskRecord.from_row(row)
            self.records[rec.task_id] = rec
            if rec.handle is not None and rec.handle.exec_env:
                # Written by a version that kept it inside the handle: move it to its table.
                self._pending_exec_envs[rec.task_id] = (rec.handle.key, json.dumps(rec.handle.exec_env))
                rec.handle = rec.handle.without_exec_env()
                self._dirty_tasks.add(rec.task_id)
            if row["task_json"]:
                try:
                    t = Task.from_dict(json.loads(row["task_json"]))
                    rec.template_hash = template_hash(t)
                    if t.resources.cores and rec.handle:
                        cpus = rec.handle.cpuset
                        if cpus:
                            self.cores_in_use[rec.task_id] = [int(c) for c in cpus.split(",")]
                except Exception:  # noqa: BLE001
                    pass
            if rec.handle is None:
                if rec.state == TaskState.RESTARTING and rec.next_start_at is not None:
                    self._timer(rec.next_start_at, alloc_of(rec.task_id))  # timers live in memory only
                if rec.state in (TaskState.STARTING, TaskState.RUNNING, TaskState.STOPPING):
                    # Crashed between writing the key and recording the handle: whatever that spawn started has
                    # no owner. Killed now, not by the next start, which never comes if the task is no longer
                    # desired; its exit record is swept later (Runtime.sweep_unclaimed_exits).
                    self._kill_unowned(rec)
                    rec.state, rec.pending_key = TaskState.PENDING, None
                    self.persist(rec)
                continue
            driver = self.drivers.get(rec.driver)
            result = driver.recover(rec.handle) if driver else ExitResult(None, error="driver unavailable")
            if result is None:
                if rec.state != TaskState.RUNNING:
                    rec.state = TaskState.RUNNING
                    self.persist(rec)
                self.event("recovered", f"re-adopted running process (pid {rec.handle.pid})", rec.task_id)
            else:
                # It ended while we were away. Decide by policy once desired state is known (after rescan).
                if result.error == UNKNOWN_EXIT and rec.exit and rec.exit.get("key") == rec.handle.key:
                    # We recorded this run's exit and acked it, then died before storing what to do about it:
                    # the launcher has forgotten it, but the record has not.
                    result = ExitResult(**{k: v for k, v in rec.exit.items() if k != "key"})
                rec.state = TaskState.RUNNING
                self.queue.put(("exit", rec.handle, result))

    # ---- API support (these run on the loop thread via `call`, except where noted) -----------------------
    def status_body(self) -> bytearray:
        """GET /v1/tasks as JSON, encoded one task at a time (see controller.jsonbody)."""
        rejected = [{"path": m.path, "status": m.status, "errors": m.errors} for m in self.manifests.values()
                    if m.status != "applied"]
        return jsonbody.listing({"rejected_manifests": rejected, "tasks_dir_error": self.dir_error,
                                 "store_error": self.store_error},
                                "tasks", [r for _, r in sorted(self.records.items())], TaskRecord.status)

    def manifest_body(self) -> bytearray:
        """GET /v1/manifests as JSON, encoded one manifest at a time (see controller.jsonbody)."""
        def entry(m: ManifestInfo) -> dict[str, Any]:
            return {"path": m.path, "status": m.status, "jobs": m.jobs, "errors": m.errors, "warnings": m.warnings,
                    "content_hash": m.content_hash, "running_version": m.good_hash}

        return jsonbody.array(sorted(self.manifests.values(), key=lambda m: m.path), entry)

    def health_snapshot(self) -> dict[str, Any]:
        return {"ready": self.ready.is_set(), "drivers": {n: vars(d.fingerprint()) for n, d in self.drivers.items()},
                "tasks_dir": self.tasks_dir, "tasks_dir_error": self.dir_error, "store_error": self.store_error}

    def stats_snapshot(self) -> list[dict[str, Any]]:
        """Any thread: reads cgroup files only (each task's cgroup, no process scan)."""
        out = []
        for tid, rec in sorted(list(self.records.items())):
            h = rec.handle
            if h is None:
                continue
            try:
                s = self.drivers[rec.driver].stats(h)
            except Exception:  # noqa: BLE001 - gone between listing and reading
                continue
            out.append({"id": tid, "pid": h.pid, **s, "sampled_at": time.time()})
        return out

    def full_handle(self, rec: TaskRecord) -> TaskHandle:
        """The record's handle with its exec environment (kept in the store, not in memory). Loop thread only."""
        h = rec.handle
        if h is None:
            return h
        pending = self._pending_exec_envs.get(rec.task_id)
        if pending is not None and pending[0] == h.key:
            return dataclasses.replace(h, exec_env=json.loads(pending[1]))
        move = self._exec_env_moves.get(rec.task_id)
        key = move[0] if move is not None and move[1] == h.key else h.key  # a respawn's, until the commit
        try:
            env = self.store.exec_env(rec.task_id, key)
        except Exception as e:  # noqa: BLE001 - an unreadable store: exec says what is missing
            log.warning("exec environment of %s unreadable: %s", rec.task_id, e)
            env = None
        return dataclasses.replace(h, exec_env=env) if env else h

    def store_reader(self) -> Store:
        return Store(self.store.dir.parent, readonly=True)

    def api_signal(self, tid: str, sig: str) -> dict[str, Any]:
        rec = self.records[tid]
        if rec.handle is None or rec.state != TaskState.RUNNING:
            raise LookupError(f"task {tid} is not running (state {rec.state.value})")
        self.drivers[rec.driver].signal(rec.handle, sig)
        self.event("signaled", f"sent {sig}", tid, signal=sig)
        return {"id": tid, "signal": sig}

    def api_restart(self, tid: str) -> dict[str, Any]:
        """Restart now, as `nomad alloc restart`: not counted against the restart policy."""
        rec = self.records[tid]
        old_pid = rec.handle.pid if rec.handle else None
        if rec.handle is not None and not rec.busy:
            self.stop(tid, "restart requested", then_start=True)
        rec.spec_hash = None  # makes the plan start it again once stopped, with a fresh restart budget
        rec.next_start_at = None
        self.touch(tid)
        return {"id": tid, "old_pid": old_pid}

    def api_drain(self) -> dict[str, Any]:
        """Stop every task (kill_signal, kill_timeout) and keep nothing desired until tasksd restarts."""
        self.draining = True
        self._full_pending = True
        self.event("drain", "draining: every task stops; restart tasksd to run them again")
        self.recompute_desired()
        return {"draining": True, "tasks": len(self.records)}

    def task_spec(self, rec: TaskRecord) -> Task | None:
        """The Task `rec` runs: its own object, or for a record recovered from the store and not started since,
        the stored spec (rarely needed: a stop after its manifest is gone, a template diff, `tasksctl plan`)."""
        if rec.task_obj is not None:
            return rec.task_obj
        stored = self._stored_spec(rec.task_id)
        try:
            return Task.from_dict(stored) if stored is not None else None
        except Exception:  # noqa: BLE001 - a damaged row: the caller falls back to defaults, as for no spec
            log.warning("%s: the stored task spec cannot be read", rec.task_id)
            return None

    def _task_dict(self, rec: TaskRecord) -> dict | None:
        return rec.task_obj.to_dict() if rec.task_obj is not None else self._stored_spec(rec.task_id)

    def _stored_spec(self, tid: str) -> dict | None:
        """The task's spec as the store holds it (JSON decoded); None when there is none or it is unreadable."""
        try:
            stored = self.store.task_json(tid)
            return json.loads(stored) if stored else None
        except Exception:  # noqa: BLE001 - a damaged row: the caller falls back to defaults, as for no spec
            log.warning("%s: the stored task spec cannot be read", tid)
            return None

    def spec_body(self) -> bytearray:
        """What runs now, per task, for `tasksctl plan` to diff a directory against (client-side planning); JSON
        encoded one task at a time (see controller.jsonbody)."""
        def entry(r: TaskRecord) -> dict[str, Any]:
            return {"state": r.state.value, "spec_hash": r.spec_hash, "manifest": r.manifest,
                    "task": self._task_dict(r)}

        return jsonbody.listing({"tasks_dir": self.tasks_dir, "draining": self.draining}, "tasks",
                                sorted(self.records.items()), entry, as_object=True)
