"""Smoke tests for the benches: each runs with a tiny N on the real kernel and yields the expected table.

Timings themselves are not asserted (no timed assertions); what is checked is the shape of the table, the
invariants that hold whatever the machine's speed, that the target column follows the ratios, and that the
benches leave nothing behind (the autouse leak check covers the in-process runs, the CLI test checks its own
names).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import chroot_scaling, spawn
from tests.conftest import _own_cgroup_dirs

REPO = Path(__file__).resolve().parents[2]

EXPECTED_WAYS = [
    spawn.BASELINE,
    spawn.POSIX_SPAWN,
    "tasksd raw_exec: start -> running",
    "tasksd raw_exec: start+wait /bin/true",
    "tasksd raw_exec, no spare dir: start -> running",
    "tasksd raw_exec, no spare dir: start+wait /bin/true",
    "tasksd exec: start -> running",
    "tasksd exec: start+wait /bin/true",
    "tasksd exec, no spare dir: start -> running",
    "tasksd exec, no spare dir: start+wait /bin/true",
    "tasksd exec2: start -> running",
    "tasksd exec2: start+wait /bin/true",
    "tasksd exec2, no spare dir: start -> running",
    "tasksd exec2, no spare dir: start+wait /bin/true",
    spawn.UNSHARE,
    spawn.BWRAP,
]


# ---- pure logic --------------------------------------------------------------------------------------------
def test_percentile_is_a_measured_value_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert spawn.percentile(values, 95) == 95.0
    assert spawn.percentile([3.0, 1.0, 2.0], 95) == 3.0
    assert spawn.percentile([7.0], 95) == 7.0
    assert spawn.median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_targets_follow_the_ratios():
    samples = {
        spawn.BASELINE: [1.0, 1.0, 1.0],
        spawn.BWRAP: [4.0, 4.0, 4.0],
        spawn.start_row("raw_exec"): [2.5, 2.9, 3.0],  # median 2.9x the baseline: met
        spawn.full_row("raw_exec"): [3.5, 3.2, 4.0],  # 3.5x: missed
        spawn.start_row("exec"): [6.0, 5.0, 5.5],  # 5.5 / 4 = 1.375x bwrap: met
        spawn.full_row("exec"): [7.0, 6.5, 6.1],  # 1.625x: missed
        spawn.start_row("raw_exec", spare=False): [3.1, 3.2, 3.3],  # 3.2x: missed
        spawn.start_row("exec2", spare=False): [5.0, 5.0, 5.0],  # 1.25x bwrap: met
    }
    rows = {r.way: r for r in spawn.summarise(samples, {spawn.UNSHARE: "unshare(1) is not installed"})}
    assert [w for w in rows] == EXPECTED_WAYS
    assert rows[spawn.start_row("raw_exec")].target == "met"
    assert rows[spawn.full_row("raw_exec")].target == "missed"
    assert rows[spawn.start_row("exec")].target == "met"
    assert rows[spawn.start_row("exec")].vs_bwrap == pytest.approx(1.375)
    assert rows[spawn.full_row("exec")].target == "missed"
    assert rows[spawn.start_row("exec2")].target == "n/a"  # not measured
    assert rows[spawn.start_row("raw_exec", spare=False)].target == "missed"
    assert rows[spawn.start_row("exec2", spare=False)].target == "met"
    assert rows[spawn.start_row("exec2", spare=False)].vs_bwrap == pytest.approx(1.25)
    assert rows[spawn.BASELINE].target == "" and rows[spawn.BASELINE].vs_baseline == 1.0
    assert rows[spawn.UNSHARE].median_ms is None
    table = spawn.render(list(rows.values()))
    assert "n/a because unshare(1) is not installed" in table


def test_exec_targets_are_na_without_bwrap():
    samples = {spawn.BASELINE: [1.0], spawn.start_row("exec"): [3.0], spawn.full_row("exec"): [4.0]}
    rows = {r.way: r for r in spawn.summarise(samples, {spawn.BWRAP: "bwrap is not installed"})}
    assert rows[spawn.start_row("exec")].target == "n/a"
    assert rows[spawn.start_row("exec")].vs_bwrap is None
    assert rows[spawn.start_row("exec")].vs_baseline == 3.0


# ---- the real benches --------------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.slow
def test_spawn_bench_rows(tmp, cgroup_parent):
    rows = spawn.measure(n=3, warmup=1, cgroup_parent=cgroup_parent, workdir=tmp, install_bwrap=False)
    by_way = {r.way: r for r in rows}
    assert [r.way for r in rows] == EXPECTED_WAYS
    assert by_way[spawn.BASELINE].vs_baseline == 1.0
    for driver in ("raw_exec", "exec", "exec2"):
        for spare in (True, False):
            started, full = by_way[spawn.start_row(driver, spare)], by_way[spawn.full_row(driver, spare)]
            assert started.median_ms is not None and started.median_ms > 0, started.note
            # Each sample's start time is part of the same sample's start+wait time: the medians keep the order.
            assert started.median_ms <= full.median_ms
            assert started.p95_ms >= started.median_ms
    assert by_way[spawn.start_row("raw_exec")].target in ("met", "missed")
    bwrap = by_way[spawn.BWRAP]
    for driver in ("exec", "exec2"):
        row = by_way[spawn.start_row(driver)]
        if bwrap.median_ms is None:
            assert row.target == "n/a" and bwrap.note
        else:
            assert row.target in ("met", "missed")
            assert row.vs_bwrap == pytest.approx(row.median_ms / bwrap.median_ms)
    table = spawn.render(rows).splitlines()
    assert table[0].startswith("| way | median ms | p95 ms |")
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(EXPECTED_WAYS)


@pytest.mark.root
@pytest.mark.slow
def test_chroot_scaling_bench_rows(tmp, cgroup_parent):
    rows = chroot_scaling.measure(n=2, warmup=0, files=(3, 250), cgroup_parent=cgroup_parent, workdir=tmp,
                                  hardlink_samples=1)
    assert [r.files for r in rows] == [3, 250, 250]
    assert rows[0].vs_smallest == 1.0
    assert rows[1].vs_smallest == pytest.approx(rows[1].median_ms / rows[0].median_ms)
    assert rows[2].vs_smallest is None and rows[2].samples == 1
    assert all(r.samples == 2 for r in rows[:2])
    table = chroot_scaling.render(rows).splitlines()
    assert len(table) == 2 + len(rows)
    # make_tree really wrote the files the task was asked to find
    assert len(list((tmp / "trees" / "tree-250").rglob("f*"))) == 250


@pytest.mark.root
@pytest.mark.slow
def test_spawn_cli_prints_the_table_and_cleans_up():
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "spawn.py"), "--n", "1", "--warmup", "0",
                             "--no-install"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "| way | median ms | p95 ms | x subprocess.run | x bwrap | target |" in out
    for way in EXPECTED_WAYS:
        assert f"| {way} |" in out
    # Its own cgroup parent and temp dir carry its pid: neither may survive it.
    prefix = f"tasksd-bench-{proc.pid}-"
    left = [p for d in _own_cgroup_dirs() for p in d.glob(f"{prefix}*")]
    assert left == []
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefix)]


@pytest.mark.root
def test_cgroup_join_cli_prints_both_ways_and_cleans_up():
    from isolation import childplan

    if not childplan.clone_into_cgroup_built():
        pytest.skip("isolation._spawn built without clone3 (x86_64 only)")
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "cgroup_join.py"), "--n", "2", "--quiet", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "| child writes its pid into cgroup.procs (a migration) |" in out
    assert "| cloned into the cgroup (clone3 CLONE_INTO_CGROUP) |" in out
    assert [p for d in _own_cgroup_dirs() for p in d.glob(f"tasksd-bench-join-{proc.pid}-*")] == []
