"""The exec driver's root filesystem, built in the child's private mount namespace from read-only bind mounts.

Nomad hard-links or copies every file of chroot_env into every task dir (minutes and disk per task: #1478, #2562,
#18367). Here each chroot_env entry is one bind mount: the cost grows with the number of entries, not files, and
no disk is used. Everything happens after unshare(CLONE_NEWNS) with propagation made private, so the host never
sees these mounts and they vanish with the task.

Runs in the launcher's forked child: no threads, errors are OSErrors naming the path.
"""
from __future__ import annotations

import errno
import os
import stat

from isolation import sys as ksys
from isolation.launchspec import LaunchSpec, RootFS

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
BIND_FLAGS_RO = ksys.MS_BIND | ksys.MS_REMOUNT | ksys.MS_RDONLY | ksys.MS_NOSUID | ksys.MS_NODEV


def setup_in_child(spec: LaunchSpec) -> None:
    # Nothing we mount may propagate back to the host's mount namespace.
    ksys.mount(None, "/", None, ksys.MS_REC | ksys.MS_PRIVATE, None)
    if spec.rootfs is not None:
        _build_root(spec.rootfs, private_pid=spec.namespaces.pid)
        _enter_root(spec.rootfs)
    elif spec.namespaces.mount_proc:
        # exec2: the host filesystem stays, but /proc shows only the task's pid namespace.
        ksys.mount("proc", "/proc", "proc", ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, None)


def _inside(root: str, path: str) -> str:
    """Host path of `path` inside `root`, refusing anything that resolves outside it (a planted symlink)."""
    target = os.path.join(root, path.lstrip("/"))
    real = os.path.realpath(target)
    if real != root and not real.startswith(root + "/"):
        raise OSError(1, "mount target escapes the task root", target)
    return target


def _mountpoint(src: str, target: str) -> None:
    if os.path.isdir(src):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def bind(src: str, target: str, readonly: bool) -> None:
    _mountpoint(src, target)
    ksys.mount(src, target, None, ksys.MS_BIND | ksys.MS_REC, None)
    if readonly:
        ksys.mount(None, target, None, BIND_FLAGS_RO, None)
    elif not _is_device(src):
        _no_dev_no_suid(target)


_BENEATH = ksys.RESOLVE_BENEATH | ksys.RESOLVE_NO_MAGICLINKS


def bind_beneath(root_fd: int, src: str, target: str, readonly: bool) -> None:
    """Bind `src` on `target`, a path inside the directory `root_fd`, in one step that cannot leave it.

    A target can lie in a directory a task writes (/alloc/data, /local: the task's earlier life, or a sibling
    of its group running now). Checking the path and then mounting on it would let a component swapped for a
    symlink in between turn the mount, or the creation of its mount point, into one on the host, as root. So the
    kernel resolves the target beneath the root (openat2 RESOLVE_BENEATH), missing components are created one at
    a time relative to a directory already resolved that way, and the source, cloned as a detached tree and made
    read-only (or nodev,nosuid) before anyone can see it, is attached to that file descriptor."""
    target_fd = _open_target(root_fd, target, os.path.isdir(src))
    try:
        tree = ksys.open_tree_clone(src)
        try:
            if readonly:
                attrs = ksys.MOUNT_ATTR_RDONLY | ksys.MOUNT_ATTR_NOSUID | ksys.MOUNT_ATTR_NODEV
            else:
                # A writable bind of a device node (a task's own /dev/fuse, say) must stay usable.
                attrs = 0 if _is_device(src) else ksys.MOUNT_ATTR_NOSUID | ksys.MOUNT_ATTR_NODEV
            if attrs:
                ksys.mount_setattr_fd(tree, attrs)
            ksys.move_mount_fd(tree, target_fd)
        finally:
            os.close(tree)
    except OSError as e:
        raise OSError(e.errno, f"bind mount {src} on {target}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(target_fd)


def _open_target(root_fd: int, target: str, want_dir: bool) -> int:
    """An O_PATH descriptor of `target` beneath `root_fd`, creating what is missing (directories 0755, a final
    empty file 0644 for a file source). A symlink may lead anywhere inside the root, as a chroot would see it;
    one that leads out of it is an error."""
    parts = [p for p in target.split("/") if p]
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            prefix = "/".join(parts[:i + 1])  # from the root each time, not from `fd`: see the docstring
            try:
                nfd = ksys.openat2(root_fd, prefix, os.O_PATH | os.O_CLOEXEC, _BENEATH)
            except FileNotFoundError:
                # mkdirat and O_CREAT|O_EXCL never follow a symlink in the last component, and whatever is
                # raced in meanwhile is resolved beneath the root by the openat2 after them.
                try:
                    if i == len(parts) - 1 and not want_dir:
                        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                        os.close(os.open(name, flags, 0o644, dir_fd=fd))
                    else:
                        os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = ksys.openat2(root_fd, prefix, os.O_PATH | os.O_CLOEXEC, _BENEATH)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EXDEV, errno.ELOOP):
            raise OSError(errno.EPERM, f"mount target {target} escapes the task root (through a symlink)") from None
        raise OSError(e.errno, f"mount target {target}: {os.strerror(e.errno or 0)}") from None
    return fd


def _is_device(path: str) -> bool:
    mode = os.stat(path).st_mode
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _no_dev_no_suid(target: str) -> None:
    """Remount a writable bind mount nodev and nosuid, keeping its other flags. A device node a task makes there
    (with CAP_MKNOD, given to root tasks or by cap_add) cannot be opened, so it cannot reach a disk."""
    keep = os.statvfs(target).f_flag
    flags = ksys.MS_BIND | ksys.MS_REMOUNT | ksys.MS_NOSUID | ksys.MS_NODEV
    for st_flag, ms_flag in ((os.ST_NOEXEC, ksys.MS_NOEXEC), (os.ST_RDONLY, ksys.MS_RDONLY),
                             (os.ST_NOATIME, ksys.MS_NOATIME), (os.ST_NODIRATIME, ksys.MS_NODIRATIME),
                             (os.ST_RELATIME, ksys.MS_RELATIME)):
        if keep & st_flag:
            flags |= ms_flag
    ksys.mount(None, target, None, flags, None)


def _build_root(rootfs: RootFS, private_pid: bool) -> None:
    root = os.path.realpath(rootfs.root)
    # pivot_root needs the new root to be a mount point.
    ksys.mount(root, root, None, ksys.MS_BIND | ksys.MS_REC, None)
    _no_dev_no_suid(root)  # the task dir: local/ and tmp/ are the task's to write
    # Opened after the bind above, so it names the new mount, where the binds below must land.
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for b in rootfs.binds:
            if not os.path.exists(b.source):
                continue  # chroot_env entries that do not exist on this host (lib32...) are skipped, as Nomad does
            bind_beneath(root_fd, b.source, b.target, b.readonly)
    finally:
        os.close(root_fd)
    _resolv_conf(root)
    _dev(root)
    proc = _inside(root, "/proc")
    os.makedirs(proc, mode=0o555, exist_ok=True)
    ksys.mount("proc", proc, "proc", ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, None)
    # Before the read-only and masked paths: they lie in /proc and /sys (a mask on /sys/firmware put there
    # before sysfs was mounted was hidden under it, i.e. did nothing).
    sys_dir = _inside(root, "/sys")
    os.makedirs(sys_dir, mode=0o555, exist_ok=True)
    try:
        ksys.mount("sysfs", sys_dir, "sysfs", ksys.MS_RDONLY | ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, None)
    except OSError:
        # The host's /sys with its submounts (cgroup, bpf, debugfs...), every one of them read-only.
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            bind_beneath(root_fd, "/sys", "/sys", readonly=True)
        finally:
            os.close(root_fd)
    for p in rootfs.readonly_paths:
        t = _inside(root, p)
        if os.path.exists(t):
            ksys.mount(t, t, None, ksys.MS_BIND | ksys.MS_REC, None)
            ksys.mount(None, t, None, BIND_FLAGS_RO, None)
    for p in rootfs.masked_paths:
        t = _inside(root, p)
        if os.path.isdir(t):
            ksys.mount("tmpfs", t, "tmpfs", ksys.MS_RDONLY | ksys.MS_NOSUID | ksys.MS_NODEV, "size=0")
        elif os.path.exists(t):
            ksys.mount("/dev/null", t, None, ksys.MS_BIND, None)


def resolv_conf_bind() -> tuple[str, str] | None:
    """On Ubuntu /etc/resolv.conf is a symlink into /run, which is not in the chroot: (the host file it leads to,
    the path the symlink names inside the root) to bind there; None when it is not such a symlink."""
    link = "/etc/resolv.conf"
    if not os.path.islink(link):
        return None
    real = os.path.realpath(link)
    if not os.path.isfile(real):
        return None
    target_in_root = os.readlink(link)
    if not os.path.isabs(target_in_root):
        target_in_root = os.path.normpath(os.path.join("/etc", target_in_root))
    return real, target_in_root


def _resolv_conf(root: str) -> None:
    found = resolv_conf_bind()
    if found is None:
        return
    real, target_in_root = found
    t = _inside(root, target_in_root)
    if os.path.isfile(t) and os.path.samefile(t, real):
        return
    bind(real, t, readonly=True)


def _dev(root: str) -> None:
    dev = _inside(root, "/dev")
    os.makedirs(dev, mode=0o755, exist_ok=True)
    # nodev too: the devices below are bind mounts of the host's nodes, which keep their own mount's flags.
    ksys.mount("tmpfs", dev, "tmpfs", ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, "mode=755,size=65536k")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            bind(f"/dev/{name}", f"{dev}/{name}", readonly=False)
    os.makedirs(f"{dev}/pts", mode=0o755)
    ksys.mount("devpts", f"{dev}/pts", "devpts", ksys.MS_NOSUID | ksys.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm", mode=0o1777)
    ksys.mount("shm", f"{dev}/shm", "tmpfs", ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, "mode=1777,size=65536k")
    os.makedirs(f"{dev}/mqueue", mode=0o755)
    try:
        ksys.mount("mqueue", f"{dev}/mqueue", "mqueue", ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC, None)
    except OSError:
        pass  # without a private ipc namespace (ipc_mode host) the host's mqueue is not ours to show
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def _enter_root(rootfs: RootFS) -> None:
    root = os.path.realpath(rootfs.root)
    os.chdir(root)
    if rootfs.pivot_root:
        # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only the new root.
        ksys.pivot_root(".", ".")
        ksys.umount2(".", ksys.MNT_DETACH)
    else:
        ksys.mount(root, "/", None, ksys.MS_MOVE, None)
        os.chroot(".")
    os.chdir("/")
