"""Soak: ~50 manifests churned (add, edit, delete, invalid edits) for a long time while the RSS and open fds of
tasksd and of its launcher are sampled; at the end neither may have grown beyond noise.

Long only (TASKSD_TORTURE_LONG=1); TASKSD_SOAK_SECONDS sets the duration (default 1800) and TASKSD_SOAK_INTERVAL
the sampling period (default 30 s). Churn is paced by the daemon itself: each change waits until tasksd has taken
it in, so the load is as fast as tasksd can go and a slow daemon is not buried under a backlog.
"""
from __future__ import annotations

import hashlib
import os
import random
import statistics
import time
from dataclasses import dataclass

import psutil
import pytest

from tests.e2e.conftest import raw_job
from tests.helpers import wait_for
from tests.torture.conftest import LONG, launcher_pids

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not LONG, reason="the soak runs only with TASKSD_TORTURE_LONG=1")]

SECONDS = float(os.environ.get("TASKSD_SOAK_SECONDS", "1800"))
INTERVAL = float(os.environ.get("TASKSD_SOAK_INTERVAL", "30"))
POPULATION = 50
INVALID = 'job "{name}" {{\n  group "g" {{\n    task "t" {{\n      driver = "docker"\n    }}\n  }}\n}}\n'
MB = 1 << 20


@dataclass(frozen=True)
class Sample:
    at: float
    ops: int
    tasks: int
    daemon_rss: int
    daemon_fds: int
    launcher_rss: int
    launcher_fds: int


def sample(d, at: float, ops: int) -> Sample:
    (lpid,) = launcher_pids(d)
    dp, lp = psutil.Process(d.proc.pid), psutil.Process(lpid)
    return Sample(at, ops, len(d.tasks()), dp.memory_info().rss, dp.num_fds(), lp.memory_info().rss, lp.num_fds())


class Churn:
    def __init__(self, d, rng: random.Random):
        self.d, self.rng = d, rng
        self.files: dict[str, str] = {}  # name -> current text
        self.valid: dict[str, str] = {}  # job -> args of the last valid version tasksd was shown
        self.next_job = 0
        self.ops = 0

    def add(self) -> None:
        job = f"s{self.next_job:05d}"
        self.next_job += 1
        self._write(f"{job}.hcl", job, valid=True)

    def _write(self, name: str, job: str, valid: bool) -> None:
        if valid:
            args = str(100000 + self.ops)
            self.valid[job] = args
            text = raw_job(job, args=[args])
        else:
            text = INVALID.format(name=job)
        self.files[name] = text
        self.d.write(name, text, atomic=self.rng.random() < 0.7)

    def step(self, op: str | None = None) -> None:
        self.ops += 1
        n = len(self.files)
        op = op or ("add" if n < POPULATION - 5 else "delete" if n > POPULATION + 5 else
                    self.rng.choices(["add", "edit", "invalid", "delete"], [2, 5, 2, 2])[0])
        if op == "add":
            self.add()
            name = f"s{self.next_job - 1:05d}.hcl"
        else:
            name = self.rng.choice(sorted(self.files))
            job = name[:-4]
            if op == "delete":
                del self.files[name]
                self.valid.pop(job, None)
                (self.d.tasks_dir / name).unlink()
            else:
                self._write(name, job, valid=op == "edit")
        self.wait_taken_in(name)

    def wait_taken_in(self, name: str) -> None:
        path = str(self.d.tasks_dir / name)
        text = self.files.get(name)

        def done() -> bool:
            m = {x["path"]: x for x in self.d.client.get("/v1/manifests")}.get(path)
            if text is None:
                return m is None
            return m is not None and m["content_hash"] == hashlib.sha256(text.encode()).hexdigest()

        wait_for(done, timeout=60, what=f"tasksd took in {name}")

    def settle(self) -> None:
        """Back to exactly POPULATION files, all taken in and running: the launcher holds pipes and log files per
        task, so only samples taken at the same task count compare."""
        while len(self.files) != POPULATION:
            self.step("add" if len(self.files) < POPULATION else "delete")
        wait_for(self.converged, timeout=120, interval=0.1, what="convergence before a sample")

    def converged(self) -> bool:
        want = {f"{job}/g/0/t": args for job, args in self.valid.items()
                if f"{job}.hcl" in self.files}
        tasks = {tid: t for tid, t in self.d.tasks().items() if t["state"] not in ("stopped",)}
        if set(tasks) != set(want):
            return False
        try:
            return all(t["state"] == "running" and psutil.Process(t["pid"]).cmdline() == ["/bin/sleep", want[tid]]
                       for tid, t in tasks.items())
        except psutil.Error:  # a process that went between the listing and the look
            return False


def table(samples: list[Sample]) -> str:
    rows = [f"{'t (s)':>7} {'ops':>7} {'tasks':>5} {'tasksd RSS MB':>13} {'fds':>4} {'launcher RSS MB':>15} {'fds':>4}"]
    for s in samples:
        rows.append(f"{s.at:7.0f} {s.ops:7d} {s.tasks:5d} {s.daemon_rss / MB:13.1f} {s.daemon_fds:4d} "
                    f"{s.launcher_rss / MB:15.1f} {s.launcher_fds:4d}")
    return "\n".join(rows)


def quartile_medians(values: list[int]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return statistics.median(values[:q]), statistics.median(values[-q:])


def test_soak(daemon):
    d = daemon
    seed = int(os.environ.get("TASKSD_TORTURE_SEED", random.randrange(1 << 30)))
    print(f"soak seed {seed}, {SECONDS:.0f} s, a sample every {INTERVAL:.0f} s")
    churn = Churn(d, random.Random(seed))
    for _ in range(POPULATION):
        churn.add()
    d.start()
    churn.settle()

    t0 = time.monotonic()
    samples = [sample(d, 0.0, 0)]
    while (now := time.monotonic() - t0) < SECONDS:
        churn.step()
        if now >= len(samples) * INTERVAL:
            churn.settle()
            samples.append(sample(d, now, churn.ops))
    churn.settle()
    samples.append(sample(d, time.monotonic() - t0, churn.ops))
    print("\n" + table(samples))

    assert "Traceback" not in d.log(), "a traceback in the tasksd log"
    assert len(samples) >= 4, "too short to compare quartiles: raise TASKSD_SOAK_SECONDS"
    for what, rss, fds in (("tasksd", [s.daemon_rss for s in samples], [s.daemon_fds for s in samples]),
                           ("launcher", [s.launcher_rss for s in samples], [s.launcher_fds for s in samples])):
        first, last = quartile_medians(rss)
        assert last <= first * 1.2 + 8 * MB, f"{what} RSS grew: {first / MB:.1f} MB -> {last / MB:.1f} MB"
        first, last = quartile_medians(fds)
        assert last <= first + 16, f"{what} fds grew: {first} -> {last}"
