"""The controller's view of the tasks directory, with a fake clock and no kernel: the rescan/desired-state part
only (no task is started, so the runtime and drivers are stand-ins that would fail if touched)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from controller import scan
from controller.controller import REMOVAL_GRACE, Controller
from controller.store import Store
from manifests.agent_config import AgentConfig
from tests.helpers import Clock

JOB = ('job "web" {\n group "g" {\n task "t" {\n driver = "raw_exec"\n config {\n command = "/bin/sleep"\n'
       ' args = ["1"]\n }\n }\n }\n}\n')


def controller(tmp):
    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    clock = Clock()
    runtime = SimpleNamespace(on_exit=None)  # never used by rescans
    ctl = Controller(AgentConfig(), str(tasks), Store(tmp / "state"), runtime, {}, clock=clock)
    return ctl, tasks, clock


def test_a_manifest_absent_for_less_than_the_grace_keeps_its_tasks(tmp):
    ctl, tasks, clock = controller(tmp)
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired
    os.rename(tasks / "web.hcl", tasks / "web.hcl~")  # an editor's save: the old file goes away first...
    clock.now += 0.01
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired  # ...which must not stop anything yet
    (tasks / "web.hcl").write_text(JOB)  # ...and the new file arrives
    clock.now += 0.01
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired
    assert not [e for e in ctl.store.events() if e["type"] == "manifest_removed"]
    ctl.store.close()


def test_a_manifest_absent_for_longer_than_the_grace_stops_its_tasks(tmp):
    ctl, tasks, clock = controller(tmp)
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    (tasks / "web.hcl").unlink()
    ctl.rescan()
    assert "web/g/0/t" in ctl.desired and ctl._rescan_at == clock.now + REMOVAL_GRACE  # a rescan is scheduled
    clock.now += REMOVAL_GRACE
    ctl.rescan()
    assert "web/g/0/t" not in ctl.desired
    assert [e for e in ctl.store.events() if e["type"] == "manifest_removed"]
    ctl.store.close()


def test_the_full_resync_rereads_files_whose_stat_signature_did_not_change(tmp):
    # A same-size rewrite within one timestamp tick keeps the stat signature on coarse-timestamp filesystems.
    # Simulated here by handing the cache the new file's signature: an event rescan trusts it, the periodic
    # full resync reads the content and sees the change.
    ctl, tasks, clock = controller(tmp)
    path = tasks / "web.hcl"
    path.write_text(JOB)
    ctl.rescan()
    assert ctl.specs["web/g/0/t"][2].config.args == ("1",)
    path.write_text(JOB.replace('args = ["1"]', 'args = ["2"]'))
    st = os.stat(path)
    ctl.scanner._cache[str(path)].signature = scan.signature(st)
    ctl.rescan()
    assert ctl.specs["web/g/0/t"][2].config.args == ("1",)  # the signature said "unchanged"
    ctl.rescan(reread=True)
    assert ctl.specs["web/g/0/t"][2].config.args == ("2",)
    ctl.store.close()


def test_a_rescan_that_finds_nothing_new_leaves_desired_state_alone(tmp):
    """With a thousand manifests, every event burst rescans the directory; walking every task again is only
    needed when a manifest came, went or changed."""
    ctl, tasks, clock = controller(tmp)
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    calls = []
    recompute = ctl.recompute_desired
    ctl.recompute_desired = lambda: (calls.append(1), recompute())
    (tasks / ".web.hcl.tmp").write_text(JOB)  # not a manifest name: an editor's temp file
    ctl.rescan()
    ctl.rescan(reread=True)
    assert calls == []
    (tasks / "api.hcl").write_text(JOB.replace('"web"', '"api"'))
    ctl.rescan()
    assert calls == [1] and {"web/g/0/t", "api/g/0/t"} <= set(ctl.desired)
    ctl.store.close()


@pytest.mark.parametrize("job_names", [4, 40])
def test_patching_desired_state_gives_what_a_rebuild_gives(tmp, job_names):
    """recompute_desired applies only the files that changed (and, without duplicates, looks at no other file);
    a twin controller that always rebuilds must end every step with the same desired tasks, specs, touched
    allocs and manifest statuses. Random adds, edits (count, args, a job renamed), deletes and duplicate job
    names across files: 4 names among 6 files clash all the time, 40 rarely."""
    import random

    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    patched, tasks, clock = controller(tmp / "a")
    rebuilt = Controller(AgentConfig(), str(tasks), Store(tmp / "b" / "state"), SimpleNamespace(on_exit=None), {},
                         clock=clock)
    rebuilt._patch_desired = lambda entries: False
    rebuilt._recompute_changed = lambda: False
    fast = []
    incremental = patched._recompute_changed
    patched._recompute_changed = lambda: fast.append(incremental()) or fast[-1]
    rng = random.Random(7)
    for step in range(80):
        name = f"f{rng.randrange(6)}.hcl"
        if rng.random() < 0.3 and (tasks / name).exists():
            (tasks / name).unlink()
        else:
            job = JOB.replace('"web"', f'"j{rng.randrange(job_names)}"').replace('args = ["1"]', f'args = ["{step}"]')
            job = job.replace('group "g" {', f'group "g" {{\n count = {rng.randrange(1, 4)}')
            (tasks / name).write_text(job)
        clock.now += rng.choice([0.01, REMOVAL_GRACE])
        for c in (patched, rebuilt):
            c._touched.clear()
            c.rescan()
        assert dict(patched.desired) == dict(rebuilt.desired), f"step {step}"
        assert patched.specs == rebuilt.specs, f"step {step}"
        assert patched._touched == rebuilt._touched, f"step {step}"
        assert ({p: (m.status, m.errors) for p, m in patched.manifests.items()}
                == {p: (m.status, m.errors) for p, m in rebuilt.manifests.items()}), f"step {step}"
        assert {a: sorted(ids) for a, ids in patched.desired._index.items()} == \
            {a: sorted(ids) for a, ids in rebuilt.desired._index.items()}, f"step {step}"
    assert len(patched.desired) > 0
    assert any(fast), "the incremental path never ran: this test would not see it break"
    patched.store.close()
    rebuilt.store.close()


def test_the_scanner_reports_only_the_files_that_changed(tmp):
    """The controller looks only at what a scan reports as changed (the other 999 files are the very FileState
    objects it already handled); anything new, edited or renamed in must be in that set."""
    from controller.scan import Scanner

    tasks = tmp / "tasks.d"
    tasks.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    for name in ("a", "b", "c"):
        (tasks / f"{name}.hcl").write_text(JOB.replace('"web"', f'"{name}"'))
    scanner = Scanner(tasks)
    first = scanner.scan()
    assert first.changed == set(first.files) and len(first.files) == 3
    second = scanner.scan()
    assert second.changed == set()
    assert all(second.files[p] is first.files[p] for p in first.files)
    (tasks / "b.hcl").write_text(JOB.replace('"web"', '"b"').replace('args = ["1"]', 'args = ["2"]'))
    (tasks / ".d.hcl.tmp").write_text(JOB.replace('"web"', '"d"'))
    os.rename(tasks / ".d.hcl.tmp", tasks / "d.hcl")
    (tasks / "c.hcl").unlink()
    third = scanner.scan()
    assert third.changed == {str(tasks / "b.hcl"), str(tasks / "d.hcl")}
    assert set(third.files) == {str(tasks / n) for n in ("a.hcl", "b.hcl", "d.hcl")}
    # The same bytes rewritten: a new stat signature, the same content: nothing to look at.
    (tasks / "a.hcl").write_text((tasks / "a.hcl").read_text())
    assert scanner.scan().changed == set()


def test_a_duplicate_whose_rival_is_removed_runs_and_says_applied(tmp):
    ctl, tasks, clock = controller(tmp)
    (tasks / "a.hcl").write_text(JOB)
    ctl.rescan()
    clock.now += 1
    (tasks / "b.hcl").write_text(JOB.replace('args = ["1"]', 'args = ["2"]'))
    ctl.rescan()
    assert ctl.manifests[str(tasks / "b.hcl")].status == "duplicate"
    assert ctl.specs["web/g/0/t"][2].config.args == ("1",)
    (tasks / "a.hcl").unlink()
    ctl.rescan()  # noticed; acted on once it has been gone for the removal grace
    clock.now += REMOVAL_GRACE
    ctl.rescan()
    b = ctl.manifests[str(tasks / "b.hcl")]
    assert (b.status, b.errors) == ("applied", [])
    assert ctl.specs["web/g/0/t"][2].config.args == ("2",)
    ctl.store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="manifest permissions are only enforced when tasksd runs as root")
def test_a_manifest_refused_for_its_mode_is_judged_again_when_the_rule_changes(tmp):
    ctl, tasks, clock = controller(tmp)
    path = tasks / "web.hcl"
    path.write_text(JOB)
    os.chmod(path, 0o666)
    ctl.rescan()
    assert ctl.manifests[str(path)].status == "rejected" and "web/g/0/t" not in ctl.desired
    ctl.scanner.strict = False
    ctl.rescan()
    assert ctl.manifests[str(path)].status == "rejected"  # a cached verdict survives until forgotten...
    ctl.scanner.forget()
    ctl.rescan()
    assert ctl.manifests[str(path)].status == "applied" and "web/g/0/t" in ctl.desired  # ...which a reload does
    ctl.store.close()


def test_the_watcher_wakes_on_changes_and_not_on_reads(tmp):
    """Real inotify (no root needed). Each scan reads every changed file and lists the directory; were opens and
    closes delivered, every scan would wake the watcher thread (and with a short debounce, another scan)."""
    import inspect
    import threading

    from watchdog.observers.api import BaseObserver

    from controller.watcher import DirWatcher
    from tests.helpers import wait_for

    tasks = tmp / "tasks.d"
    tasks.mkdir()
    (tasks / "a.hcl").write_text(JOB)
    wakes, early = [], []
    woke = threading.Event()
    w = DirWatcher(str(tasks), lambda: (wakes.append(1), woke.set()), debounce=0.2, early=lambda: early.append(1))
    w.start()
    try:
        (tasks / "b.hcl").write_text(JOB)  # create, modify, close: the close wakes at once
        wait_for(woke.is_set, timeout=10, what="a wake-up for the new file")
        woke.clear()
        for _ in range(20):
            (tasks / "a.hcl").read_text()
            os.listdir(tasks)
        (tasks / ".c.hcl.tmp").write_text(JOB)  # not a manifest: woken by the debounce timer
        wait_for(woke.is_set, timeout=10, what="a wake-up for the temp file")
        observer_filtered = w._observer.emitters and next(iter(w._observer.emitters))._event_filter is not None
    finally:
        w.stop()
    assert early, "the early hook never ran"
    assert len(wakes) == 2, wakes  # the reads in between woke nothing
    if "event_filter" in inspect.signature(BaseObserver.schedule).parameters:
        assert observer_filtered, "the kernel is still asked for opens and closes"


def test_a_manifest_renamed_in_wakes_at_once_and_other_events_wait_for_the_debounce(tmp):
    """The debounce (30 s here, to make waiting visible) applies to everything but an event that completes a
    manifest: a rename onto a manifest name (the usual atomic write) or the close of a written manifest."""
    import threading

    from controller.watcher import DirWatcher
    from tests.helpers import wait_for

    tasks = tmp / "tasks.d"
    tasks.mkdir()
    wakes, early = [], []
    woke = threading.Event()
    w = DirWatcher(str(tasks), lambda: (wakes.append(1), woke.set()), debounce=30, early=lambda: early.append(1))
    w.start()
    try:
        (tasks / ".web.hcl.tmp").write_text(JOB)
        wait_for(lambda: early, timeout=10, what="the watcher seeing the temp file")
        assert wakes == [] and w._timer is not None  # a temp file waits for the debounce
        os.replace(tasks / ".web.hcl.tmp", tasks / "web.hcl")
        wait_for(woke.is_set, timeout=10, what="an immediate wake-up for the renamed manifest")
        # Exactly one: the temp file's timer was cancelled (the immediate rescan runs after its events). watchdog
        # follows the rename with a modification of the directory, whose own timer is still 30 s away.
        assert wakes == [1]
    finally:
        w.stop()


def test_an_exit_seen_before_a_start_that_then_failed_is_acked_not_kept(tmp):
    """A short task can exit before its start reply is processed; the exit waits in _early_exits for _started. If
    the start is reported failed instead (or the record moved on), the waiting exit must be acked to the launcher
    (which otherwise keeps the record on disk) and dropped, not kept forever."""
    from controller.controller import TaskRecord
    from isolation.drivers.base import ExitResult

    ctl, tasks, clock = controller(tmp)
    acked: list[str] = []
    ctl.runtime = SimpleNamespace(on_exit=None, ack=lambda h: acked.append(h.key), result=lambda key: None)
    for key, report in (("k1", lambda: ctl._start_error("web/g/0/t", "k1", "boom")),
                        ("k2", lambda: ctl._started("web/g/0/t", "k2", SimpleNamespace(key="k2")))):
        rec = TaskRecord("web/g/0/t", "web", "g", 0, "t", "raw_exec", "web.hcl")
        rec.pending_key = key
        ctl.records["web/g/0/t"] = rec
        ctl.on_exit(SimpleNamespace(task_id="web/g/0/t", key=key), ExitResult(exit_code=0))
        assert key in ctl._early_exits and acked == (["k1"] if key == "k2" else [])
        if key == "k2":
            rec.pending_key = "a-newer-start"  # the record moved on before the start reply was handled
        report()
        assert ctl._early_exits == {} and acked[-1] == key
    assert acked == ["k1", "k2"]
    ctl.store.close()


def test_a_job_back_while_its_old_alloc_is_collected_starts_only_after_the_collection(tmp):
    ctl, tasks, clock = controller(tmp)
    ctl.collecting.add("web/g/0")  # a GC of the job's previous alloc is running on a worker
    (tasks / "web.hcl").write_text(JOB)
    ctl.rescan()
    ctl.reconcile(full=True)
    assert "web/g/0/t" in ctl.desired and "web/g/0/t" not in ctl.records  # no start into the dying alloc
    ctl._collected("web/g/0")
    assert "web/g/0" in ctl._touched  # the next pass plans the start
    ctl.store.close()
