"""Compile a LaunchSpec into the op list that the C child (isolation/_spawn.c) executes between clone and execve.

The steps and their order are those of `isolation.child.STEPS` (the Python child, kept as the fallback and the
reference); every decision that does not depend on the child's own state is taken here, in the launcher, so the
C side is a plain interpreter of system calls. What differs from the Python child:
- namespaces are created by clone() itself (CLONE_NEWNS/PID/IPC/UTS/NET), so no unshare and no switch of the
  launcher's own pid namespace for children;
- every mount target of the task root (/dev, /proc, /sys, the masks, resolv.conf) is resolved beneath the root
  with openat2, not only the bind targets;
- signal dispositions are reset first (the child shares the launcher's memory and must never run its handlers).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from isolation import caps as capslib
from isolation import landlock
from isolation import sys as ksys
from isolation.launchspec import LaunchSpec, RootFS
from isolation.mounts import DEVICES, resolv_conf_bind

try:
    from isolation import _spawn
except ImportError:  # not built (a source tree without `make`): the launcher falls back to the Python child
    _spawn = None

MOUNT_RO = ksys.MOUNT_ATTR_RDONLY | ksys.MOUNT_ATTR_NOSUID | ksys.MOUNT_ATTR_NODEV
MOUNT_RW = ksys.MOUNT_ATTR_NOSUID | ksys.MOUNT_ATTR_NODEV
MS_PSEUDO = ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC
ID_MAX = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to the kernel
# The launcher is suspended while a child sets up (CLONE_VFORK); one stopped (SIGSTOP by the task it joins) or
# stuck (a hung mount source) is killed by its own timer after this long. A setup takes milliseconds.
SETUP_DEADLINE_S = 5
ROOT_UMASK = 0o022  # while the exec root's mount points are made (the task's own umask is set after)


def available() -> bool:
    return _spawn is not None and os.environ.get("TASKSD_CHILD", "c") != "python"


def clone_into_cgroup_built() -> bool:
    return _spawn is not None and bool(getattr(_spawn, "HAVE_CLONE_INTO_CGROUP", 0))


def probe_spawn(errpipe: int, cgroup_fd: int) -> int:
    """A child cloned into `cgroup_fd` that runs no step and fails its execve (exit 127, reported on errpipe)."""
    return _spawn.spawn(0, errpipe, SETUP_DEADLINE_S, [], b"/nonexistent/tasksd-clone-probe", [b"probe"], [], None,
                        0, cgroup_fd)


@dataclass
class Plan:
    clone_flags: int
    ops: list
    groups: list[int] | None


class _Ops(list):
    """Ops as (code, flags, step, i0, i1, i2, s0, s1, s2, s3), strings as str (os.fsdecode's): spawn() encodes them
    for the extension, and the C launcher's requests carry them as JSON."""

    def add(self, code: str, step: str, *ints: int, s: tuple = (), flags: int = 0) -> None:
        i = (list(ints) + [0, 0, 0])[:3]
        self.append((getattr(_spawn, code), flags, step, *i, *s, *[None] * (4 - len(s))))


def new_namespace_flags(spec: LaunchSpec) -> int:
    """The CLONE_NEW* flags of the namespaces the task gets fresh, but pid: that one applies to children only, so
    the launcher makes it around the fork (or the C child's clone)."""
    ns = spec.namespaces
    flags = 0
    if ns.mount or spec.rootfs or ns.mount_proc:
        flags |= ksys.CLONE_NEWNS
    if ns.ipc:
        flags |= ksys.CLONE_NEWIPC
    if ns.uts:
        flags |= ksys.CLONE_NEWUTS
    if ns.net == "new":
        flags |= ksys.CLONE_NEWNET
    return flags


def compile_plan(spec: LaunchSpec, fds: dict, enter: dict | None, born_in: str | None = None,
                 may_be_born_in: str | None = None) -> Plan:
    """`fds`: stdin, stdout, stderr and errpipe as the launcher opened them; `enter`: the namespace and root fds
    of a running task (exec into it), whose pid namespace the caller enters around the clone; `born_in`: the one
    cgroup.procs of spec.cgroup_procs the child is cloned into (CLONE_INTO_CGROUP), which it need not join;
    `may_be_born_in`: one the C launcher may clone it into (its join is flagged F_BORN_IN, dropped if so)."""
    for k, _ in spec.env:  # execve would pass it on as another variable (or none): refused for both launchers
        if not k or "=" in k:
            raise ValueError(f"illegal environment variable name {k!r}")
    ops = _Ops()
    ns = spec.namespaces
    flags = 0
    if enter is None:
        flags = new_namespace_flags(spec) | (ksys.CLONE_NEWPID if ns.pid else 0)
    if spec.setsid:
        ops.add("OP_SETSID", "new session")
    for procs in spec.cgroup_procs:
        if procs != born_in:
            ops.add("OP_WRITE", "join cgroup", s=(procs, "0"), flags=_spawn.F_BORN_IN if procs == may_be_born_in else 0)
    if enter:
        for name, nstype in (("ipc", ksys.CLONE_NEWIPC), ("uts", ksys.CLONE_NEWUTS), ("net", ksys.CLONE_NEWNET),
                             ("mnt", ksys.CLONE_NEWNS)):
            if name in enter:
                ops.add("OP_SETNS_FD", "enter task", enter[name], nstype)
        ops.add("OP_ENTER_ROOT", "enter task", enter["root"])
    ops.add("OP_WRITE", "oom_score_adj", s=("/proc/self/oom_score_adj", str(spec.oom_score_adj)))
    if enter is None:
        if ns.net not in ("host", "new"):
            ops.add("OP_SETNS_PATH", "namespaces", ksys.CLONE_NEWNET, s=(ns.net,))
        if ns.net == "new":
            ops.add("OP_LOOPBACK_UP", "namespaces")
        if ns.uts and ns.hostname:
            ops.add("OP_SETHOSTNAME", "namespaces", s=(ns.hostname,))
        if spec.rootfs or ns.mount_proc:
            # Nothing we mount may propagate back to the host's mount namespace.
            ops.add("OP_MOUNT", "mounts", ksys.MS_REC | ksys.MS_PRIVATE, s=(None, "/", None, None))
            if spec.rootfs is not None:
                # The root's mount points are made under a umask of our choosing, not the launcher's (which a
                # launcher started by an earlier daemon keeps): spares make them ahead with the same modes.
                ops.add("OP_UMASK", "mounts", ROOT_UMASK)
                _root(ops, spec.rootfs)
            else:
                # exec2: the host filesystem stays, but /proc shows only the task's pid namespace.
                ops.add("OP_MOUNT", "mounts", MS_PSEUDO, s=("proc", "/proc", "proc", None))
    ops.add("OP_UMASK", "umask", spec.umask)
    ops.add("OP_STDIO", "stdio", fds["stdin"], fds["stdout"], fds["stderr"], flags=_spawn.F_CTTY if spec.ctty else 0)
    if spec.no_new_privs or spec.landlock is not None:
        ops.add("OP_NO_NEW_PRIVS", "no_new_privs")
    if spec.landlock is not None:
        _landlock(ops, spec)
    groups = _credentials(ops, spec)
    ops.add("OP_CHDIR", "chdir", s=(spec.cwd,))
    ops.add("OP_CLOSE_FDS", "close fds")
    return Plan(flags, list(ops), groups)


def _root(ops: _Ops, rootfs: RootFS) -> None:
    """The exec driver's root, as isolation.mounts builds it in the Python child."""
    root = os.path.realpath(rootfs.root)
    # pivot_root needs the new root to be a mount point; the task dir (local/, tmp/) is the task's to write.
    ops.add("OP_MOUNT", "mounts", ksys.MS_BIND | ksys.MS_REC, s=(root, root, None, None))
    ops.add("OP_OPEN_ROOT", "mounts", s=(root,))
    ops.add("OP_REMOUNT_ROOT_KEEP", "mounts", ksys.MS_NOSUID | ksys.MS_NODEV)
    for b in rootfs.binds:
        try:
            st = os.stat(b.source)
        except OSError:
            continue  # chroot_env entries that do not exist on this host (lib32...) are skipped, as Nomad does
        device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        # A writable bind of a device node (a task's own /dev/fuse, say) must stay usable.
        attrs = MOUNT_RO if b.readonly else (0 if device else MOUNT_RW)
        ops.add("OP_BIND_BENEATH", f"mounts: bind {b.source}", attrs, s=(b.source, b.target),
                flags=_spawn.F_WANT_DIR if stat.S_ISDIR(st.st_mode) else 0)
    _resolv_conf(ops)
    _dev(ops)
    ops.add("OP_MOUNT_BENEATH", "mounts", MS_PSEUDO, 0o555, s=("proc", "/proc", "proc", None))
    # Before the read-only and masked paths, which lie in /proc and /sys.
    ops.add("OP_MOUNT_BENEATH", "mounts", ksys.MS_RDONLY | MS_PSEUDO, 0o555, s=("sysfs", "/sys", "sysfs", None),
            flags=_spawn.F_SKIP_NEXT_ON_SUCCESS)
    ops.add("OP_BIND_BENEATH", "mounts", MOUNT_RO, s=("/sys", "/sys"), flags=_spawn.F_WANT_DIR)
    for p in rootfs.readonly_paths:
        ops.add("OP_BIND_BENEATH", "mounts", MOUNT_RO, s=(None, p), flags=_spawn.F_NO_CREATE | _spawn.F_ENOENT_OK)
    for p in rootfs.masked_paths:
        # Same kernel inside and out: the host's /proc and /sys say whether a masked path is a directory.
        if os.path.isdir(p):
            ops.add("OP_MOUNT_BENEATH", "mounts", ksys.MS_RDONLY | ksys.MS_NOSUID | ksys.MS_NODEV, 0,
                    s=("tmpfs", p, "tmpfs", "size=0"), flags=_spawn.F_NO_CREATE | _spawn.F_ENOENT_OK)
        elif os.path.exists(p):
            ops.add("OP_BIND_BENEATH", "mounts", 0, s=("/dev/null", p), flags=_spawn.F_NO_CREATE | _spawn.F_ENOENT_OK)
    if rootfs.pivot_root:
        ops.add("OP_PIVOT_ROOT", "mounts")
    else:
        ops.add("OP_MOVE_ROOT", "mounts", s=(root,))


def root_mount_points(rootfs: RootFS, premounted: tuple[str, ...] = ()) -> tuple[tuple[str, int | None], ...] | None:
    """What the exec driver's child creates in the task dir itself, on its filesystem, before mounting on it: the
    mount points of _root's binds and mounts, in the order it makes them, as (path relative to the root, the mode
    it ends up with under ROOT_UMASK for a directory, or None for an empty file, 0644 under it). Paths below an
    earlier mount (/dev's nodes, resolv.conf inside the /etc bind) or below `premounted` (the task dir's own tmpfs
    mounts) are made on that mount, not on disk, and are left out. For spare alloc dirs (isolation.spares) that
    carry them ahead of the start. It reads the host as _root does (which sources exist, files or directories):
    call it at each start. None when _root would make something this cannot describe as plain names."""
    if _spawn is None:
        return None
    ops = _Ops()
    _root(ops, rootfs)
    made: dict[str, int | None] = {}
    mounted: list[str] = list(premounted)
    for code, flags, _step, _i0, i1, _i2, _s0, target, *_ in ops:
        if code not in (_spawn.OP_BIND_BENEATH, _spawn.OP_MOUNT_BENEATH):
            continue
        parts = [c for c in target.split("/") if c]
        if any(c in (".", "..") or "\0" in c for c in parts):
            return None
        rel = "/".join(parts)
        below = any(rel.startswith(m + "/") for m in mounted)
        mounted.append(rel)
        if below or flags & _spawn.F_NO_CREATE or not parts:
            continue
        want_dir = code == _spawn.OP_MOUNT_BENEATH or bool(flags & _spawn.F_WANT_DIR)
        for k in range(1, len(parts) + 1):
            path = "/".join(parts[:k])
            if path in made:
                continue
            if k < len(parts):
                made[path] = 0o755 & ~ROOT_UMASK  # a missing parent: open_beneath makes it 0755
            elif want_dir:
                made[path] = (i1 if code == _spawn.OP_MOUNT_BENEATH else 0o755) & ~ROOT_UMASK
            else:
                made[path] = None  # an empty file, for a bind of a file
    return tuple(made.items())


def _resolv_conf(ops: _Ops) -> None:
    bind = resolv_conf_bind()
    if bind is not None:
        ops.add("OP_BIND_BENEATH", "mounts: resolv.conf", MOUNT_RO, s=bind)


def _dev(ops: _Ops) -> None:
    # nodev too: the devices below are bind mounts of the host's nodes, which keep their own mount's flags.
    ops.add("OP_MOUNT_BENEATH", "mounts: /dev", MS_PSEUDO, 0o755, s=("tmpfs", "/dev", "tmpfs", "mode=755,size=65536k"))
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            ops.add("OP_BIND_BENEATH", "mounts: /dev", 0, s=(f"/dev/{name}", f"/dev/{name}"))
    ops.add("OP_MOUNT_BENEATH", "mounts: /dev", ksys.MS_NOSUID | ksys.MS_NOEXEC, 0o755,
            s=("devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620,gid=5"))
    ops.add("OP_SYMLINK_BENEATH", "mounts: /dev", s=("pts/ptmx", "/dev", "ptmx"))
    ops.add("OP_MOUNT_BENEATH", "mounts: /dev", MS_PSEUDO, 0o1777, s=("shm", "/dev/shm", "tmpfs", "mode=1777,size=65536k"))
    # Without a private ipc namespace (ipc_mode host) the host's mqueue is not ours to show.
    ops.add("OP_MOUNT_BENEATH", "mounts: /dev", MS_PSEUDO, 0o755, s=("mqueue", "/dev/mqueue", "mqueue", None),
            flags=_spawn.F_OPTIONAL)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        ops.add("OP_SYMLINK_BENEATH", "mounts: /dev", s=(target, "/dev", name))


_abi: int | None = None


def _landlock(ops: _Ops, spec: LaunchSpec) -> None:
    global _abi
    if _abi is None or _abi <= 0:
        _abi = landlock.abi_version()
    if _abi <= 0:
        raise OSError(95, f"landlock: {landlock.probe()[1] or 'unavailable'}")
    scoped = landlock.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET if _abi >= 6 else 0
    ops.add("OP_LL_CREATE", "landlock", landlock.handled_access_fs(_abi), scoped, 24 if _abi >= 6 else 8)
    for modes, path in spec.landlock:
        landlock.validate_unveil(modes, path)
        ops.add("OP_LL_RULE", f"landlock: unveil {modes}:{path}", landlock.access_for(modes, True, _abi),
                landlock.access_for(modes, False, _abi), s=(path,),
                flags=_spawn.F_ENOENT_OK if spec.landlock_skip_missing else 0)
    ops.add("OP_LL_RESTRICT", "landlock")


def _credentials(ops: _Ops, spec: LaunchSpec) -> list[int] | None:
    """isolation.caps.apply_caps_and_identity, as ops. Returns the supplementary groups to set (or None)."""
    groups = list(spec.groups) if spec.groups is not None else None
    for what, ids in (("uid", [spec.uid]), ("gid", [spec.gid]), ("groups", groups or [])):
        for i in ids:
            if i is not None and not (isinstance(i, int) and 0 <= i <= ID_MAX):
                # The kernel would truncate it or read -1 as "unchanged": the task could stay root.
                raise ValueError(f"{what} {i!r} is not a valid id")
    if spec.caps is None:
        if groups is not None:
            ops.add("OP_SETGROUPS", "credentials: setgroups")
        if spec.gid is not None:
            ops.add("OP_SETRESGID", f"credentials: setgid({spec.gid})", spec.gid)
        if spec.uid is not None:
            ops.add("OP_SETRESUID", f"credentials: setuid({spec.uid})", spec.uid)
        return groups
    # As isolation.child does: the ids default to ours, the groups to just the gid, and all three are set.
    uid = os.getuid() if spec.uid is None else spec.uid
    gid = os.getgid() if spec.gid is None else spec.gid
    groups = groups if groups is not None else [gid]
    top = capslib.last_cap()
    _, held, _ = capslib.capget()
    want = capslib.caps_mask(c for c in spec.caps if 0 <= c <= top) & held
    ops.add("OP_CAPBSET", "credentials: bounding set", want, top)
    switching = uid != os.geteuid()
    if switching:
        ops.add("OP_KEEPCAPS", "credentials: keepcaps", 1)
    ops.add("OP_SETGROUPS", "credentials: setgroups")
    ops.add("OP_SETRESGID", f"credentials: setgid({gid})", gid)
    ops.add("OP_SETRESUID", f"credentials: setuid({uid})", uid)
    if switching:
        ops.add("OP_KEEPCAPS", "credentials: keepcaps", 0)
    inheritable = want if uid != 0 else 0
    ops.add("OP_CAPSET", "credentials: capset", want, inheritable)
    ops.add("OP_AMBIENT", "credentials: ambient", inheritable, top)
    return groups


def spawn(spec: LaunchSpec, fds: dict, enter: dict | None, fd_limit: int = 0,
          born_in: tuple[str, int] | None = None) -> int:
    """Clone the task's process and run its setup in C; returns once it has exec'd or failed (reported on
    fds["errpipe"]). With fd_limit, every descriptor in `fds` and `enter` is below it and the child keeps only
    those (see isolation._spawn and the launcher's LowSlots). born_in: (one of spec.cgroup_procs, a descriptor of
    its cgroup v2 directory) to clone the child straight into that cgroup; OSError ENOSYS or E2BIG when this
    build or kernel cannot (then the caller spawns without it)."""
    plan = compile_plan(spec, fds, enter, born_in[0] if born_in else None)
    env = [os.fsencode(f"{k}={v}") for k, v in spec.env]
    ops = [(code, flags, step.encode(), i0, i1, i2, *(None if x is None else os.fsencode(x) for x in strs))
           for code, flags, step, i0, i1, i2, *strs in plan.ops]
    return _spawn.spawn(plan.clone_flags, fds["errpipe"], SETUP_DEADLINE_S, ops, os.fsencode(spec.path),
                        [os.fsencode(a) for a in spec.argv], env, plan.groups, fd_limit,
                        born_in[1] if born_in else -1)


# ---- requests to the C launcher (isolation/launcher.c) -------------------------------------------------------

NS_TO_ENTER = ("ipc", "uts", "net", "mnt", "pid")  # the namespaces an exec into a task enters


def namespaces_to_enter(pid: int) -> list[str]:
    """Which of the task's namespaces differ from ours (the launcher's: it runs in the daemon's)."""
    return [n for n in NS_TO_ENTER if os.stat(f"/proc/{pid}/ns/{n}").st_ino != os.stat(f"/proc/self/ns/{n}").st_ino]


def c_launcher_request(op: str, spec: LaunchSpec, slots: dict, v2_prefix: str | None = None, fresh: bool = False,
                       enter: list[str] | None = None, **extra) -> dict:
    """The spawn or exec request of the C launcher: the plan compiled here with the launcher's descriptor slots
    (its ping says which), so the launcher itself never reads a LaunchSpec. clone_into: the task's cgroup v2
    directory, which the launcher may clone the child into; fresh: that cgroup was made for this start (never
    killed, see launcher.py on CLONE_INTO_CGROUP). enter (exec): the task's namespaces to join."""
    fds = {k: slots[k] for k in ("stdin", "stdout", "stderr", "errpipe")}
    enter_fds = None
    if enter is not None:
        enter_fds = {n: slots[n] for n in enter if n != "pid"}
        enter_fds["root"] = slots["root"]
    v2 = next((p for p in spec.cgroup_procs if v2_prefix and p.startswith(v2_prefix)), None) if enter is None else None
    plan = compile_plan(spec, fds, enter_fds, may_be_born_in=v2)
    req = {"op": op, "key": spec.key,
           "plan": {"clone_flags": plan.clone_flags, "ops": plan.ops, "groups": plan.groups},
           "path": spec.path, "argv": list(spec.argv), "env": [f"{k}={v}" for k, v in spec.env],
           "logs": [None if t is None else [t.dir, t.base, t.max_files, t.max_file_size]
                    for t in (spec.stdout, spec.stderr)],
           "clone_into": os.path.dirname(v2) if v2 else None, "fresh": fresh, **extra}
    if enter is not None:
        req["enter"] = [*enter_fds]
        req["pidns"] = "pid" in enter
    return req
