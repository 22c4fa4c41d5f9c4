"""cgroups for tasks: one interface over pure v2, hybrid (v1 limits + v2 tracking) and pure v1 hosts.

    layout = detect()
    mgr = CgroupManager(layout, "tasksd")
    mgr.check()                     # what the host lacks (Nomad #14797-style messages)
    mgr.move_self_to_leaf()         # pure v2 only, before ensure_parent()
    mgr.ensure_parent()
    cg = mgr.create("<alloc_id>.<task>", limits_for(memory_mb=256, cpu_mhz=500, pids_limit=256))
    cg.kill()                       # before launch: members of an earlier life die
    spec.cgroup_procs = cg.procs_files()
"""
from .base import TaskCgroup
from .hybrid import HybridTaskCgroup
from .layout import UNIFIED, CgroupError, CgroupLayout, detect
from .limits import CgroupLimits, CgroupStats, cpu_shares, cpu_weight, limits_for
from .manager import CgroupManager, CgroupProblem, ParentMissing, make, task_cgroup_class
from .v1 import V1TaskCgroup
from .v2 import V2TaskCgroup

__all__ = [
    "UNIFIED",
    "CgroupError",
    "CgroupLayout",
    "CgroupLimits",
    "CgroupManager",
    "CgroupProblem",
    "CgroupStats",
    "HybridTaskCgroup",
    "ParentMissing",
    "TaskCgroup",
    "V1TaskCgroup",
    "V2TaskCgroup",
    "cpu_shares",
    "cpu_weight",
    "detect",
    "limits_for",
    "make",
    "task_cgroup_class",
]
