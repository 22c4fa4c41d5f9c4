"""Crash-restart chaos: manifests churn while tasksd is kill -9ed at random moments; afterwards the kernel's view
(task cgroups and the processes in them) must equal what the directory asks for, with nothing doubled or leaked.

The random moments are chosen by progress, not by sleeping: after a burst of churn the daemon is killed once its
log has grown by a random number of bytes (it is mid-reconcile then), or at once.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import pytest

from isolation import taskdir
from tests.e2e.conftest import raw_job
from tests.helpers import wait_for
from tests.torture.conftest import cmdline, scale, task_cgroups

pytestmark = [pytest.mark.root, pytest.mark.slow]

INVALID = 'job "{name}" {{\n  group "g" {{\n    task "t" {{\n      driver = "docker"\n    }}\n  }}\n}}\n'


@dataclass
class FileModel:
    """What one manifest file asks for: `valid_args` is the last valid version tasksd has been shown."""
    job: str
    valid_args: str | None = None
    text: str = ""
    invalid: bool = False


def tid(job: str) -> str:
    return f"{job}/g/0/t"


def cgroup_of(job: str) -> str:
    return f"{taskdir.alloc_id_for(job, 'g', 0)}.t"


class Chaos:
    def __init__(self, daemon, rng: random.Random, n: int):
        self.d, self.rng = daemon, rng
        self.files: dict[str, FileModel] = {}
        self.next_job = 0
        self.version = 0
        self.untouched: list[str] = []
        for _ in range(n):
            self.add()

    def up(self) -> bool:
        return self.d.proc is not None

    def _args(self) -> str:
        self.version += 1
        return str(100000 + self.version)

    def add(self) -> None:
        job = f"j{self.next_job:04d}"
        self.next_job += 1
        args = self._args()
        m = FileModel(job, args, raw_job(job, args=[args]))
        self.files[f"{job}.hcl"] = m
        self.d.write(f"{job}.hcl", m.text)

    def edit(self, name: str) -> None:
        m = self.files[name]
        m.valid_args, m.invalid = self._args(), False
        m.text = raw_job(m.job, args=[m.valid_args])
        self.d.write(name, m.text, atomic=self.rng.random() < 0.7)

    def invalid_edit(self, name: str) -> None:
        m = self.files[name]
        if m.valid_args is not None and not m.invalid:
            # The model says "the last valid version keeps running": that is only defined once tasksd has seen
            # that version, so wait for it to be applied first (only possible while tasksd is up).
            if not self.up():
                return
            digest = hashlib.sha256(m.text.encode()).hexdigest()
            wait_for(lambda: any(x["path"].endswith("/" + name) and x["running_version"] == digest
                                 for x in self.d.client.get("/v1/manifests")), timeout=60,
                     what=f"{name} applied before its invalid edit")
        m.invalid, m.text = True, INVALID.format(name=m.job)
        self.d.write(name, m.text)

    def new_invalid(self) -> None:
        job = f"j{self.next_job:04d}"
        self.next_job += 1
        m = FileModel(job, None, INVALID.format(name=job), invalid=True)
        self.files[f"{job}.hcl"] = m
        self.d.write(f"{job}.hcl", m.text)

    def delete(self, name: str) -> None:
        del self.files[name]
        (self.d.tasks_dir / name).unlink()

    def churn(self, ops: int) -> None:
        for _ in range(ops):
            touchable = sorted(n for n in self.files if n[:-4] not in self.untouched)
            op = self.rng.choices(["add", "edit", "invalid", "new_invalid", "delete"], [3, 4, 2, 1, 2])[0]
            if op == "add" or not touchable:
                self.add()
            elif op == "edit":
                self.edit(self.rng.choice(touchable))
            elif op == "invalid":
                self.invalid_edit(self.rng.choice(touchable))
            elif op == "new_invalid":
                self.new_invalid()
            else:
                self.delete(self.rng.choice(touchable))

    def desired(self) -> dict[str, str]:
        return {m.job: m.valid_args for m in self.files.values() if m.valid_args is not None}

    def mismatches(self) -> list[str]:
        """Differences between what the files ask for and what runs, seen through tasksd and through the kernel."""
        want = self.desired()
        problems = []
        tasks = self.d.tasks()
        if set(tasks) != {tid(j) for j in want}:
            problems.append(f"task ids: extra {sorted(set(tasks) - {tid(j) for j in want})}, "
                            f"missing {sorted({tid(j) for j in want} - set(tasks))}")
        for job in want:
            t = tasks.get(tid(job))
            if t is not None and t["state"] != "running":
                problems.append(f"{job}: {t['state']} ({t['last_error']})")
        cgs = task_cgroups(self.d.cgroup_parent)
        expected = {cgroup_of(j): j for j in want}
        if set(cgs) != set(expected):
            problems.append(f"cgroups: extra {sorted(set(cgs) - set(expected))}, "
                            f"missing {sorted(set(expected) - set(cgs))}")
        for name, pids in cgs.items():
            job = expected.get(name)
            lines = [cmdline(p) for p in pids]
            if job is not None and lines != [["/bin/sleep", want[job]]]:
                problems.append(f"{job}: processes in its cgroup {lines}, want one sleep {want[job]}")
        return problems


def kill_mid_work(daemon, rng: random.Random) -> None:
    """kill -9 at a random moment: at once, or once the log grew by a random amount (tasksd is working then)."""
    if rng.random() < 0.25:
        daemon.kill9()
        return
    size = daemon.log_path.stat().st_size
    grow = rng.randrange(200, 20000)
    try:
        wait_for(lambda: daemon.log_path.stat().st_size >= size + grow, timeout=rng.uniform(0.2, 3.0))
    except AssertionError:
        pass  # it went quiet first: killing an idle daemon is a moment too
    daemon.kill9()


def test_crash_restart_chaos(daemon):
    n, kills = scale(30, 200), scale(5, 50)
    seed = int(os.environ.get("TASKSD_TORTURE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (TASKSD_TORTURE_SEED to replay)")
    chaos = Chaos(daemon, rng, n)
    chaos.untouched = [f"j{i:04d}" for i in range(n // 3)]
    daemon.start()
    wait_for(lambda: not chaos.mismatches(), timeout=120, what="initial convergence")
    pids = {j: daemon.task(tid(j))["pid"] for j in chaos.untouched}

    for _ in range(kills):
        chaos.churn(rng.randrange(1, 1 + n // 3))
        kill_mid_work(daemon, rng)
        chaos.churn(rng.randrange(0, 1 + n // 6))  # changes made while tasksd is down
        daemon.start()

    try:
        wait_for(lambda: not chaos.mismatches(), timeout=180, interval=0.2, what="convergence after chaos")
    except AssertionError:
        pytest.fail(f"seed {seed}: not converged: {chaos.mismatches()}")
    tasks = daemon.tasks()
    for job, pid in pids.items():
        t = tasks[tid(job)]
        assert (t["pid"], t["restarts"]) == (pid, 0), f"seed {seed}: untouched {job} was restarted: {t}"
    manifests = {m["path"]: m for m in daemon.client.get("/v1/manifests")}
    for name, m in chaos.files.items():
        got = manifests[str(daemon.tasks_dir / name)]
        assert got["status"] == ("rejected" if m.invalid else "applied"), (seed, name, got)
        if m.invalid:
            assert "docker" in got["errors"][0]["message"]
    assert "Traceback" not in daemon.log(), f"seed {seed}: a traceback in the tasksd log"
