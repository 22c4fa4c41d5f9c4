"""The pure planner and desired-state expansion: no root, no clock, no processes."""
from __future__ import annotations

from dataclasses import replace

from manifests.model import Group, Job, Lifecycle, RawExecConfig, Task, Template
from reconcilers.desired import desired_tasks, spec_hash, template_hash
from reconcilers.plan import (CollectAlloc, Forget, MarkAllocGone, ObservedTask, Rerender, Start, Stop,
                              next_wakeup, plan)
from reconcilers.states import TaskState as S

NOW = 1_000_000.0


def task(name="t", args=("1000",), **kw) -> Task:
    return Task(name=name, driver="raw_exec", config=RawExecConfig(command="/bin/sleep", args=args), **kw)


def job(*tasks: Task, name="j", count=1) -> Job:
    return Job(name=name, groups=(Group(name="g", count=count, tasks=tasks or (task(),)),))


def desired(*jobs: Job):
    return desired_tasks({f"/m/{j.name}.hcl": [j] for j in jobs})


def obs(d, state, **kw) -> ObservedTask:
    tid = d.task_id
    return ObservedTask(tid, tid.rsplit("/", 1)[0], state, kw.pop("spec_hash", d.spec_hash),
                        template_hash=kw.pop("template_hash", d.template_hash), **kw)


def run(des, observed=(), gone=None, grace=60.0, now=NOW):
    return plan(des, {o.task_id: o for o in observed}, now, gone or {}, grace)


def test_new_task_is_started():
    des = desired(job())
    assert run(des) == [Start("j/g/0/t", "new")]


def test_running_identical_task_needs_nothing():
    des = desired(job())
    (d,) = des.values()
    assert run(des, [obs(d, S.RUNNING)]) == []


def test_changed_spec_of_a_running_task_stops_it_to_start_again():
    des = desired(job())
    (d,) = des.values()
    actions = run(des, [obs(d, S.RUNNING, spec_hash="old")])
    assert actions == [Stop("j/g/0/t", "spec changed", then_start=True)]


def test_changed_spec_of_a_finished_task_starts_it():
    des = desired(job())
    (d,) = des.values()
    assert run(des, [obs(d, S.FAILED, spec_hash="old")]) == [Start("j/g/0/t", "spec changed")]
    assert run(des, [obs(d, S.FAILED)]) == []  # failed with the same spec stays failed


def test_busy_task_gets_no_second_action():
    des = desired(job())
    (d,) = des.values()
    assert run(des, [obs(d, S.STARTING, spec_hash="old", busy=True)]) == []


def test_removed_tasks_are_stopped_or_forgotten_and_their_alloc_collected_after_grace():
    running = ObservedTask("x/g/0/t", "x/g/0", S.RUNNING, "h")
    done = ObservedTask("y/g/0/t", "y/g/0", S.COMPLETE, "h")
    actions = run({}, [running, done])
    assert Stop("x/g/0/t", "no longer in any manifest") in actions
    assert Forget("y/g/0/t", "no longer in any manifest") in actions
    assert MarkAllocGone("x/g/0") in actions and MarkAllocGone("y/g/0") in actions
    # An alloc is collected only once nothing of it is observed and the grace has passed.
    assert run({}, [], gone={"y/g/0": NOW - 10}, grace=60) == []
    assert run({}, [], gone={"y/g/0": NOW - 61}, grace=60) == [CollectAlloc("y/g/0")]
    assert run({}, [running], gone={"x/g/0": NOW - 61}, grace=60) == [Stop("x/g/0/t", "no longer in any manifest")]


def test_restarting_task_starts_when_its_delay_is_over():
    des = desired(job())
    (d,) = des.values()
    waiting = obs(d, S.RESTARTING, next_start_at=NOW + 5)
    assert run(des, [waiting]) == []
    assert run(des, [waiting], now=NOW + 5) == [Start("j/g/0/t", "restart policy")]
    assert next_wakeup({d.task_id: waiting}, {"a/g/0": NOW + 1}, 10.0) == NOW + 5


def test_scaling_down_stops_the_highest_index_first_and_leaves_instance_zero_alone():
    three = desired(job(count=3))
    one = desired(job(count=1))
    observed = [obs(d, S.RUNNING) for d in three.values()]
    assert one["j/g/0/t"].spec_hash == three["j/g/0/t"].spec_hash  # count is not part of a task's spec
    stops = [a.task_id for a in run(one, observed) if isinstance(a, Stop)]
    assert stops == ["j/g/2/t", "j/g/1/t"]


def test_prestart_must_complete_successfully_before_main_tasks_start():
    pre = task("pre", lifecycle=Lifecycle(hook="prestart"))
    des = desired(job(pre, task("main")))
    assert run(des) == [Start("j/g/0/pre", "new")]
    p = des["j/g/0/pre"]
    assert run(des, [obs(p, S.RUNNING)]) == []
    assert run(des, [obs(p, S.FAILED)]) == []  # a failed prestart keeps main from ever starting
    assert run(des, [obs(p, S.COMPLETE, successful=True)]) == [Start("j/g/0/main", "new")]


def test_prestart_sidecar_must_run_and_poststart_waits_for_main():
    side = task("side", lifecycle=Lifecycle(hook="prestart", sidecar=True))
    post = task("post", lifecycle=Lifecycle(hook="poststart"))
    des = desired(job(side, task("main"), post))
    s, m = des["j/g/0/side"], des["j/g/0/main"]
    assert run(des, [obs(s, S.RUNNING)]) == [Start("j/g/0/main", "new")]
    assert run(des, [obs(s, S.RUNNING), obs(m, S.RUNNING)]) == [Start("j/g/0/post", "new")]


def test_poststop_runs_after_the_main_tasks_ended():
    stop = task("cleanup", lifecycle=Lifecycle(hook="poststop"))
    des = desired(Job(name="j", type="batch", groups=(Group(name="g", tasks=(task("main"), stop)),)))
    m = des["j/g/0/main"]
    assert run(des, [obs(m, S.RUNNING)]) == []
    assert run(des, [obs(m, S.COMPLETE, successful=True)]) == [Start("j/g/0/cleanup", "new")]


def _with_template(mode: str, data: str, env: bool = False) -> Task:
    return task(templates=(Template(destination="local/a", data=data, change_mode=mode, env=env),))


def test_live_template_content_is_not_part_of_the_spec_and_is_rerendered():
    j1, j2 = job(_with_template("signal", "v1")), job(_with_template("signal", "v2"))
    g1, g2 = j1.groups[0], j2.groups[0]
    assert spec_hash(j1, g1, g1.tasks[0]) == spec_hash(j2, g2, g2.tasks[0])
    assert template_hash(g1.tasks[0]) != template_hash(g2.tasks[0])
    old, new = desired(j1)["j/g/0/t"], desired(j2)["j/g/0/t"]
    running = obs(old, S.RUNNING)
    assert run({new.task_id: new}, [running]) == [Rerender("j/g/0/t")]
    assert run({new.task_id: new}, [replace(running, template_hash=None)]) == []  # unknown: leave it alone


def test_restart_and_env_templates_stay_part_of_the_spec():
    for mode, env in (("restart", False), ("noop", True)):
        j1, j2 = job(_with_template(mode, "v1", env)), job(_with_template(mode, "v2", env))
        assert spec_hash(j1, j1.groups[0], j1.groups[0].tasks[0]) != spec_hash(j2, j2.groups[0], j2.groups[0].tasks[0])
        assert template_hash(j1.groups[0].tasks[0]) == ""


def test_departing_poststop_starts_once_the_rest_of_its_alloc_stopped():
    stop = replace(desired(job(task("cleanup", lifecycle=Lifecycle(hook="poststop"))))["j/g/0/cleanup"],
                   departing=True)
    main = ObservedTask("j/g/0/main", "j/g/0", S.STOPPING, "h", busy=True)
    assert run({stop.task_id: stop}, [main]) == []
    stopped = replace(main, state=S.STOPPED, busy=False)
    actions = run({stop.task_id: stop}, [stopped])
    assert Start("j/g/0/cleanup", "poststop of a removed alloc") in actions
    assert not any(isinstance(a, MarkAllocGone) for a in actions)  # the alloc is not gone while it runs
