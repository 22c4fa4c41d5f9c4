"""Shared fixtures. Every test is checked for leaks: processes, cgroups, mounts, network namespaces, temp dirs.

The check runs around every test (cheap: a few /proc reads) so the test that leaked is the one that fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

IS_ROOT = os.geteuid() == 0
# Names carry our pid so that test runs in parallel on one machine (CI shards, other sessions) do not see each
# other's temp dirs and cgroups as leaks.
TMP_PREFIX = f"tasksd-test-{os.getpid()}-"
CGROUP_PREFIX = f"tasksd-test-{os.getpid()}-"


def _own_cgroup_dirs() -> list[Path]:
    """The directories of this process's own cgroups, one per mounted hierarchy (v1 controllers and v2)."""
    dirs: list[Path] = []
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            mnt = Path(fields[4])
            if fstype == "cgroup2":
                mounts.setdefault("", mnt)
            elif fstype == "cgroup":
                for opt in options.split(","):
                    if opt in {"memory", "pids", "cpu", "cpuset", "freezer", "cpuacct"} or opt.startswith("name="):
                        mounts.setdefault(opt, mnt)
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(",") if ctrls else [""]:
                if ctrl in mounts:
                    d = mounts[ctrl] / path.lstrip("/")
                    if d not in dirs:
                        dirs.append(d)
    return dirs


def _cgroup_tree(dirs: list[Path]) -> set[str]:
    found: set[str] = set()
    for base in dirs:
        for root, subdirs, _ in os.walk(base):
            for sd in subdirs:
                if sd.startswith(CGROUP_PREFIX) or sd == "tasksd":
                    found.add(os.path.join(root, sd))
    return found


def _mounts() -> set[str]:
    # Only mounts below our own temp dirs: the mount table is shared with everything else on the machine.
    ours = os.path.join(tempfile.gettempdir(), TMP_PREFIX)
    with open("/proc/self/mountinfo") as f:
        return {p for p in (line.split()[4] for line in f) if p.startswith(ours)}


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _tmpdirs() -> set[str]:
    base = tempfile.gettempdir()
    return {n for n in os.listdir(base) if n.startswith(TMP_PREFIX)}


def _children() -> set[tuple[int, float]]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            out.add((p.pid, p.create_time()))
        except psutil.NoSuchProcess:
            pass
    return out


def _strays() -> set[tuple[int, float]]:
    """Processes that are no longer our children but belong to this run: a launcher outlives the daemon that
    started it (by design), so a test that fails to stop it leaves an orphan that _children cannot see."""
    base = os.path.join(tempfile.gettempdir(), TMP_PREFIX)
    out = set()
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = p.info["cmdline"] or []
        if any(base in arg for arg in cmd):
            out.add((p.pid, p.info["create_time"]))
    return out


def _snapshot() -> dict[str, set]:
    return {
        "processes": _children() | _strays(),
        "cgroups": _cgroup_tree(_own_cgroup_dirs()),
        "mounts": _mounts(),
        "netns": _netns(),
        "tmpdirs": _tmpdirs(),
    }


_RUN_DIR = re.compile(r"tasksd-test-(\d+)-[^/\s]*")


def _dead_run(name: str) -> bool:
    """`tasksd-test-<pid>-...` of a test run whose process is gone (killed before its fixtures could clean up)."""
    m = _RUN_DIR.fullmatch(name)
    return bool(m) and not psutil.pid_exists(int(m.group(1)))


def _remove_cgroup_tree(top: Path) -> None:
    for d in sorted((x for x in top.rglob("*") if x.is_dir()), key=lambda x: len(x.parts), reverse=True) + [top]:
        procs = d / "cgroup.procs"
        for pid in procs.read_text().split() if procs.exists() else ():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            d.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="session", autouse=True)
def sweep_killed_runs():
    """An interrupted run (^C, a timeout) leaves what its per-test fixtures never got to remove: launchers, task
    cgroups, tmpfs mounts, temp dirs. Sweep the leftovers of dead runs first, so they neither pile up on a machine
    nor get mistaken for this run's leaks."""
    for p in psutil.process_iter(["cmdline"]):
        if any(_dead_run(m.group(0)) for m in _RUN_DIR.finditer(" ".join(p.info["cmdline"] or []))):
            try:
                p.kill()
            except psutil.Error:
                pass  # not ours to kill (tests run without root): leave it
    for own in _own_cgroup_dirs():
        for top in own.iterdir():
            if top.is_dir() and _dead_run(top.name):
                _remove_cgroup_tree(top)
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    tmp = tempfile.gettempdir()
    for point in sorted(points, key=len, reverse=True):
        rel = os.path.relpath(point, tmp)
        if not rel.startswith("..") and _dead_run(rel.split("/")[0]):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for name in os.listdir(tmp):
        if _dead_run(name):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    yield


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail the test that leaves behind a process, cgroup, mount, network namespace or temp dir."""
    before = _snapshot()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        after = _snapshot()
        leaked = {k: after[k] - before[k] for k in after if after[k] - before[k]}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if leaked:
        # Clean up so one leak does not cascade into every later test, then fail loudly.
        for pid, _ in leaked.get("processes", ()):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"test leaked: {leaked}", pytrace=False)


@pytest.fixture
def tmp(request) -> Path:
    """A temp dir removed after the test (mounts under it must be gone first; the leak check says if not)."""
    d = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cgroup_parent() -> str:
    """A unique cgroup parent name for one test, created by the code under test below our own cgroup."""
    return f"{CGROUP_PREFIX}{uuid.uuid4().hex[:8]}"


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root and the real kernel")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)

