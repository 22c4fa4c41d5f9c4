"""The exec driver's chroot setup cost does not grow with the number of files it exposes.

    sudo .venv/bin/python bench/chroot_scaling.py [--n 100] [--warmup 10] [--files 10,20000]

Nomad builds an exec task's chroot by hard-linking or copying every file of chroot_env into the task dir, so
its cost grows with the size of /usr. tasksd bind-mounts each chroot_env entry read-only instead: one mount
per entry, whatever the entry holds. This bench adds one extra chroot_env entry, a temp dir tree mounted at
/srv/tree, once with a few files and once with many, and times exec task starts ("start -> running", as in
bench/spawn.py) for each, interleaved. The ratio large/small should stay near 1.

For contrast it also times a hard-link copy of the large tree (no task): the per-task work Nomad's approach
does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.spawn import BenchRuntime, median, percentile  # noqa: E402
from manifests.agent_config import DEFAULT_CHROOT_ENV, AgentConfig  # noqa: E402
from manifests.model import ExecConfig  # noqa: E402

TREE_TARGET = "/srv/tree"
FILES_PER_DIR = 100
HARDLINK_SAMPLES = 5  # enough to show the order of magnitude; each one writes tens of thousands of inodes


@dataclass(frozen=True)
class ScalingRow:
    way: str
    files: int
    median_ms: float
    p95_ms: float
    vs_smallest: float | None  # None for the contrast row
    samples: int


def make_tree(root: Path, files: int) -> Path:
    """`files` small files under `root`, FILES_PER_DIR per subdirectory (a /usr-like fan-out)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir(exist_ok=True)
        (d / f"f{i % FILES_PER_DIR:03d}").write_bytes(b"x")
    return root


def last_file(files: int) -> str:
    """Path inside the task of the tree's last file: seeing it proves the whole tree is mounted."""
    i = files - 1
    return f"{TREE_TARGET}/d{i // FILES_PER_DIR:04d}/f{i % FILES_PER_DIR:03d}"


def agent_with_tree(tree: Path) -> AgentConfig:
    return AgentConfig(chroot_env=(*DEFAULT_CHROOT_ENV, (str(tree), TREE_TARGET)))


def _hardlink_copy_ms(src: Path, scratch: Path) -> float:
    dst = scratch / "copy"
    t0 = time.perf_counter_ns()
    shutil.copytree(src, dst, copy_function=os.link)
    elapsed = (time.perf_counter_ns() - t0) / 1e6
    shutil.rmtree(dst)
    return elapsed


def measure(n: int = 100, warmup: int = 10, files: tuple[int, ...] = (10, 20000), *,
            cgroup_parent: str | None = None, workdir: Path | None = None,
            hardlink_samples: int = HARDLINK_SAMPLES) -> list[ScalingRow]:
    if n < 1 or not files or min(files) < 1:
        raise ValueError("need n >= 1 and at least one tree of at least one file")
    sizes = sorted(set(files))
    with BenchRuntime(cgroup_parent=cgroup_parent, workdir=workdir) as bench:
        trees = {k: make_tree(bench.workdir / "trees" / f"tree-{k}", k) for k in sizes}
        agents = {k: agent_with_tree(trees[k]) for k in sizes}
        for k in sizes:
            # Once per tree, outside the clock: the task must really see the tree's last file.
            probe = ExecConfig(command="/usr/bin/test", args=("-f", last_file(k)))
            bench.run_true("exec", probe, agents[k])
        samples: dict[int, list[float]] = {k: [] for k in sizes}
        for round_no in range(warmup + n):
            # Alternate the order: a start right after another task's teardown can pay for it (cgroup and
            # mount work the kernel finishes lazily), and that must not always land on the same tree.
            for k in (sizes if round_no % 2 == 0 else sizes[::-1]):
                started, _ = bench.run_true("exec", agent=agents[k])
                if round_no >= warmup:
                    samples[k].append(started)
        largest = sizes[-1]
        copies = [_hardlink_copy_ms(trees[largest], bench.workdir) for _ in range(max(0, hardlink_samples))]
    base = median(samples[sizes[0]])
    rows = [ScalingRow(f"exec start -> running, chroot_env + tree of {k} files", k, median(samples[k]),
                       percentile(samples[k], 95), median(samples[k]) / base, len(samples[k])) for k in sizes]
    if copies:
        rows.append(ScalingRow(f"contrast: hard-link copy of the {largest}-file tree (Nomad's per-task way)",
                               largest, median(copies), percentile(copies, 95), None, len(copies)))
    return rows


def render(rows: list[ScalingRow]) -> str:
    lines = ["| way | files | runs | median ms | p95 ms | x smallest tree |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r.vs_smallest is None else f"{r.vs_smallest:.2f}"
        lines.append(f"| {r.way} | {r.files} | {r.samples} | {r.median_ms:.2f} | {r.p95_ms:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="recorded starts per tree (default 100)")
    ap.add_argument("--warmup", type=int, default=10, help="unrecorded rounds first (default 10)")
    ap.add_argument("--files", default="10,20000", help="comma-separated tree sizes (default 10,20000)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/chroot_scaling.py needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    sizes = tuple(int(x) for x in args.files.split(",") if x.strip())
    rows = measure(args.n, args.warmup, sizes)
    print(f"exec chroot setup vs tree size, medians of {args.n} starts per tree after {args.warmup} warm-up "
          f"rounds (kernel {os.uname().release})\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
