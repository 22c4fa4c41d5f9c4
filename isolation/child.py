"""The launcher's child: turn a forked copy of the launcher into the task, in one strictly ordered sequence.

Ordering is security: joining the cgroup first makes every later allocation accounted; namespaces and mounts need
root, so they come before credentials are dropped; Landlock is applied while its paths can still be opened;
capabilities and the uid change come last but one; and nothing may run between the last step and execve.
Each step is one function; `STEPS` is the order, visible in one place (as runc's libcontainer does it).

Runs in a forked child of the single-threaded launcher: no threads, no logging, failures are reported through the
error pipe as JSON {"step", "errno", "message"} and the child exits 127.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import signal
import termios  # imported here, not in the step: after entering a chroot the stdlib is out of reach

from isolation.childplan import new_namespace_flags
from isolation.launchspec import LaunchSpec


class StepError(Exception):
    def __init__(self, step: str, err: int, message: str):
        super().__init__(message)
        self.step, self.errno, self.message = step, err, message


def _new_session(spec: LaunchSpec, fds: dict) -> None:
    if spec.setsid:
        os.setsid()


def write_procs(path: str, pid: int = 0) -> None:
    """Move process `pid` (0: the caller) into the cgroup of `path` (a cgroup.procs file): one write() on a plain
    O_WRONLY descriptor (no O_CREAT: a missing file is an error, not a new regular file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


def _join_cgroups(spec: LaunchSpec, fds: dict) -> None:
    for procs in spec.cgroup_procs:
        write_procs(procs)


def _enter_task(spec: LaunchSpec, fds: dict) -> None:
    """exec into a running task: its namespaces and its root, after joining its cgroup (which the task's root may
    not show)."""
    enter = fds.get("enter")
    if not enter:
        return
    from isolation import sys as ksys

    flags = {"ipc": ksys.CLONE_NEWIPC, "uts": ksys.CLONE_NEWUTS, "net": ksys.CLONE_NEWNET, "mnt": ksys.CLONE_NEWNS}
    for name in ("ipc", "uts", "net", "mnt"):
        if name in enter:
            ksys.setns(enter[name], flags[name])
    os.fchdir(enter["root"])
    os.chroot(".")


def _oom_score_adj(spec: LaunchSpec, fds: dict) -> None:
    # Always written: the launcher may run at -1000 (as a systemd service can) and children inherit it.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(spec.oom_score_adj))


def _namespaces(spec: LaunchSpec, fds: dict) -> None:
    ns = spec.namespaces
    from isolation import sys as ksys

    flags = new_namespace_flags(spec)
    if ns.net not in ("host", "new"):
        fd = os.open(ns.net, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ksys.setns(fd, ksys.CLONE_NEWNET)
        finally:
            os.close(fd)
    if flags:
        ksys.unshare(flags)
    if ns.net == "new":
        ksys.loopback_up()
    if ns.uts and ns.hostname:
        ksys.sethostname(ns.hostname)


def _mounts(spec: LaunchSpec, fds: dict) -> None:
    if not (spec.rootfs or spec.namespaces.mount_proc):
        return
    from isolation import mounts

    mounts.setup_in_child(spec)


def _umask(spec: LaunchSpec, fds: dict) -> None:
    os.umask(spec.umask)


def _stdio(spec: LaunchSpec, fds: dict) -> None:
    for target, fd in enumerate((fds["stdin"], fds["stdout"], fds["stderr"])):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
        else:
            os.set_inheritable(fd, True)
    if spec.ctty:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _no_new_privs(spec: LaunchSpec, fds: dict) -> None:
    if spec.no_new_privs or spec.landlock is not None:
        from isolation import sys as ksys

        ksys.set_no_new_privs()


def _landlock(spec: LaunchSpec, fds: dict) -> None:
    if spec.landlock is None:
        return
    from isolation import landlock

    ruleset = landlock.build_ruleset(list(spec.landlock), skip_missing=spec.landlock_skip_missing)
    try:
        landlock.restrict_self(ruleset)
    finally:
        os.close(ruleset)


def _credentials(spec: LaunchSpec, fds: dict) -> None:
    if spec.caps is not None:
        from isolation import caps

        uid = spec.uid if spec.uid is not None else os.getuid()
        gid = spec.gid if spec.gid is not None else os.getgid()
        groups = list(spec.groups) if spec.groups is not None else [gid]
        caps.apply_caps_and_identity(frozenset(spec.caps), uid, gid, groups)
        return
    if spec.groups is not None:
        os.setgroups(list(spec.groups))
    if spec.gid is not None:
        os.setgid(spec.gid)
    if spec.uid is not None:
        os.setuid(spec.uid)


def _chdir(spec: LaunchSpec, fds: dict) -> None:
    os.chdir(spec.cwd)


def _signals(spec: LaunchSpec, fds: dict) -> None:
    # Python ignores SIGPIPE and SIGXFSZ and the launcher has handlers: a task must start with the defaults.
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        # getsignal is a table lookup; only the few non-default ones cost a syscall.
        current = signal.getsignal(sig)
        if current is signal.SIG_DFL or current is None:
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _close_fds(spec: LaunchSpec, fds: dict) -> None:
    from isolation import sys as ksys

    keep = fds["errpipe"]
    # close_range to the top: a descriptor above 65535 (RLIMIT_NOFILE allows more) would reach the task otherwise.
    if keep > 3:
        ksys.close_range(3, keep - 1)
    ksys.close_range(keep + 1)  # also the namespace fds of "enter task"


STEPS = (
    ("new session", _new_session),
    ("join cgroup", _join_cgroups),
    ("enter task", _enter_task),
    ("oom_score_adj", _oom_score_adj),
    ("namespaces", _namespaces),
    ("mounts", _mounts),
    ("umask", _umask),
    ("stdio", _stdio),
    ("no_new_privs", _no_new_privs),
    ("landlock", _landlock),
    ("credentials", _credentials),
    ("chdir", _chdir),
    ("signals", _signals),
    ("close fds", _close_fds),
)


def run(spec: LaunchSpec, fds: dict) -> None:
    """Never returns: execs the task or exits 127 after reporting the failed step on fds["errpipe"]."""
    step = "start"
    gc.disable()  # a collection here would only write to copy-on-write pages shared with the launcher
    try:
        for step, fn in STEPS:
            fn(spec, fds)
        step = "execve"
        os.execve(spec.path, list(spec.argv), dict(spec.env))
    except BaseException as e:  # noqa: BLE001 - anything here must become a report, never a traceback
        err = getattr(e, "errno", None) or errno.EINVAL
        msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{msg}: {e.filename}"
        try:
            os.write(fds["errpipe"], json.dumps({"step": step, "errno": err, "message": msg}).encode())
        finally:
            os._exit(127)
