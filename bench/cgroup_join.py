"""How a new process gets into its cgroup v2 directory, after a quiet spell: written into cgroup.procs by the
child before its exec (a migration), or cloned straight into it (clone3 CLONE_INTO_CGROUP), both through the
launcher's C child (isolation._spawn), both running /bin/true.

    python bench/cgroup_join.py [--n 20] [--quiet 0.2]

Run as root. A migration takes the kernel's cgroup_threadgroup_rwsem for writing; after a spell without any, that
lock is back in its reader-fast mode and the writer first waits for an RCU grace period. A clone into the cgroup
takes the lock for reading only. On pure v2 hosts a task's start needs no migration at all that way; on hybrid hosts
(this VM) its v1 hierarchies are still joined by writes, so the launcher's starts there still wait. Both ways are
sampled alternately, each after `--quiet` seconds without any migration. The cgroups are made below the bench's own
v2 cgroup and removed at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.spawn import percentile  # noqa: E402
from isolation import _spawn, cgroups, childplan  # noqa: E402
from isolation.cgroups.base import rmdir_retrying  # noqa: E402


def spawn_once(d: Path, into: bool) -> float:
    r, w = os.pipe2(os.O_CLOEXEC)
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if into else -1
    ops = [] if into else [(_spawn.OP_WRITE, 0, b"join cgroup", 0, 0, 0, str(d / "cgroup.procs").encode(), b"0",
                            None, None)]
    try:
        t0 = time.perf_counter()
        pid = _spawn.spawn(0, w, 5, ops, b"/bin/true", [b"true"], [], None, 0, fd)
        took = time.perf_counter() - t0  # CLONE_VFORK: returns once the child has exec'd
        os.close(w)
        w = -1
        if os.read(r, 4096):
            raise SystemExit("the child reported a failure")
        os.waitpid(pid, 0)
        return took * 1000
    finally:
        for x in (r, w, fd):
            if x >= 0:
                os.close(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--quiet", type=float, default=0.2)
    args = ap.parse_args(argv)
    if not childplan.clone_into_cgroup_built():
        raise SystemExit("isolation._spawn is not built with clone3 (x86_64 only)")
    layout = cgroups.detect()
    if layout.v2_mount is None:
        raise SystemExit("no cgroup v2 hierarchy is mounted")
    base = layout.own_dir(cgroups.UNIFIED) / f"tasksd-bench-join-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    base.mkdir()
    made: list[Path] = []
    samples: dict[bool, list[float]] = {False: [], True: []}
    try:
        for i in range(args.n):
            for into in ((False, True) if i % 2 == 0 else (True, False)):
                d = base / f"{len(made)}"
                d.mkdir()
                made.append(d)
                time.sleep(args.quiet)
                samples[into].append(spawn_once(d, into))
    finally:
        for d in reversed(made):
            rmdir_retrying(d, time.monotonic() + 1)  # a reaped child leaves its cgroup a moment later
        base.rmdir()

    def row(name: str, xs: list[float]) -> str:
        return (f"| {name} | {statistics.median(xs):.2f} | {percentile(xs, 95):.2f} | "
                f"{statistics.median(xs) / statistics.median(samples[False]):.2f} |")
    print(f"cgroup v2 join of a new /bin/true after {args.quiet} s without migrations ({args.n} samples each, "
          f"cgroup mode here: {layout.mode})\n")
    print("| way | median ms | p95 ms | x write |")
    print("|---|---:|---:|---:|")
    print(row("child writes its pid into cgroup.procs (a migration)", samples[False]))
    print(row("cloned into the cgroup (clone3 CLONE_INTO_CGROUP)", samples[True]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
