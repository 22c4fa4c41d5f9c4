"""Desired state: the task instances that valid manifests ask for, each with a hash of everything that, when it
changes, means the running process must be replaced."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from manifests.digest import sha256_hex


@dataclass(frozen=True, slots=True)
class DesiredTask:
    task_id: str  # job/group/index/task
    job: str
    group: str
    index: int
    task: str
    driver: str
    spec_hash: str
    manifest: str
    job_type: str
    hook: str | None = None  # lifecycle hook: prestart | poststart | poststop
    sidecar: bool = False
    template_hash: str = ""  # contents of templates that change without a restart (change_mode noop/signal)
    departing: bool = False  # a poststop hook of an alloc whose job (or instance) was removed: runs once, last


def task_id(job: str, group: str, index: int, task: str) -> str:
    return sys.intern(f"{job}/{group}/{index}/{task}")  # one copy, however many maps key on it


LIVE_CHANGE_MODES = ("noop", "signal")


def is_live_template(t) -> bool:
    """A template whose new content is applied to the running task (re-rendered, maybe signalled) instead of
    restarting it, as Nomad's change_mode noop/signal. `env = true` templates feed the environment, which a
    running process cannot pick up, so they always restart."""
    return t.change_mode in LIVE_CHANGE_MODES and not t.env


def _live_content(t) -> dict:
    return {"data": t.data, "source": t.source, "perms": t.perms, "left": t.left_delimiter,
            "right": t.right_delimiter}


def template_hash(task) -> str:
    material = [_live_content(t) for t in task.templates if is_live_template(t)]
    if not material:
        return ""
    return sha256_hex(json.dumps(material, sort_keys=True).encode())[:16]


def spec_hash(job, group, task) -> str:
    """What a running task depends on: its own spec, the group's network and meta, the job's type and meta.

    Count is deliberately not part of it: scaling 3 -> 1 must not restart instance 0. Neither is the content of
    live templates (see template_hash): changing one re-renders it in place.
    """
    task_dict = task.to_dict()
    live = [i for i, t in enumerate(task.templates) if is_live_template(t)]
    for i in live:
        for key in _live_content(task.templates[i]):
            task_dict["templates"][i].pop({"left": "left_delimiter", "right": "right_delimiter"}.get(key, key), None)
    material = {
        "task": task_dict,
        "network": group.network.to_dict(),
        "group_meta": dict(group.meta),
        "job_meta": dict(job.meta),
        "job_type": job.type,
    }
    return sha256_hex(json.dumps(material, sort_keys=True, default=str).encode())[:16]


def task_instances(jobs: Iterable) -> Iterator[tuple[str, Any, Any, int, Any]]:
    """(task id, job, group, index, task) for every instance of every task: `count` instances of each group."""
    for job in jobs:
        for group in job.groups:
            for index in range(group.count):
                for task in group.tasks:
                    yield task_id(job.name, group.name, index, task.name), job, group, index, task


def desired_tasks(jobs_by_manifest: dict[str, list]) -> dict[str, DesiredTask]:
    """Expand jobs (per manifest path) into one DesiredTask per (group instance, task)."""
    out: dict[str, DesiredTask] = {}
    for path, jobs in jobs_by_manifest.items():
        for job in jobs:
            for group in job.groups:
                # Every instance of a group runs the same specs: hash each task once, not once per instance.
                hashes = [(task, spec_hash(job, group, task), template_hash(task)) for task in group.tasks]
                for index in range(group.count):
                    for task, spec, templates in hashes:
                        tid = task_id(job.name, group.name, index, task.name)
                        lc = task.lifecycle
                        out[tid] = DesiredTask(
                            task_id=tid, job=job.name, group=group.name, index=index, task=task.name,
                            driver=task.driver, spec_hash=spec, manifest=path,
                            job_type=job.type, hook=lc.hook if lc else None, sidecar=bool(lc and lc.sidecar),
                            template_hash=templates)
    return out
