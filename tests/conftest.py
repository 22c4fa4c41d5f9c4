"""Shared fixtures. Every test is checked for leaks: processes, cgroups, mounts, network namespaces, temp dirs.

The check runs around every test (cheap: a few /proc reads) so the test that leaked is the one that fails.
"""
from __future__ import annotations

import os
import shutil
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

