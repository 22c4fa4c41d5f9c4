"""The controller's view of the tasks directory, with a fake clock and no kernel: the rescan/desired-state part
only (no task is started, so the runtime and drivers are stand-ins that would fail if touched)."""
from __future__ import annotations

import os
from types import SimpleNamespace

from controller.controller import REMOVAL_GRACE, Controller
from controller.store import Store
from manifests.agent_config import AgentConfig

JOB = ('job "web" {\n group "g" {\n task "t" {\n driver = "raw_exec"\n config {\n command = "/bin/sleep"\n'
       ' args = ["1"]\n }\n }\n }\n}\n')


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    ctl.scanner._cache[str(path)].signature = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                               st.st_mode, st.st_uid)
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


def test_patching_desired_state_gives_what_a_rebuild_gives(tmp):
    """recompute_desired applies only the files that changed; a twin controller that always rebuilds must end
    every step with the same desired tasks, specs and touched allocs. Random adds, edits (count, args, a job
    renamed), deletes and duplicate job names across files."""
    import random

    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    patched, tasks, clock = controller(tmp / "a")
    rebuilt = Controller(AgentConfig(), str(tasks), Store(tmp / "b" / "state"), SimpleNamespace(on_exit=None), {},
                         clock=clock)
    rebuilt._patch_desired = lambda entries: False
    rng = random.Random(7)
    for step in range(80):
        name = f"f{rng.randrange(6)}.hcl"
        if rng.random() < 0.3 and (tasks / name).exists():
            (tasks / name).unlink()
        else:
            job = JOB.replace('"web"', f'"j{rng.randrange(4)}"').replace('args = ["1"]', f'args = ["{step}"]')
            job = job.replace('group "g" {', f'group "g" {{\n count = {rng.randrange(1, 4)}')
            (tasks / name).write_text(job)
        clock.now += rng.choice([0.01, REMOVAL_GRACE])
        for c in (patched, rebuilt):
            c._touched.clear()
            c.rescan()
        assert dict(patched.desired) == dict(rebuilt.desired), f"step {step}"
        assert patched.specs == rebuilt.specs, f"step {step}"
        assert patched._touched == rebuilt._touched, f"step {step}"
        assert {a: sorted(ids) for a, ids in patched.desired._index.items()} == \
            {a: sorted(ids) for a, ids in rebuilt.desired._index.items()}, f"step {step}"
    assert len(patched.desired) > 0
    patched.store.close()
    rebuilt.store.close()
