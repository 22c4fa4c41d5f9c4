"""CgroupManager: where task cgroups live, creating and finding them, and saying what the host lacks.

Layout below a relative parent ("tasksd", the default of the daemon) in every hierarchy the tasks use:

    <own cgroup>/                 the daemon's cgroup (systemd Delegate=yes unit, or a test's own cgroup)
        supervisor/               pure v2 only: the daemon after move_self_to_leaf() (the launcher it starts too)
        tasksd/                   the parent: controllers enabled in its cgroup.subtree_control on v2
            <alloc_id>.<task>/    one task

On pure v2 an inner cgroup may not hold processes once controllers are enabled for its children, which is why the
daemon leaves its own cgroup for a sibling leaf of the parent. After a daemon restart /proc/self/cgroup names the
leaf, so a v2 own cgroup whose last component is the leaf name is treated as the leaf, and its parent as the own
cgroup: the parent (and running tasks) are found again. With systemd >= 254, `DelegateSubgroup=supervisor` starts the
daemon in that leaf directly. An absolute parent ("/tasksd-x") lives below each hierarchy's root instead.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import v1, v2
from .base import TaskCgroup, read_pids, rmdir_retrying, unique_dirs, write_value
from .hybrid import HybridTaskCgroup
from .layout import UNIFIED, CgroupError, CgroupLayout
from .limits import CgroupLimits

_TASK_CLASSES: dict[str, type[TaskCgroup]] = {
    "v2": v2.V2TaskCgroup,
    "hybrid": HybridTaskCgroup,
    "v1": v1.V1TaskCgroup,
}
_WRITTEN_MAX = 100_000  # cgroups whose limits are remembered (see _written); past this, forget all and rewrite
# Without these a host cannot contain a task at all; the others only cost one kind of limit.
_ESSENTIAL = {"memory"}


@dataclass(frozen=True)
class CgroupProblem:
    fatal: bool  # True: tasks cannot be contained here; False: something degrades or is worth knowing
    message: str

    def __str__(self) -> str:
        return self.message


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid cgroup {what} {name!r}: one path component expected")


class ParentMissing(CgroupError):
    """The task cgroup's parent directory is gone (removed by hand, or never made)."""


def make(task: TaskCgroup, limits: CgroupLimits, rewrite: bool) -> None:
    """mkdir `task` in each of its hierarchies and write its limits: all of them when a directory was made now
    (only the ones that differ from the kernel's defaults) or when `rewrite`; nothing for a reused cgroup whose
    limits are known to be in place. Sets task.existed. A missing parent raises ParentMissing (the caller makes
    the parent and calls again); any other failure is a CgroupError, with what this call made removed."""
    made: list[str] = []
    try:
        for d in unique_dirs(task.dirs()):
            try:
                os.mkdir(d)
                made.append(d)
            except FileExistsError:
                task.existed = True
            except FileNotFoundError:
                raise ParentMissing(f"cannot create cgroup {d}: its parent does not exist") from None
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {d}: {e.strerror}") from e
        if made or rewrite:
            task.update(limits, fresh=not task.existed)
    except BaseException:
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise


def task_cgroup_class(mode: str) -> type[TaskCgroup]:
    return _TASK_CLASSES[mode]


class CgroupManager:
    def __init__(self, layout: CgroupLayout, parent: str, leaf: str = "supervisor") -> None:
        parts = [p for p in parent.strip("/").split("/")]
        for p in parts:
            _check_name(p, "parent component")
        _check_name(leaf, "leaf")
        self.layout = layout
        self.parent = parent
        self.leaf = leaf
        self.absolute = parent.startswith("/")
        self.hierarchies = self._hierarchies()
        self.bases = {h: self._base(h) for h in self.hierarchies}
        self.parent_paths = {h: self.bases[h].joinpath(*parts) for h in self.hierarchies}
        self._parent_dirs = {h: str(p) for h, p in self.parent_paths.items()}
        # Limits this manager wrote into a task cgroup that still exists: a restart reusing the cgroup with the
        # same limits skips rewriting them (5-6 writes, ~0.2 ms of every restart). Only an exact match counts,
        # and a cgroup remade from scratch is always written.
        self._written: dict[str, CgroupLimits] = {}

    def _hierarchies(self) -> list[str]:
        mode = self.layout.mode
        v1_present = [c for c in v1.TASK_CONTROLLERS if c in self.layout.v1_mounts]
        if mode == "v2":
            return [UNIFIED]
        if mode == "hybrid":
            return [UNIFIED, *v1_present]
        return v1_present

    def _base(self, hierarchy: str) -> Path:
        """The directory the parent is created in: the hierarchy's root (absolute parent) or our own cgroup."""
        mount = self.layout.mount(hierarchy)
        if self.absolute:
            return mount
        own = self.layout.own_dir(hierarchy)
        if self.layout.mode == "v2" and own != mount and own.name == self.leaf:
            return own.parent
        return own

    def _dirs(self, paths: dict[str, Path]) -> list[Path]:
        return unique_dirs(paths)

    # -- diagnosis -------------------------------------------------------------------------------------------------

    def diagnose(self) -> list[CgroupProblem]:
        """Everything that is missing or degraded, each marked fatal or not."""
        lay = self.layout
        out: list[CgroupProblem] = []

        def add(fatal: bool, message: str) -> None:
            out.append(CgroupProblem(fatal, message))

        if lay.mode == "v2":
            root = lay.mount(UNIFIED)
            base = self.bases[UNIFIED]
            for c in v2.TASK_CONTROLLERS:
                if c not in lay.v2_controllers:
                    add(c in _ESSENTIAL, f"{c} controller is not available in {root / 'cgroup.controllers'}")
                elif base != root and base.is_dir() and c not in v2.controllers_of(base):
                    add(c in _ESSENTIAL, f"{c} controller is not enabled in "
                        f"{base.parent / 'cgroup.subtree_control'} (not delegated to {base})")
            wanted = set(v2.TASK_CONTROLLERS) & v2.controllers_of(base)
            if (base != root and base.is_dir() and read_pids(base / "cgroup.procs")
                    and not wanted <= v2.subtree_of(base)):
                add(False, f"{base} holds processes, so controllers cannot be enabled for its children "
                    "(cgroup v2 'no internal processes' rule): call move_self_to_leaf() before ensure_parent()")
        else:
            if lay.mode == "hybrid":
                root = lay.mount(UNIFIED)
                if not lay.v2_controllers & set(v2.TASK_CONTROLLERS):
                    add(False, f"cgroup v2 at {root} has none of the task controllers (hybrid host): limits go "
                        "through the v1 controllers; the v2 tree is used for membership, cgroup.kill and populated events")
                for c in sorted(lay.v2_controllers & set(v1.TASK_CONTROLLERS)):
                    if c not in lay.v1_mounts:
                        add(c in _ESSENTIAL, f"{c} controller is bound to cgroup v2, not v1: tasksd applies no {c} "
                            "limits on a hybrid host")
                # The root cgroup never has cgroup.kill, so look at a non-root directory we have.
                probe = next((d for d in (self.parent_paths[UNIFIED], self.bases[UNIFIED])
                              if d != root and d.is_dir()), None)
                if probe is not None and not (probe / "cgroup.kill").exists():
                    add(False, f"{probe / 'cgroup.kill'} is missing (Linux < 5.14): kill freezes and signals "
                        "every member instead")
            for c in v1.TASK_CONTROLLERS:
                if lay.mode == "hybrid" and c in ("cpuacct", "freezer"):
                    continue  # the v2 tree does their work on a hybrid host (see joined())
                if c not in lay.v1_mounts:
                    detail = {"freezer": "kill signals members without freezing them first",
                              "cpuacct": "no cpu usage stats"}.get(c, f"no {c} limits")
                    add(c in _ESSENTIAL, f"{c} cgroup v1 controller is not mounted: {detail}")
        for h in self.hierarchies:
            base = self.bases[h]
            if not base.is_dir():
                add(True, f"{base} does not exist")
            elif not os.access(base, os.W_OK):
                add(True, f"cannot create cgroups in {base}: not writable (not delegated to this user)")
        return out

    def check(self) -> list[str]:
        """Human-readable problems, fatal or not (use diagnose() to tell them apart)."""
        return [p.message for p in self.diagnose()]

    # -- the parent ------------------------------------------------------------------------------------------------

    def move_self_to_leaf(self, name: str | None = None) -> Path | None:
        """Pure v2: move the calling process (only it: os.getpid()) into <own>/<leaf>, a sibling of the parent.

        Returns the leaf directory, or None when no move is needed: hybrid and v1 hosts (no controllers are enabled
        in v2 subtree_control there), an absolute parent, or an own cgroup that is the root.
        """
        leaf = name or self.leaf
        _check_name(leaf, "leaf")
        if self.layout.mode != "v2" or self.absolute:
            return None
        base = self.bases[UNIFIED]
        if base == self.layout.mount(UNIFIED):
            return None
        target = base / leaf
        target.mkdir(exist_ok=True)
        write_value(target / "cgroup.procs", os.getpid())
        return target

    def ensure_parent(self) -> None:
        """Create the parent in every hierarchy (and, on v2, enable the task controllers along the way)."""
        rel = self.parent.strip("/").split("/")
        for h in self.hierarchies:
            d = self.bases[h]
            if self.layout.mode == "v2":
                v2.enable_controllers(d, set(v2.TASK_CONTROLLERS))
            for part in rel:
                d = d / part
                created = False
                try:
                    d.mkdir()
                    created = True
                except FileExistsError:
                    pass
                except OSError as e:
                    raise CgroupError(f"cannot create cgroup {d}: {e.strerror}") from e
                if h == "cpuset" and (created or not (d / "cpuset.cpus").read_text().strip()):
                    v1.copy_cpuset(d)
                if self.layout.mode == "v2":
                    v2.enable_controllers(d, set(v2.TASK_CONTROLLERS))

    def remove_parent(self, timeout: float = 5.0) -> bool:
        """rmdir the parent (its last component only) once it holds no task cgroups; False if some remain."""
        if self.names():
            return False
        deadline = time.monotonic() + timeout
        for d in self._dirs(self.parent_paths):
            rmdir_retrying(d, deadline)
        return True

    # -- task cgroups ----------------------------------------------------------------------------------------------

    def _task(self, name: str) -> TaskCgroup:
        _check_name(name, "name")
        return _TASK_CLASSES[self.layout.mode](name, {h: p / name for h, p in self.parent_paths.items()})

    def joined(self, limits: CgroupLimits) -> list[str]:
        """The hierarchies a new task joins: the ones that limit, count or kill it, and no more.

        Every extra hierarchy is a mkdir, two migrations (the launcher's join and return) and an rmdir per start,
        ~0.1 ms each here. On a hybrid host the v2 tree already gives cpu usage (cpu.stat), freeze and kill, so the
        v1 cpuacct and freezer hierarchies add nothing. A v1 cpuset directory is the dearest (~0.15 ms to make, as
        cpus and mems must be copied in) and only matters for a task that asks for cores; without, the task stays
        in the launcher's cpuset, which is tasksd's own.
        """
        skip = {"cpuacct", "freezer"} if self.layout.mode == "hybrid" else set()
        if limits.cpuset_cpus is None:
            skip.add("cpuset")
        return [h for h in self.hierarchies if h not in skip]

    def create(self, name: str, limits: CgroupLimits) -> TaskCgroup:
        """Create (or reuse) a task cgroup in the hierarchies it joins and write all limits. When it `existed`,
        callers kill() it before launching into it, so members left from an earlier life die first. (open() still
        looks in every hierarchy, so leftovers of a task that joined more are found and removed.)"""
        task = self.planned(name, limits)
        rewrite = self.needs_limits(name, limits)
        self._written.pop(name, None)  # unknown until the writes below all succeeded
        try:
            make(task, limits, rewrite)
        except ParentMissing:
            # The parent went away (or was never made): recreate it rather than stat it every start.
            self.ensure_parent()
            make(task, limits, rewrite)
        self.note_written(name, limits)
        return task

    def planned(self, name: str, limits: CgroupLimits) -> TaskCgroup:
        """The task cgroup `create` would make for these limits, in the hierarchies it joins; nothing is touched
        (the launcher can make it from this, see isolation.launcher's op_cgroup)."""
        _check_name(name, "name")
        parents = self._parent_dirs
        return _TASK_CLASSES[self.layout.mode].at(name, {h: f"{parents[h]}/{name}" for h in self.joined(limits)})

    def needs_limits(self, name: str, limits: CgroupLimits) -> bool:
        """Whether an existing cgroup `name` must have these limits written (this manager did not write them)."""
        return self._written.get(name) != limits

    def note_written(self, name: str, limits: CgroupLimits) -> None:
        """`name` now holds `limits` (made or rewritten): a restart with the same limits writes nothing."""
        if len(self._written) >= _WRITTEN_MAX:
            self._written.clear()
        self._written[name] = limits

    def forget(self, name: str) -> None:
        """The task cgroup `name` is being removed: a later create must write its limits."""
        self._written.pop(name, None)

    def open(self, name: str) -> TaskCgroup | None:
        """An existing task cgroup, with its path in every hierarchy tasksd uses, made or not: leftovers of a
        task that joined more hierarchies are killed and removed too, and a half-removed one (kill -9 between two
        rmdirs) still has its v2 path for the code that expects one. None when no directory exists."""
        task = self._task(name)
        return task if task.exists() else None

    def names(self) -> list[str]:
        """Task cgroups under the parent, in any hierarchy (so half-created leftovers are found too)."""
        found: set[str] = set()
        for d in self._dirs(self.parent_paths):
            try:
                found |= {e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False)}
            except FileNotFoundError:
                pass
        return sorted(found)
