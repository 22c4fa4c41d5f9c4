"""Start cost of a task, tasksd's three drivers against plain spawns, unshare(1) and bubblewrap, in one run.

    sudo .venv/bin/python bench/spawn.py [--n 200] [--warmup 20] [--no-install]

Prints one markdown table of medians and 95th percentiles (ms) over N runs per way after a warm-up. The ways
run interleaved (one sample of each per round, order rotated every round) so that drift of the machine during
the run hits every row alike.

For tasksd two numbers come from the same sample:
- "start -> running": from the `driver.start(ctx)` call until it returns a handle with a pid. The launcher
  replies only once the child's CLOEXEC error pipe closed, i.e. after a successful execve.
- "start+wait /bin/true": until the exit of /bin/true reached the caller. This is the like-for-like row for
  `subprocess.run`, unshare(1) and bwrap, which all run /bin/true to completion.
Each sample is a fresh task instance (its own alloc dir, cgroup and task dir); it is destroyed and its alloc
dir removed between samples, outside the timed region. Each driver is sampled twice per round: with a spare
alloc dir ready (isolation.spares; the daemon has one whenever it was quiet for 0.1 s, so this is a single start
as the daemon does it), and with none ("no spare dir": a start in a burst that used the spares up, which makes its
ten directories itself). The spares are made between samples, outside the timed region, as the daemon makes them
while idle.

Targets (issues #3 and #4): raw_exec within 3x of subprocess.run; exec and exec2 within 1.5x of bwrap.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from statistics import median
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    # Run as a script: import tasksd from the source tree this file lives in.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isolation.drivers import make_drivers  # noqa: E402
from isolation.drivers.base import TaskContext  # noqa: E402
from isolation.runtime import Runtime  # noqa: E402
from isolation.taskdir import alloc_id_for, remove_alloc  # noqa: E402
from manifests.agent_config import AgentConfig, RawExecPlugin  # noqa: E402
from manifests.model import Exec2Config, ExecConfig, Group, Job, Network, RawExecConfig, Task  # noqa: E402

BASELINE = "subprocess.run(['/bin/true'])"
BWRAP = "bwrap --ro-bind / / --unshare-all true"
UNSHARE = "unshare --pid --fork --mount --ipc --uts /bin/true"
POSIX_SPAWN = "os.posix_spawn + waitpid"
DRIVER_CONFIGS = {"raw_exec": RawExecConfig, "exec": ExecConfig, "exec2": Exec2Config}
RAW_EXEC_TARGET = 3.0  # x subprocess.run
ISOLATED_TARGET = 1.5  # x bwrap


def _way(driver: str, spare: bool) -> str:
    return f"tasksd {driver}" + ("" if spare else ", no spare dir")


def start_row(driver: str, spare: bool = True) -> str:
    return f"{_way(driver, spare)}: start -> running"


def full_row(driver: str, spare: bool = True) -> str:
    return f"{_way(driver, spare)}: start+wait /bin/true"


def _driver_of(way: str) -> str | None:
    for d in ("raw_exec", "exec2", "exec"):
        if way.startswith((f"tasksd {d}:", f"tasksd {d},")):
            return d
    return None


@dataclass(frozen=True)
class Row:
    way: str
    median_ms: float | None  # None: this way could not run here (see note)
    p95_ms: float | None
    vs_baseline: float | None
    vs_bwrap: float | None
    target: str  # "met", "missed", "n/a" or "" when no target applies
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: always one of the measured values, no interpolation between them."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least the first sample
    return ordered[int(rank) - 1]


# ---- where benches keep their state -------------------------------------------------------------------------
def bench_tempdir(prefix: str) -> Path:
    """A new directory for one bench's state dir, where tasksd keeps its own: under /var/lib (the default state dir
    is /var/lib/tasksd), or TASKSD_BENCH_ROOT (--state-root). Every start makes ten directories there, so the
    place matters: on the test VM an ext4 mkdir in /tmp, where the test suite churns, took 135-210 us against 15-32
    us in /var/lib or /root on the same filesystem, which alone moved a raw_exec start by 1.5 ms. (The VM's ext4
    has no journal, and its inode allocator then skips every inode freed in the last minutes, block group by block
    group: see the README's converge notes. A bench's own churn slows its later runs in the same place too.)"""
    root = os.environ.get("TASKSD_BENCH_ROOT") or ("/var/lib" if os.access("/var/lib", os.W_OK) else None)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def add_state_root_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--state-root", help="directory the bench's state dirs are made in (default /var/lib, where "
                    "tasksd's state dir lives; also TASKSD_BENCH_ROOT)")


def apply_state_root(args: argparse.Namespace) -> None:
    if args.state_root:
        os.environ["TASKSD_BENCH_ROOT"] = args.state_root  # the environment reaches every module copy and child


def compile_tree() -> None:
    """Byte-compile tasksd's packages in the source tree the benches run, as pip does when it installs them.

    Benches start the daemon and the launcher from this tree. Without __pycache__ (PYTHONDONTWRITEBYTECODE is set
    on the test VMs) every start compiled ~75 modules from source first: ~0.15 s of the daemon's 0.37 s to ready,
    which an installed tasksd (and supervisord, installed by pip) never pays. compileall writes regardless of that
    variable and recompiles only what changed."""
    import compileall

    repo = Path(__file__).resolve().parent.parent
    for pkg in ("controller", "isolation", "manifests", "reconcilers"):
        if not compileall.compile_dir(repo / pkg, quiet=1):
            raise RuntimeError(f"cannot byte-compile {repo / pkg}")


# ---- the bench runtime -------------------------------------------------------------------------------------
class BenchRuntime:
    """A tasksd Runtime (launcher, cgroup parent below our own cgroup) in a temp state dir, fully torn down.

    Used as a context manager; `run_true` starts one fresh task instance per call.
    """

    def __init__(self, config: AgentConfig | None = None, cgroup_parent: str | None = None,
                 workdir: Path | None = None, spare_dirs: int = 1):
        self.config = config or AgentConfig(raw_exec=RawExecPlugin(enabled=True))
        self.cgroup_parent = cgroup_parent or f"tasksd-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._own_workdir = workdir is None
        self.workdir = bench_tempdir(f"tasksd-bench-{os.getpid()}-") if workdir is None else Path(workdir)
        # mkdtemp makes it 0700, which would stop exec2's dynamic users from reaching their task dirs; a real
        # state dir (/var/lib/tasksd) is traversable.
        os.chmod(self.workdir, 0o711)
        self.runtime: Runtime | None = None
        self.drivers: dict = {}
        self._drivers_by_config: dict[AgentConfig, dict] = {}
        self._index = 0
        self.spare_dirs = spare_dirs

    def __enter__(self) -> "BenchRuntime":
        try:
            self.runtime = Runtime(self.workdir / "state", cgroup_parent=self.cgroup_parent,
                                   spare_dirs=self.spare_dirs)
            self.runtime.open()
            self.drivers = make_drivers(self.runtime, self.config)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def driver(self, name: str, agent: AgentConfig | None = None):
        """The named driver, built for `agent` when given (drivers hold their config: chroot_env, plugins)."""
        if agent is None or agent == self.config:
            return self.drivers[name]
        if agent not in self._drivers_by_config:
            self._drivers_by_config[agent] = make_drivers(self.runtime, agent)
        return self._drivers_by_config[agent][name]

    def context(self, driver: str, config, agent: AgentConfig | None = None) -> TaskContext:
        """A one-task job at a new instance index, so no two samples share an alloc dir or a cgroup."""
        self._index += 1
        task = Task(name="t", driver=driver, config=config)
        group = Group(name="g", tasks=(task,), network=Network(mode="host"))
        job = Job(name="bench", groups=(group,))
        return TaskContext(job=job, group=group, task=task, index=self._index,
                           alloc_id=alloc_id_for(job.name, group.name, self._index),
                           config=agent or self.config)

    def run_true(self, driver: str, config=None, agent: AgentConfig | None = None,
                 spare: bool = True) -> tuple[float, float]:
        """Start /bin/true (or `config`'s command) as a fresh task and wait for it; it must exit 0.

        Returns (ms until start returned, ms until its exit was known). Destroying the task and removing its
        alloc dir happen after the clock stopped. spare=False: the start finds no spare alloc dir.
        """
        d = self.driver(driver, agent)
        ctx = self.context(driver, config or DRIVER_CONFIGS[driver](command="/bin/true"), agent)
        rt = self.runtime
        spares = rt.spares
        kind = d.spare_kind(ctx)  # the kind of spare this start takes (exec's holds its mount points)
        if spares is not None and spare:
            while spares.step():  # as the daemon does once it has been quiet for a moment
                pass
        rt.spares = spares if spare else None
        ready = spares.count(kind) if spares is not None else 0
        t0 = time.perf_counter_ns()
        try:
            handle = d.start(ctx)
        finally:
            rt.spares = spares
        t1 = time.perf_counter_ns()
        if spares is not None and spare and spares.count(kind) != ready - 1:
            raise RuntimeError(f"the {driver} start did not take a spare alloc dir: the row would measure none")
        result = d.wait(handle, 30)
        t2 = time.perf_counter_ns()
        try:
            if result is None or not result.successful:
                raise RuntimeError(f"{driver} task {ctx.task.config.command} did not succeed: {result}")
        finally:
            d.destroy(handle)
            remove_alloc(Path(handle.alloc_dir))
        return (t1 - t0) / 1e6, (t2 - t0) / 1e6

    def close(self) -> None:
        rt = self.runtime
        if rt is not None:
            self.runtime = None
            for name in rt.cgroups.names():
                cg = rt.cgroups.open(name)
                if cg is not None:
                    cg.kill()
                    cg.remove()
            rt.shutdown_launcher()
            if rt.alloc_root.exists():
                for d in rt.alloc_root.iterdir():
                    remove_alloc(d)
            rt.cgroups.remove_parent()
            if rt.spares is not None:
                rt.spares.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---- the plain ways ----------------------------------------------------------------------------------------
def _timed_run(argv: list[str]) -> Callable[[], float]:
    def sample() -> float:
        t0 = time.perf_counter_ns()
        subprocess.run(argv, check=True)
        return (time.perf_counter_ns() - t0) / 1e6
    return sample


def _posix_spawn_sample() -> float:
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter_ns() - t0) / 1e6
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"posix_spawn /bin/true exited with status {status}")
    return elapsed


def find_bwrap(install: bool) -> tuple[str | None, str]:
    """The bwrap binary, installing Debian's bubblewrap when it is missing. (path, reason when None)."""
    path = shutil.which("bwrap")
    if path:
        return path, ""
    if not install:
        return None, "bwrap is not installed (installation not requested)"
    if not shutil.which("apt-get"):
        return None, "bwrap is not installed and there is no apt-get to install it"
    proc = subprocess.run(["apt-get", "install", "-y", "bubblewrap"], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("bwrap")
    if path:
        return path, ""
    last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
    return None, f"apt-get install bubblewrap failed (exit {proc.returncode}): {last}"


def probe(argv: list[str]) -> str:
    """Why `argv` cannot run here ("" when it can): a way that fails on this kernel becomes an n/a row."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode == 0:
        return ""
    return f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()[:200]}"


# ---- the bench ---------------------------------------------------------------------------------------------
def measure(n: int = 200, warmup: int = 20, *, cgroup_parent: str | None = None, workdir: Path | None = None,
            install_bwrap: bool = True) -> list[Row]:
    """Sample every way `n` times (interleaved, after `warmup` unrecorded rounds); summarise as table rows."""
    if n < 1:
        raise ValueError("n must be at least 1")
    unavailable: dict[str, str] = {}
    plain: dict[str, Callable[[], float]] = {
        BASELINE: _timed_run(["/bin/true"]),
        POSIX_SPAWN: _posix_spawn_sample,
    }
    unshare = shutil.which("unshare")
    if unshare:
        argv = [unshare, "--pid", "--fork", "--mount", "--ipc", "--uts", "/bin/true"]
        why = probe(argv)
        if why:
            unavailable[UNSHARE] = why
        else:
            plain[UNSHARE] = _timed_run(argv)
    else:
        unavailable[UNSHARE] = "unshare(1) is not installed"
    bwrap, why = find_bwrap(install_bwrap)
    if bwrap:
        argv = [bwrap, "--ro-bind", "/", "/", "--unshare-all", "true"]
        why = probe(argv)
        if not why:
            plain[BWRAP] = _timed_run(argv)
    if why:
        unavailable[BWRAP] = why

    drivers = ("raw_exec", "exec", "exec2")
    samples: dict[str, list[float]] = {name: [] for name in plain}
    for d in drivers:
        for spare in (True, False):
            samples[start_row(d, spare)] = []
            samples[full_row(d, spare)] = []

    with BenchRuntime(cgroup_parent=cgroup_parent, workdir=workdir) as bench:
        for d in drivers:
            health = bench.drivers[d].fingerprint()
            if not health.healthy:
                unavailable[start_row(d)] = unavailable[full_row(d)] = health.reason
        live = [d for d in drivers if start_row(d) not in unavailable]
        ways: list[tuple[str, Callable[[], None]]] = []
        for name, sample in plain.items():
            ways.append((name, lambda name=name, sample=sample: samples[name].append(sample())))
        for d in live:
            for spare in (True, False):
                def run(d: str = d, spare: bool = spare) -> None:
                    started, finished = bench.run_true(d, spare=spare)
                    samples[start_row(d, spare)].append(started)
                    samples[full_row(d, spare)].append(finished)
                ways.append((_way(d, spare), run))
        for round_no in range(warmup + n):
            # Rotate the order each round: a way that runs right after a task's teardown can pay for kernel
            # work finished lazily (cgroup removal, mount namespace release); rotation spreads that over all.
            shift = round_no % len(ways)
            for _, run_one in ways[shift:] + ways[:shift]:
                run_one()
            if round_no + 1 == warmup:
                for v in samples.values():
                    v.clear()
    return summarise(samples, unavailable)


def summarise(samples: dict[str, list[float]], unavailable: dict[str, str]) -> list[Row]:
    order = [BASELINE, POSIX_SPAWN]
    for d in ("raw_exec", "exec", "exec2"):
        order += [start_row(d), full_row(d), start_row(d, False), full_row(d, False)]
    order += [UNSHARE, BWRAP]
    medians = {k: median(v) for k, v in samples.items() if v}
    base = medians.get(BASELINE)
    bwrap = medians.get(BWRAP)
    rows = []
    for way in order:
        if way not in medians:
            rows.append(Row(way, None, None, None, None, "n/a" if _target_of(way) else "",
                            unavailable.get(way, "not measured")))
            continue
        med = medians[way]
        vs_base = med / base if base else None
        vs_bwrap = med / bwrap if bwrap and _driver_of(way) in ("exec", "exec2") else None
        target = ""
        limit = _target_of(way)
        if limit is not None:
            ratio = vs_base if _driver_of(way) == "raw_exec" else vs_bwrap
            target = "n/a" if ratio is None else ("met" if ratio <= limit else "missed")
        rows.append(Row(way, med, percentile(samples[way], 95), vs_base, vs_bwrap, target,
                        unavailable.get(way, "")))
    return rows


def _target_of(way: str) -> float | None:
    d = _driver_of(way)
    if d == "raw_exec":
        return RAW_EXEC_TARGET
    if d in ("exec", "exec2"):
        return ISOLATED_TARGET
    return None


def render(rows: list[Row]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "| way | median ms | p95 ms | x subprocess.run | x bwrap | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        target = r.target
        if r.target and _driver_of(r.way) == "raw_exec":
            target = f"{r.target} (<= {RAW_EXEC_TARGET:g}x subprocess.run)"
        elif r.target:
            target = f"{r.target} (<= {ISOLATED_TARGET:g}x bwrap)"
        vs_bwrap = num(r.vs_bwrap, ".2f") if _driver_of(r.way) in ("exec", "exec2") else ""
        lines.append(f"| {r.way} | {num(r.median_ms, '.2f')} | {num(r.p95_ms, '.2f')} | "
                     f"{num(r.vs_baseline, '.2f')} | {vs_bwrap} | {target} |")
    notes = [f"- {r.way}: n/a because {r.note}" for r in rows if r.median_ms is None]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="recorded runs per way (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="unrecorded rounds first (default 20)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install bubblewrap when missing")
    add_state_root_option(ap)
    args = ap.parse_args(argv)
    apply_state_root(args)
    if os.geteuid() != 0:
        print("bench/spawn.py needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    rows = measure(args.n, args.warmup, install_bwrap=not args.no_install)
    print(f"Start cost, medians of {args.n} runs per way after {args.warmup} warm-up rounds "
          f"(kernel {os.uname().release}, {os.cpu_count()} cpus)\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
