"""tasksd against supervisord and runit (issue #8): the same N `sleep` programs under each, side by side, one run.

    sudo .venv/bin/python bench/peers.py [--n 100,1000] [--idle 30] [--restarts 20] [--adds 5] [--spawn-n 50]
                                         [--no-install]

Per N and per supervisor: time until all N run (each supervisor is started with the N programs already
configured), idle CPU (over a window that opens 2 s after all run, for every supervisor), memory of the
supervisor itself at rest (RSS and PSS read after the idle window, so a
burst's garbage that an allocator gives back has been given back; per task = PSS / N), restart latency after
SIGKILL of one program (median), latency to pick up a newly added program. Then the isolated start rows (tasksd
exec/exec2 vs bwrap, unshare(1) and a plain spawn) from bench/spawn.py's measure(). One markdown table.

How each is observed (the differences matter when reading the table):
- tasksd: /v1/tasks for "all running"; restart and pick-up from the daemon's event stream, so they have no polling
  error: pick-up until the daemon recorded the `started` event; restart until the new process had exec'd (the
  event's started_at: the launcher restarts these itself, see bench/converge.py running_again). Tasks are
  raw_exec with restart delay 0.
- supervisord (pip `supervisor`, installed into this venv when missing): XML-RPC on its unix socket, polled.
  Programs have `startsecs=0` so a program counts as RUNNING once spawned, as in tasksd. Pick-up is what an
  operator runs: a new file in the include dir, then `supervisorctl reread` and `supervisorctl update`.
- runit (Debian `runit`, apt-get installed when missing): `sv status` on all service dirs for "all running";
  restart by polling `supervise/pid` (the file runsv rewrites on every start; every 0.2 ms, so that the poll adds
  little to runit's figure); pick-up by symlinking a new service
  dir into the scanned dir (runsvdir rescans every 5 s). runsvdir holds at most 1000 services: when N + 1 would
  exceed that, one service is removed (outside the timing) before each pick-up sample.
Polled latencies include up to one poll of error (1 ms; 0.2 ms for runit's restart).

Everything lives in temp dirs; supervisord, runsvdir, every program and the tasksd daemon are stopped at the end
(also on failure), and any process they leave behind is killed by pid.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import converge  # noqa: E402
import spawn  # noqa: E402

SLEEP = "100000"
RUNIT_MAX = 1000  # runsvdir.c: MAXSERVICES
POLL = 0.001
FINE_POLL = 0.0002  # runit's restart: its figure is near 1 ms, where a 1 ms poll would be half of it
REFERENCE = {  # issue #8, "from this machine kind"
    ("all_running_s", "supervisord"): "7.9 s (1000)",
    ("pss_mb", "supervisord"): "28 MB PSS",
    ("idle_cpu_pct", "supervisord"): "0.6 %",
    ("restart_ms", "supervisord"): "33 ms",
    ("pickup_ms", "supervisord"): "425 ms",
    ("all_running_s", "runit"): "3.9 s (999)",
    ("rss_per_task_kb", "runit"): "1.3 MB per service",  # RSS: runsv pages shared by all count N times
    ("restart_ms", "runit"): "5 ms",
    ("pickup_ms", "runit"): "3.7 s",
}
MEASURES = [  # key, label, format
    ("all_running_s", "time until all run (s)", ".2f"),
    ("rss_mb", "supervisor RSS (MB)", ".1f"),
    ("pss_mb", "supervisor PSS (MB)", ".1f"),
    ("rss_per_task_kb", "supervisor RSS per task (KB)", ".0f"),
    ("per_task_kb", "supervisor PSS per task (KB)", ".0f"),
    ("idle_cpu_pct", "idle CPU (%)", ".3f"),
    ("restart_ms", "restart after SIGKILL, median (ms)", ".1f"),
    ("pickup_ms", "pick up a new program, median (ms)", ".0f"),
]


@dataclass(frozen=True)
class Options:
    idle: float
    restarts: int
    adds: int
    install: bool


@dataclass(frozen=True)
class Result:
    peer: str
    n: int
    values: dict  # measure key -> float (a missing key: not measured, see note)
    running: int = 0
    note: str = ""


def deadline_wait(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def memory(procs: Iterable[psutil.Process]) -> tuple[float, float]:
    rss = pss = 0
    for p in procs:
        try:
            m = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += m.rss
        pss += m.pss
    return rss / 2**20, pss / 2**20


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


SETTLE = 2.0  # seconds after "all running" before the idle window opens, for every supervisor alike


def idle_cpu(procs_fn: Callable[[], list[psutil.Process]], seconds: float) -> float:
    """CPU share over `seconds` of quiet, once the start burst has settled: what a supervisor does right after
    starting N programs is part of the start, not of its idle cost: tasksd makes its two spare alloc dirs 0.1 s
    after the burst and gives the burst's freed heap back (malloc_trim) 1 s after it, together under 10 ms, which
    at N=100 showed as one clock tick (0.033 %) in a window that opened at once."""
    time.sleep(SETTLE)  # a fixed pause by design: the window must open at the same point for every peer
    procs = procs_fn()
    c0, w0 = cpu_seconds(procs), time.perf_counter()
    time.sleep(seconds)  # the measurement window itself, not a wait for a condition
    return 100 * (cpu_seconds(procs) - c0) / (time.perf_counter() - w0)


def kill_leftovers(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL processes we started that are still alive (psutil checks the start time, so no pid reuse)."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.wait(10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
            pass


def last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]


# ---- installing the peers ----------------------------------------------------------------------------------
def ensure_supervisor(install: bool) -> str:
    """'' when supervisor is importable (installing it into this venv if allowed), else why not."""
    try:
        importlib.import_module("supervisor.xmlrpc")
        return ""
    except ImportError:
        pass
    if not install:
        return "supervisor is not installed (installation not requested)"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "supervisor"], capture_output=True,
                          text=True)
    importlib.invalidate_caches()
    try:
        importlib.import_module("supervisor.xmlrpc")
        return ""
    except ImportError:
        return f"pip install supervisor failed (exit {proc.returncode}): {last_line(proc)}"


def find_runit(install: bool) -> tuple[dict[str, str], str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"

    def lookup() -> dict[str, str]:
        found = {b: shutil.which(b, path=path) for b in ("runsvdir", "runsv", "sv")}
        return found if all(found.values()) else {}

    found = lookup()
    if found:
        return found, ""
    if not install:
        return {}, "runit is not installed (installation not requested)"
    if not shutil.which("apt-get"):
        return {}, "runit is not installed and there is no apt-get"
    proc = subprocess.run(["apt-get", "install", "-y", "runit"], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = lookup()
    if found:
        return found, ""
    return {}, f"apt-get install runit failed (exit {proc.returncode}): {last_line(proc)}"


# ---- tasksd ------------------------------------------------------------------------------------------------
def run_tasksd(n: int, opts: Options) -> Result:
    root = spawn.bench_tempdir("tasksd-bench-peers-")
    os.chmod(root, 0o755)
    b = converge.Bench(root)
    values: dict[str, float] = {}
    try:
        converge.write_all(b, n)
        t0 = time.time()
        b.start()
        # From tasksd's own `started` events (the stream replays from the daemon's start), not by listing every
        # task each 10 ms, which loaded the daemon in the window being measured.
        values["all_running_s"] = b.wait_started({f"j{i}/g/0/t" for i in range(n)}, t0, timeout=600) - t0
        running = b.running()
        if running < n:
            raise RuntimeError(f"every tasksd task started, yet {n - running} are not running")

        values["idle_cpu_pct"] = idle_cpu(b.procs, opts.idle)
        values["rss_mb"], values["pss_mb"] = b.memory()
        values["per_task_kb"] = values["pss_mb"] * 1024 / n
        values["rss_per_task_kb"] = values["rss_mb"] * 1024 / n

        tasks = {t["id"]: t for t in b.client.get("/v1/tasks")["tasks"]}
        lat = []
        for i in range(min(opts.restarts, n)):
            tid = f"j{i}/g/0/t"
            t = time.time()
            os.kill(tasks[tid]["pid"], signal.SIGKILL)
            ev = b.wait_event("started", tid, t)
            lat.append((converge.running_again(ev) - t) * 1000)
        values["restart_ms"] = statistics.median(lat)

        lat = []
        for i in range(opts.adds):
            name = f"new{i}"
            tmp = b.tasks_dir / f".{name}.tmp"
            tmp.write_text(converge.manifest(name, SLEEP))
            t = time.time()
            os.replace(tmp, b.tasks_dir / f"{name}.hcl")
            ev = b.wait_event("started", f"{name}/g/0/t", t)
            lat.append((ev["ts"] - t) * 1000)
        if lat:
            values["pickup_ms"] = statistics.median(lat)
        return Result("tasksd", n, values, n)
    finally:
        if b.proc is not None:
            b.drain()
        shutil.rmtree(root, ignore_errors=True)


# ---- supervisord -------------------------------------------------------------------------------------------
def supervisor_program(name: str) -> str:
    # startsecs=0: RUNNING as soon as spawned, the moment tasksd calls a task running.
    return (f"[program:{name}]\ncommand=/bin/sleep {SLEEP}\nautostart=true\nautorestart=true\nstartsecs=0\n"
            "startretries=100\nstopwaitsecs=5\n")


class Supervisord:
    def __init__(self, root: Path, n: int):
        self.root = root
        self.conf = root / "supervisord.conf"
        self.sock = root / "supervisor.sock"
        self.include = root / "conf.d"
        self.include.mkdir()
        (root / "logs").mkdir()
        self.conf.write_text(
            f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n\n"
            f"[supervisord]\nlogfile={root / 'supervisord.log'}\npidfile={root / 'supervisord.pid'}\n"
            f"childlogdir={root / 'logs'}\nnodaemon=true\nuser=root\nminfds={max(1024, 8 * n + 1024)}\n"
            f"minprocs={max(200, 2 * n + 200)}\nloglevel=warn\n\n"
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{self.sock}\n\n"
            f"[include]\nfiles = {self.include}/*.conf\n")
        self.proc: subprocess.Popen | None = None
        self.started: list[psutil.Process] = []

    def write_program(self, name: str) -> None:
        tmp = self.include / f".{name}.tmp"
        tmp.write_text(supervisor_program(name))
        os.replace(tmp, self.include / f"{name}.conf")

    def rpc(self):
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr", "ab"))
        self.started.append(psutil.Process(self.proc.pid))

    def running(self) -> int:
        try:
            info = self.rpc().supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            if self.proc.poll() is not None:
                raise SystemExit(f"supervisord died: {(self.root / 'stderr').read_text()[-2000:]}")
            return 0
        return sum(1 for p in info if p["statename"] == "RUNNING")

    def pid_of(self, server, name: str) -> int:
        return server.supervisor.getProcessInfo(name)["pid"]

    def procs(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid)]

    def ctl(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                       check=True, capture_output=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.started.extend(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()  # supervisord stops every program, then exits
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                pass
        kill_leftovers(self.started)
        if self.proc.poll() is None:
            self.proc.wait()


def run_supervisord(n: int, opts: Options, why_not: str) -> Result:
    if why_not:
        return Result("supervisord", n, {}, note=why_not)
    root = spawn.bench_tempdir("tasksd-bench-peers-")
    s = Supervisord(root, n)
    values: dict[str, float] = {}
    try:
        for i in range(n):
            s.write_program(f"p{i}")
        t0 = time.perf_counter()
        s.start()
        deadline_wait(lambda: s.running() >= n, 600, f"{n} supervisord programs running", 0.02)
        values["all_running_s"] = time.perf_counter() - t0

        values["idle_cpu_pct"] = idle_cpu(s.procs, opts.idle)
        values["rss_mb"], values["pss_mb"] = memory(s.procs())
        values["per_task_kb"] = values["pss_mb"] * 1024 / n
        values["rss_per_task_kb"] = values["rss_mb"] * 1024 / n

        server = s.rpc()
        lat = []
        for i in range(min(opts.restarts, n)):
            name = f"p{i}"
            old = s.pid_of(server, name)
            t = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            while s.pid_of(server, name) in (old, 0):
                time.sleep(POLL)
            lat.append((time.perf_counter() - t) * 1000)
        values["restart_ms"] = statistics.median(lat)

        lat = []
        for i in range(opts.adds):
            name = f"new{i}"
            t = time.perf_counter()
            s.write_program(name)
            s.ctl("reread")
            s.ctl("update")
            deadline_wait(lambda: _supervisor_pid(server, name) > 0, 60, f"supervisord to start {name}", POLL)
            lat.append((time.perf_counter() - t) * 1000)
        if lat:
            values["pickup_ms"] = statistics.median(lat)
        return Result("supervisord", n, values, n)
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


def _supervisor_pid(server, name: str) -> int:
    try:
        return server.supervisor.getProcessInfo(name)["pid"]
    except xmlrpc.client.Fault:  # BAD_NAME until `update` has added the group
        return 0


# ---- runit -------------------------------------------------------------------------------------------------
class Runit:
    def __init__(self, root: Path, bins: dict[str, str]):
        self.bins = bins
        self.root = root
        self.svdir = root / "service"  # what runsvdir scans: symlinks to the service dirs
        self.store = root / "sv"
        self.svdir.mkdir()
        self.store.mkdir()
        self.proc: subprocess.Popen | None = None
        self.started: list[psutil.Process] = []

    def make(self, name: str) -> Path:
        d = self.store / name
        d.mkdir()
        run = d / "run"
        run.write_text(f"#!/bin/sh\nexec /bin/sleep {SLEEP}\n")
        run.chmod(0o755)
        return d

    def link(self, name: str) -> None:
        os.symlink(self.store / name, self.svdir / name)

    def start(self) -> None:
        env = {**os.environ, "PATH": f"{Path(self.bins['runsv']).parent}:{os.environ.get('PATH', '')}"}
        self.proc = subprocess.Popen([self.bins["runsvdir"], "-P", str(self.svdir)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr", "ab"))
        self.started.append(psutil.Process(self.proc.pid))

    def running(self, names: list[str]) -> int:
        out = subprocess.run([self.bins["sv"], "status", *(str(self.svdir / n) for n in names)],
                             capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.startswith("run:"))

    def pid(self, name: str) -> int:
        try:
            text = (self.store / name / "supervise" / "pid").read_text().strip()
        except OSError:
            return 0
        return int(text) if text else 0

    def procs(self) -> list[psutil.Process]:
        """runsvdir and every runsv (not the programs)."""
        main = psutil.Process(self.proc.pid)
        return [main] + [c for c in main.children() if c.name() == "runsv"]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.started.extend(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            # HUP: runsvdir sends TERM to every runsv and exits; runsv on TERM stops its service, then exits.
            self.proc.send_signal(signal.SIGHUP)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 60
        while any(p.is_running() for p in self.started) and time.monotonic() < end:
            time.sleep(0.05)
        kill_leftovers(self.started)
        if self.proc.poll() is None:
            self.proc.wait()


def run_runit(n: int, opts: Options, bins: dict[str, str], why_not: str) -> Result:
    if why_not:
        return Result("runit", n, {}, note=why_not)
    root = spawn.bench_tempdir("tasksd-bench-peers-")
    r = Runit(root, bins)
    values: dict[str, float] = {}
    notes = []
    names = [f"s{i}" for i in range(n)]
    try:
        for name in names:
            r.make(name)
            r.link(name)
        t0 = time.perf_counter()
        r.start()
        # runsvdir caps services (MAXSERVICES): wait for all, or until the count stops growing over two scans.
        best, best_t, last_change = 0, None, time.monotonic()
        while True:
            now_running = r.running(names)
            if now_running > best:
                best, best_t, last_change = now_running, time.perf_counter() - t0, time.monotonic()
            if best >= n or time.monotonic() - last_change > 12:
                break
            time.sleep(0.02)
        if best < n:
            notes.append(f"only {best} of {n} services ran (runsvdir MAXSERVICES = {RUNIT_MAX})")
        if best and best_t is not None:
            values["all_running_s"] = best_t

        values["idle_cpu_pct"] = idle_cpu(r.procs, opts.idle)
        values["rss_mb"], values["pss_mb"] = memory(r.procs())
        values["per_task_kb"] = values["pss_mb"] * 1024 / max(best, 1)
        values["rss_per_task_kb"] = values["rss_mb"] * 1024 / max(best, 1)

        lat = []
        live = [nm for nm in names if r.pid(nm)]
        for name in live[:opts.restarts]:
            old = r.pid(name)
            t = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            deadline_wait(lambda: r.pid(name) not in (old, 0), 30, f"runsv to restart {name}", FINE_POLL)
            lat.append((time.perf_counter() - t) * 1000)
        if lat:
            values["restart_ms"] = statistics.median(lat)

        lat = []
        for i in range(opts.adds):
            if len(list(r.svdir.iterdir())) + 1 > RUNIT_MAX - 1:
                # Make room outside the timing: drop one service and wait for its runsv to be gone.
                victim = sorted(r.svdir.iterdir())[-1].name
                runsv = [p for p in r.procs()[1:] if p.cmdline()[-1:] == [victim]]
                (r.svdir / victim).unlink()
                for p in runsv:
                    p.wait(30)
                if i == 0:
                    notes.append("services removed before each pick-up to stay under MAXSERVICES")
            name = f"new{i}"
            r.make(name)
            t = time.perf_counter()
            r.link(name)
            deadline_wait(lambda: r.pid(name) > 0, 30, f"runsvdir to start {name}", POLL)
            lat.append((time.perf_counter() - t) * 1000)
        if lat:
            values["pickup_ms"] = statistics.median(lat)
        return Result("runit", n, values, best, "; ".join(notes))
    finally:
        r.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---- isolated start ----------------------------------------------------------------------------------------
def isolated_rows(spawn_n: int, install: bool) -> list[tuple[str, str, float | None, str, float | None, str]]:
    """(measure, tasksd way, tasksd ms, peer, peer ms, note) for exec/exec2 against bwrap, unshare, plain spawn."""
    rows = {r.way: r for r in spawn.measure(spawn_n, max(2, spawn_n // 10), install_bwrap=install)}
    out = []
    for driver in ("exec", "exec2"):
        mine = rows[spawn.full_row(driver)]
        for peer in (spawn.BWRAP, spawn.UNSHARE, spawn.BASELINE):
            other = rows[peer]
            note = "; ".join(x for x in (mine.note, other.note) if x)
            out.append(("isolated start, start+wait /bin/true (ms)", f"{driver}", mine.median_ms, peer,
                        other.median_ms, note))
    return out


# ---- the table ---------------------------------------------------------------------------------------------
def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def render(results: list[Result], iso: list, args_line: str) -> str:
    lines = [f"Command: `{args_line}` (kernel {os.uname().release}, {os.cpu_count()} cpus). "
             "Lower is better everywhere; `tasksd ÷ peer` < 1 means tasksd is ahead.", "",
             "| N | measure | tasksd | peer | peer value | tasksd ÷ peer | reference (issue #8) |",
             "|---:|---|---:|---|---:|---:|---|"]
    by_n: dict[int, dict[str, Result]] = {}
    for r in results:
        by_n.setdefault(r.n, {})[r.peer] = r
    for n, peers in by_n.items():
        mine = peers.get("tasksd")
        for key, label, spec in MEASURES:
            t = mine.values.get(key) if mine else None
            for peer in ("supervisord", "runit"):
                p = peers.get(peer)
                pv = p.values.get(key) if p else None
                shown_n = f"{n}" if not (p and p.running and p.running < n) else f"{n} ({p.running} ran)"
                lines.append(f"| {shown_n} | {label} | {fmt(t, spec)} | {peer} | {fmt(pv, spec)} | "
                             f"{ratio(t, pv)} | {REFERENCE.get((key, peer), '')} |")
    for measure, way, t, peer, pv, _ in iso:
        ref = "bwrap 4.4 ms" if peer == spawn.BWRAP else ""
        lines.append(f"| - | {measure}: tasksd {way} | {fmt(t, '.2f')} | {peer} | {fmt(pv, '.2f')} | "
                     f"{ratio(t, pv)} | {ref} |")
    notes = [f"- {r.peer} at N={r.n}: {r.note}" for r in results if r.note]
    notes += [f"- isolated start {way} vs {peer}: {note}" for _, way, _, peer, _, note in iso if note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="100,1000", help="program counts, comma separated (default 100,1000)")
    ap.add_argument("--idle", type=float, default=30.0, help="idle CPU window in seconds (default 30)")
    ap.add_argument("--restarts", type=int, default=20, help="SIGKILL restarts per supervisor (default 20)")
    ap.add_argument("--adds", type=int, default=5, help="new programs added per supervisor (default 5)")
    ap.add_argument("--spawn-n", type=int, default=50, help="isolated start samples per way (default 50)")
    ap.add_argument("--no-install", action="store_true", help="do not pip/apt-get install missing peers")
    spawn.add_state_root_option(ap)
    args = ap.parse_args(argv)
    spawn.apply_state_root(args)
    if os.geteuid() != 0:
        print("bench/peers.py needs root (cgroups, namespaces, mounts)", file=sys.stderr)
        return 2
    opts = Options(idle=args.idle, restarts=args.restarts, adds=args.adds, install=not args.no_install)
    sup_why = ensure_supervisor(opts.install)
    runit_bins, runit_why = find_runit(opts.install)
    results: list[Result] = []
    for n in (int(x) for x in args.n.split(",")):
        # One supervisor at a time so they never compete for the CPUs; same N, same machine, same run.
        for run_one in (lambda: run_tasksd(n, opts), lambda: run_supervisord(n, opts, sup_why),
                        lambda: run_runit(n, opts, runit_bins, runit_why)):
            results.append(run_one())
            # Progress on stderr: a long run that fails late still leaves the rows it finished.
            print(f"{results[-1]}", file=sys.stderr, flush=True)
    iso = isolated_rows(args.spawn_n, opts.install) if args.spawn_n > 0 else []
    shown = " ".join(["bench/peers.py", *(argv if argv is not None else sys.argv[1:])])
    print(render(results, iso, shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
