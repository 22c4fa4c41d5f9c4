"""Converge costs of the real daemon (issue #5): time until N raw_exec `sleep` tasks run, drop-one latency,
restart latency after SIGKILL (restart delay 0), tasksd's memory (RSS and PSS of daemon + launcher), idle CPU, and
re-adoption time after `kill -9` of tasksd.

    python bench/converge.py [--n 100,1000] [--idle 30] [--drops 20]

Run as root. Everything lives in a temp dir and a cgroup parent below our own cgroup; the daemon is drained at the
end (tasks stopped, launcher gone). Latencies are taken from the daemon's own event stream, not from polling: a
drop-one until the daemon recorded the `started` event; a restart until the new process had exec'd (the event's
started_at, see running_again), and also until the daemon recorded it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.spawn import add_state_root_option, apply_state_root, bench_tempdir, compile_tree  # noqa: E402
from controller.client import Client, ClientError  # noqa: E402
from isolation.launcher_proto import is_launcher_cmdline  # noqa: E402


def manifest(name: str, args: str = "100000") -> str:
    return (f'job "{name}" {{\n  group "g" {{\n    restart {{\n      attempts = 10\n      delay = "0s"\n'
            f'      interval = "5m"\n      mode = "delay"\n    }}\n'
            f'    task "t" {{\n      driver = "raw_exec"\n      config {{\n        command = "/bin/sleep"\n'
            f'        args = ["{args}"]\n      }}\n      resources {{\n        memory = 16\n      }}\n'
            f'      logs {{\n        max_files = 2\n        max_file_size = 1\n      }}\n    }}\n  }}\n}}\n')


class Bench:
    def __init__(self, root: Path):
        compile_tree()  # before any clock starts: what an installed tasksd has from pip
        self.root = root
        self.tasks_dir = root / "tasks.d"
        self.tasks_dir.mkdir()
        self.state = root / "state"
        self.sock = str(root / "tasksd.sock")
        self.cgroup_parent = f"tasksd-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (root / "config.hcl").write_text(
            f'client {{\n cgroup_parent = "{self.cgroup_parent}"\n gc_grace = "1s"\n resync_interval = "5m"\n}}\n'
            'plugin "raw_exec" {\n config {\n enabled = true\n }\n}\n')
        self.proc: subprocess.Popen | None = None
        self.client = Client(self.sock, timeout=120)
        self.events: list[dict] = []
        self._cv = threading.Condition()

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.daemon_main", "--config", str(self.root / "config.hcl"),
             "--tasks-dir", str(self.tasks_dir), "--state-dir", str(self.state), "--socket", self.sock,
             "--log-level", "warning"],
            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=open(self.root / "log", "ab"))
        while True:
            try:
                if self.client.get("/v1/health")["ready"]:
                    break
            except (ClientError, OSError):
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"tasksd died: {(self.root / 'log').read_text()[-2000:]}")
            time.sleep(0.005)
        t = time.perf_counter() - t0
        threading.Thread(target=self._follow, daemon=True).start()
        return t

    def _follow(self) -> None:
        try:
            after = max((e["id"] for e in self.events), default=0)
            buf = b""
            for chunk in self.client.stream(f"/v1/events?follow=1&after={after}"):
                # A read can end mid-line: only whole lines are parsed, the rest waits for the next chunk.
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        ev = json.loads(line)
                        ev["seen"] = time.time()
                        with self._cv:
                            self.events.append(ev)
                            self._cv.notify_all()
        except (ClientError, OSError, http.client.HTTPException):
            pass  # the daemon went away (kill -9, drain); anything else is a bug here and must show

    def wait_event(self, type_: str, task_id: str, after_ts: float, timeout: float = 60) -> dict:
        def find():
            return next((e for e in self.events if e["type"] == type_ and e["task_id"] == task_id
                         and e["ts"] >= after_ts), None)

        with self._cv:
            if not self._cv.wait_for(find, timeout):
                raise TimeoutError(f"no {type_} event for {task_id}")
            return find()

    def wait_started(self, ids: set[str], after_ts: float, timeout: float) -> float:
        """Wait for a `started` event of each task in `ids`; returns the daemon's timestamp of the last one."""
        seen: dict[str, float] = {}
        done = 0  # events already looked at
        deadline = time.monotonic() + timeout
        while len(seen) < len(ids):
            # A short wait instead of one per event: the check stays off the CPU the daemon is using.
            time.sleep(0.05)
            with self._cv:
                new, done = self.events[done:], len(self.events)
            for e in new:
                if e["type"] == "started" and e["task_id"] in ids and e["ts"] >= after_ts:
                    seen[e["task_id"]] = e["ts"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)} of {len(ids)} tasks started within {timeout} s")
        return max(seen.values())

    def running(self) -> int:
        return sum(1 for t in self.client.get("/v1/tasks")["tasks"] if t["state"] == "running")

    def procs(self) -> list[psutil.Process]:
        main = psutil.Process(self.proc.pid)
        out = [main]
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if is_launcher_cmdline(cmd) and str(self.state) in cmd:
                out.append(p)
        return out

    def memory(self) -> tuple[float, float]:
        rss = pss = 0
        for p in self.procs():
            m = p.memory_full_info()
            rss += m.rss
            pss += m.pss
        return rss / 2**20, pss / 2**20

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs())

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def drain(self) -> None:
        try:
            self.client.post("/v1/drain")
            self.proc.wait(600)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        from isolation import cgroups

        cgroups.CgroupManager(cgroups.detect(), self.cgroup_parent).remove_parent()


def running_again(ev: dict) -> float:
    """When the process of a `started` event had exec'd: its started_at, stamped by whoever started it (the
    launcher, for a restart it made itself; else the driver, on the spawn's reply). The event's own ts is when the
    daemon recorded it, later by a hand-over to its loop and a store write."""
    return (ev.get("details") or {}).get("started_at") or ev["ts"]


def write_all(b: Bench, n: int) -> None:
    for i in range(n):
        tmp = b.tasks_dir / f".j{i}.tmp"
        tmp.write_text(manifest(f"j{i}"))
        os.replace(tmp, b.tasks_dir / f"j{i}.hcl")


def run(n: int, idle: float, drops: int) -> dict:
    root = bench_tempdir("tasksd-bench-")
    os.chmod(root, 0o755)
    b = Bench(root)
    out: dict = {"n": n}
    try:
        b.start()
        t0 = time.time()
        write_all(b, n)
        # Counted from the event stream, not by polling /v1/tasks: listing 1000 tasks every few ms cost the daemon
        # a tenth of its CPU in this very window.
        last = b.wait_started({f"j{i}/g/0/t" for i in range(n)}, t0, timeout=600)
        out["all_running_s"] = last - t0
        assert b.running() == n, "every task started, yet not all are running"

        lat = []
        for i in range(drops):
            name = f"drop{i}"
            tmp = b.tasks_dir / f".{name}.tmp"
            tmp.write_text(manifest(name))
            t = time.time()
            os.replace(tmp, b.tasks_dir / f"{name}.hcl")
            ev = b.wait_event("started", f"{name}/g/0/t", t)
            lat.append((ev["ts"] - t) * 1000)
        out["drop_one_median_ms"] = statistics.median(lat)
        out["drop_one_p95_ms"] = sorted(lat)[max(0, int(len(lat) * 0.95) - 1)]

        rl, rd = [], []
        tasks = {t["id"]: t for t in b.client.get("/v1/tasks")["tasks"]}
        for i in range(min(drops, n)):
            tid = f"j{i}/g/0/t"
            t = time.time()
            os.kill(tasks[tid]["pid"], 9)
            ev = b.wait_event("started", tid, t)
            rl.append((running_again(ev) - t) * 1000)
            rd.append((ev["ts"] - t) * 1000)
        out["restart_median_ms"] = statistics.median(rl)
        out["restart_recorded_median_ms"] = statistics.median(rd)

        # The same after 0.2 s of quiet before each kill. The first cgroup migration after a quiet spell waits
        # for an RCU grace period in the kernel (cgroup_threadgroup_rwsem; see the README), which back-to-back
        # restarts above never see.
        rl = []
        for i in range(min(drops, n)):
            tid = f"j{i}/g/0/t"
            pid = next(t["pid"] for t in b.client.get("/v1/tasks")["tasks"] if t["id"] == tid)
            time.sleep(0.2)
            t = time.time()
            os.kill(pid, 9)
            ev = b.wait_event("started", tid, t)
            rl.append((running_again(ev) - t) * 1000)
        out["restart_idle_median_ms"] = statistics.median(rl)

        time.sleep(2)  # let the restarts above settle before sampling idle cost
        rss, pss = b.memory()
        out["rss_mb"], out["pss_mb"] = rss, pss
        c0, w0 = b.cpu_seconds(), time.perf_counter()
        time.sleep(idle)
        out["idle_cpu_pct"] = 100 * (b.cpu_seconds() - c0) / (time.perf_counter() - w0)

        pids = {t["id"]: t["pid"] for t in b.client.get("/v1/tasks")["tasks"]}
        b.kill9()
        out["readopt_s"] = b.start()
        after = {t["id"]: t["pid"] for t in b.client.get("/v1/tasks")["tasks"]}
        out["readopt_restarted"] = sum(1 for k, v in pids.items() if after.get(k) != v)
    finally:
        b.drain()
        shutil.rmtree(root, ignore_errors=True)
    return out


def cpu_reference() -> float:
    """Seconds for 10 million additions in CPython: a yardstick printed with the table, since the figures of two
    runs on this shared VM compare only at similar machine speed."""
    t0 = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="100,1000")
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--drops", type=int, default=20)
    add_state_root_option(ap)
    args = ap.parse_args(argv)
    apply_state_root(args)
    cpu_before = cpu_reference()
    rows = [run(int(n), args.idle, args.drops) for n in args.n.split(",")]
    cpu_after = cpu_reference()
    print("| N | all running (s) | drop-one median (ms) | drop-one p95 (ms) | restart after SIGKILL, delay 0 (ms) "
          "| same, recorded by tasksd (ms) | same after 0.2 s quiet (ms) | RSS daemon+launcher (MB) | PSS (MB) "
          "| idle CPU (%) | re-adoption after kill -9 (s) | restarted |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['all_running_s']:.2f} | {r['drop_one_median_ms']:.1f} | {r['drop_one_p95_ms']:.1f} "
              f"| {r['restart_median_ms']:.1f} | {r['restart_recorded_median_ms']:.1f} "
              f"| {r['restart_idle_median_ms']:.1f} | {r['rss_mb']:.1f} "
              f"| {r['pss_mb']:.1f} | {r['idle_cpu_pct']:.2f} "
              f"| {r['readopt_s']:.2f} | {r['readopt_restarted']} |")
    print(f"\nMachine speed in this run (a fixed pure-Python loop, before and after; the shared VM's speed varies "
          f"by 2x and more over a day, and every figure above moves with it): {cpu_before:.2f} s, {cpu_after:.2f} s.")
    print("\nTargets (issue #5): 1000 running within 3 s; drop-one median < 20 ms; restart within 5 ms + delay; "
          "PSS <= supervisord's 28 MB; idle CPU <= 0.1%; re-adoption < 2 s with no restart.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
