"""The C child's plan (isolation/childplan.py) against the Python child's order of steps (isolation/child.py).

Pure: compiles plans, runs nothing. Needs the extension built (`make install-test` does it in place)."""
from __future__ import annotations

import pytest

from isolation import child, childplan
from isolation import sys as ksys
from isolation.launchspec import BindMount, LaunchSpec, Namespaces, RootFS

FDS = {"stdin": 10, "stdout": 11, "stderr": 12, "errpipe": 13}


def _spec(**kw) -> LaunchSpec:
    base = dict(key="k", path="/bin/true", argv=("/bin/true",), env=(("A", "1"),), cwd="/",
                cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",), uid=65534, gid=65534, groups=(65534,))
    base.update(kw)
    return LaunchSpec(**base)


def _steps(plan) -> list[str]:
    """The plan's steps, each named once, in order (an op's step may carry a detail after ': ')."""
    out: list[str] = []
    for op in plan.ops:
        name = op[2].split(":")[0]
        if not out or out[-1] != name:
            out.append(name)
    return out


def _in_reference_order(steps: list[str]) -> bool:
    order = [name for name, _ in child.STEPS]
    positions = [order.index(s) for s in steps]
    return positions == sorted(positions)


def test_the_extension_is_built():
    assert childplan._spawn is not None, "isolation._spawn is not built: run `make install-test`"


def test_exec_plan_follows_the_python_childs_order_and_makes_namespaces_in_clone():
    spec = _spec(rootfs=RootFS(root="/srv/t", binds=(BindMount("/usr", "/usr"),), readonly_paths=("/proc/sys",),
                               masked_paths=("/proc/kcore",)),
                 namespaces=Namespaces(mount=True, pid=True, ipc=True, uts=True, net="new"),
                 no_new_privs=True, caps=(10,))
    plan = childplan.compile_plan(spec, FDS, None)
    steps = _steps(plan)
    assert steps[0] == "new session" and steps[-1] == "close fds"
    assert {"join cgroup", "mounts", "credentials", "no_new_privs", "chdir", "stdio"} <= set(steps)
    assert _in_reference_order(steps)
    assert plan.clone_flags == (ksys.CLONE_NEWNS | ksys.CLONE_NEWPID | ksys.CLONE_NEWIPC | ksys.CLONE_NEWUTS
                                | ksys.CLONE_NEWNET)
    assert plan.groups == [65534]


def test_exec2_plan_unveils_after_stdio_and_before_credentials():
    # Landlock rules for /dev/stdout and /proc/self/... name what the child sees once its stdio and /proc are in
    # place, and the paths must still be openable, i.e. before the uid changes.
    spec = _spec(namespaces=Namespaces(mount=True, pid=True, ipc=True, mount_proc=True),
                 landlock=(("rx", "/usr"), ("rw", "/dev/stdout")), caps=())
    steps = _steps(childplan.compile_plan(spec, FDS, None))
    assert _in_reference_order(steps)
    assert steps.index("stdio") < steps.index("landlock") < steps.index("credentials")


def test_exec_into_a_task_enters_instead_of_creating_namespaces():
    spec = _spec(namespaces=Namespaces(mount=True, pid=True))
    plan = childplan.compile_plan(spec, FDS, {"mnt": 20, "root": 21})
    assert plan.clone_flags == 0
    assert "enter task" in _steps(plan) and "mounts" not in _steps(plan)
    assert _in_reference_order(_steps(plan))


def test_ids_the_kernel_would_truncate_or_ignore_are_refused():
    # setresuid(2**32) is setresuid(0) after truncation, and (uid_t)-1 means "unchanged": the task would stay root.
    import pytest

    for bad in ({"uid": 2**32}, {"uid": -1}, {"gid": 0xFFFFFFFF}, {"groups": (2**32,)}):
        with pytest.raises(ValueError, match="not a valid id"):
            childplan.compile_plan(_spec(**bad), FDS, None)
    # and the C side refuses them too, whatever plan it is handed
    op = (childplan._spawn.OP_SETRESUID, 0, b"credentials", -1, 0, 0, None, None, None, None)
    with pytest.raises(ValueError, match="out of range"):
        childplan._spawn.spawn(0, 13, 5, [op], b"/bin/true", [b"/bin/true"], [], None)


def test_a_child_born_in_its_v2_cgroup_joins_only_the_others():
    v2, mem = "/sys/fs/cgroup/unified/p/t/cgroup.procs", "/sys/fs/cgroup/memory/p/t/cgroup.procs"
    spec = _spec(cgroup_procs=(v2, mem))

    def joins(plan) -> list[str]:
        return [op[6] for op in plan.ops if op[2] == "join cgroup"]
    assert joins(childplan.compile_plan(spec, FDS, None)) == [v2, mem]
    assert joins(childplan.compile_plan(spec, FDS, None, born_in=v2)) == [mem]


SLOTS = {"stdin": 3, "stdout": 4, "stderr": 5, "errpipe": 6, "ipc": 7, "uts": 8, "net": 9, "mnt": 10, "root": 11}


def test_the_c_launchers_request_carries_the_plan_with_its_slots_and_the_v2_join_flagged():
    import json

    v2, mem = "/sys/fs/cgroup/unified/p/t/cgroup.procs", "/sys/fs/cgroup/memory/p/t/cgroup.procs"
    spec = _spec(cgroup_procs=(v2, mem), env=(("A", "1"), ("B", "x=y")))
    req = childplan.c_launcher_request("spawn", spec, SLOTS, "/sys/fs/cgroup/unified/", fresh=True)
    assert req["clone_into"] == "/sys/fs/cgroup/unified/p/t" and req["fresh"] is True
    assert req["env"] == ["A=1", "B=x=y"] and "enter" not in req
    ops = req["plan"]["ops"]
    joins = {op[6]: op[1] for op in ops if op[2] == "join cgroup"}
    assert joins == {v2: childplan._spawn.F_BORN_IN, mem: 0}  # only the v2 join may be dropped by the launcher
    stdio = next(op for op in ops if op[2] == "stdio")
    assert stdio[3:6] == (3, 4, 5)
    assert json.loads(json.dumps(req))["plan"]["ops"][0][0] == ops[0][0]  # plain JSON all through

    execd = childplan.c_launcher_request("exec", spec, SLOTS, enter=["net", "mnt", "pid"], target_pid=7)
    assert execd["enter"] == ["net", "mnt", "root"] and execd["pidns"] is True and execd["clone_into"] is None
    setns = [op[3] for op in execd["plan"]["ops"] if op[2] == "enter task"]
    assert setns == [9, 10, 11]  # net, mnt, then the root
    assert execd["plan"]["clone_flags"] == 0


def test_the_c_launchers_request_refuses_an_illegal_environment_name():
    with pytest.raises(ValueError, match="illegal environment variable name"):
        childplan.c_launcher_request("spawn", _spec(env=(("A=B", "1"),)), SLOTS)


def test_root_mount_points_are_what_the_roots_ops_make_on_disk(tmp_path):
    """What a chroot spare carries (isolation.spares): every bind and mount target the exec root's ops would
    create in the task dir, intermediate directories first, each once, with the mode the op gives mkdirat; nothing
    below an earlier mount (on /dev's tmpfs, inside the /etc bind), nothing an op never creates (the masks)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_text("x")
    binds = (BindMount(str(src / "d"), "/usr", True), BindMount(str(src / "d"), "/run/a/b", True),
             BindMount(str(src / "f"), "/opt/file", True), BindMount(str(src / "d"), "/usr/inside", True),
             BindMount(str(tmp_path / "missing"), "/lib32", True), BindMount(str(src / "d"), "/alloc", False))
    points = dict(childplan.root_mount_points(RootFS(root=str(tmp_path), binds=binds,
                                                     readonly_paths=("/proc/sys",), masked_paths=("/proc/kcore",))))
    order = list(points)
    assert order[:6] == ["usr", "run", "run/a", "run/a/b", "opt", "opt/file"]
    assert points["run"] == points["run/a"] == points["run/a/b"] == 0o755 and points["opt/file"] is None
    assert "usr/inside" not in points  # made inside the /usr bind, on the host's /usr
    assert "lib32" not in points  # a chroot_env source this host lacks is skipped
    assert points["alloc"] == 0o755 and points["dev"] == 0o755 and points["proc"] == 0o555 and points["sys"] == 0o555
    assert not [p for p in points if p.startswith(("dev/", "proc/", "sys/"))]
    assert order.index("alloc") < order.index("dev") < order.index("proc") < order.index("sys")


def test_root_mount_points_refuse_a_target_that_climbs_out():
    binds = (BindMount("/", "/a/../b", True),)
    assert childplan.root_mount_points(RootFS(root="/", binds=binds)) is None


def test_root_mount_points_leave_out_what_lies_below_the_task_dirs_own_mounts_and_nul():
    binds = (BindMount("/", "/secrets/x", True), BindMount("/", "/usr", True))
    points = dict(childplan.root_mount_points(RootFS(root="/", binds=binds), premounted=("secrets", "private")))
    assert "secrets" not in points and "secrets/x" not in points and "usr" in points
    assert childplan.root_mount_points(RootFS(root="/", binds=(BindMount("/", "/a\0b", True),))) is None


def test_the_exec_root_is_built_under_a_umask_of_its_own():
    """Its mount points get the same modes whatever the launcher's umask (spares make them ahead that way)."""
    spec = _spec(rootfs=RootFS(root="/tmp", binds=(BindMount("/usr", "/usr", True),)),
                 namespaces=Namespaces(mount=True, pid=True), umask=0o077)
    ops = childplan.compile_plan(spec, FDS, None).ops
    codes = [op[0] for op in ops]
    first_mount_point = codes.index(childplan._spawn.OP_BIND_BENEATH)
    umasks = [i for i, op in enumerate(ops) if op[0] == childplan._spawn.OP_UMASK]
    assert umasks[0] < first_mount_point and ops[umasks[0]][3] == childplan.ROOT_UMASK
    assert ops[umasks[-1]][3] == 0o077 and umasks[-1] > first_mount_point  # the task's own, after the root
