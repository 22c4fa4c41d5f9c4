"""Which cgroup hierarchies this host has, where they are mounted and where this process sits in each.

Everything is read from `<proc_root>/<pid>/mountinfo` and `<proc_root>/<pid>/cgroup`, so unit tests point
`proc_root` at a fake /proc whose mountinfo names directories in a temp dir.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isolation.sys import unescape_mountinfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing in the launcher
if TYPE_CHECKING:
    from typing import Literal

    Mode = Literal["v2", "hybrid", "v1"]
UNIFIED = "unified"

# v1 controllers tasksd puts tasks into; others (blkio, devices, net_cls...) are mounted but unused.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer")
_KNOWN_V1 = frozenset(V1_CONTROLLERS) | {"blkio", "devices", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma",
                                         "misc"}


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and what to do."""


@dataclass(frozen=True)
class CgroupLayout:
    mode: Mode
    v2_mount: Path | None
    v1_mounts: dict[str, Path] = field(default_factory=dict)  # controller -> mount point (co-mounted share one)
    own: dict[str, str] = field(default_factory=dict)  # "unified" or controller -> our cgroup path ("/..." )
    v2_controllers: frozenset[str] = frozenset()  # listed in the v2 root's cgroup.controllers

    def mount(self, hierarchy: str) -> Path:
        if hierarchy == UNIFIED:
            if self.v2_mount is None:
                raise CgroupError("no cgroup v2 hierarchy is mounted")
            return self.v2_mount
        try:
            return self.v1_mounts[hierarchy]
        except KeyError:
            raise CgroupError(f"the {hierarchy} cgroup v1 controller is not mounted") from None

    def own_dir(self, hierarchy: str) -> Path:
        """This process's own cgroup directory in one hierarchy."""
        return self.mount(hierarchy) / self.own.get(hierarchy, "/").lstrip("/")


def _read_mounts(mountinfo: Path) -> tuple[tuple[Path, str] | None, dict[str, tuple[Path, str]]]:
    """(v2 mount point, fs root) and controller -> (v1 mount point, fs root); the first mount of each wins."""
    v2: tuple[Path, str] | None = None
    v1: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        fstype = fields[sep + 1]
        root, point = unescape_mountinfo(fields[3]), Path(unescape_mountinfo(fields[4]))
        if fstype == "cgroup2" and v2 is None:
            v2 = (point, root)
        elif fstype == "cgroup":
            super_opts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
            for opt in super_opts:
                if opt in _KNOWN_V1 and opt not in v1:
                    v1[opt] = (point, root)
    return v2, v1


def _relative_to_mount(path: str, mount_root: str) -> str:
    # When a hierarchy is mounted from a subdirectory (a bind mount in a container), /proc/self/cgroup still shows
    # the full path; strip the mount's root so the path is usable below the mount point.
    if mount_root in ("", "/"):
        return path
    if path == mount_root:
        return "/"
    if path.startswith(mount_root.rstrip("/") + "/"):
        return path[len(mount_root.rstrip("/")):]
    return path


def detect(proc_root: str | Path = "/proc", pid: int | str = "self") -> CgroupLayout:
    """Read the cgroup layout of process `pid` (default: the caller).

    mode is "v2" with only a cgroup2 mount, "hybrid" with cgroup2 plus v1 controller mounts, "v1" without cgroup2.
    """
    base = Path(proc_root) / str(pid)
    v2, v1 = _read_mounts(base / "mountinfo")
    if v2 is None and not v1:
        raise CgroupError(f"no cgroup filesystem is mounted (read {base / 'mountinfo'})")
    own: dict[str, str] = {}
    for line in (base / "cgroup").read_text().splitlines():
        hier_id, ctrls, path = line.split(":", 2)
        if hier_id == "0" and ctrls == "":
            if v2 is not None:
                own[UNIFIED] = _relative_to_mount(path, v2[1])
            continue
        for ctrl in ctrls.split(","):
            if ctrl in v1:
                own[ctrl] = _relative_to_mount(path, v1[ctrl][1])
    controllers: frozenset[str] = frozenset()
    if v2 is not None:
        try:
            controllers = frozenset((v2[0] / "cgroup.controllers").read_text().split())
        except FileNotFoundError:
            pass
    used_v1 = {c: p for c, (p, _) in v1.items() if c in V1_CONTROLLERS}
    mode: Mode
    if v2 is None:
        mode = "v1"
    elif used_v1:
        mode = "hybrid"
    else:
        mode = "v2"
    return CgroupLayout(
        mode=mode,
        v2_mount=None if v2 is None else v2[0],
        v1_mounts={c: p for c, (p, _) in v1.items()},
        own=own,
        v2_controllers=controllers,
    )
