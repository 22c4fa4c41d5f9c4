"""`tasksd`: the daemon. Wires config, state store, runtime (launcher + cgroups), drivers, watcher, API, and runs
the reconcile loop until SIGTERM/SIGINT — after which tasks keep running (as Nomad and kubelet leave them), and
the next start re-adopts them."""
from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from manifests.version import __version__

log = logging.getLogger("tasksd")

DEFAULT_CONFIG = "/etc/tasksd/config.hcl"
DEFAULT_TASKS_DIR = "/etc/tasks.d"
DEFAULT_STATE_DIR = "/var/lib/tasksd"
DEFAULT_SOCKET = "/run/tasksd/tasksd.sock"


@dataclass(frozen=True)
class Args:
    config: str | None
    tasks_dir: str
    state_dir: str
    socket: str
    log_format: str
    log_level: str


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="tasksd",
        description="Converge this machine to the Nomad jobspecs in a directory: isolated, supervised tasks.")
    p.add_argument("--version", action="version", version=f"tasksd {__version__}")
    p.add_argument("--config", help=f"agent config file (HCL or YAML; default {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--tasks-dir", default=DEFAULT_TASKS_DIR, help=f"manifests directory (default {DEFAULT_TASKS_DIR})")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"state directory (default {DEFAULT_STATE_DIR})")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"API unix socket (default {DEFAULT_SOCKET})")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def parse_args(argv: Sequence[str] | None) -> Args:
    loaded_before = {m for m in ("argparse", "gettext") if m in sys.modules}
    args = Args(**vars(build_parser().parse_args(argv)))
    # argparse and gettext are 0.5 MB of a 20 MB daemon and are done with once the flags are read: out of
    # sys.modules, they are freed with the parser. Only when this call loaded them: a process that had them
    # before (a test runner) holds references that a second copy of the module would not match.
    for name in ("argparse", "gettext"):
        if name not in loaded_before:
            sys.modules.pop(name, None)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A blocked mask is inherited from whoever started us (a CI runner here blocked nearly everything): SIGTERM
    # and SIGHUP must reach our handlers. Before any thread exists, so every thread starts with this mask.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    from isolation.sys import fix_mmap_threshold, limit_malloc_arenas

    # Before any thread exists (a thread picks its arena at its first malloc). Two, not one: sqlite and file I/O
    # allocate with the GIL released, so two threads can be in malloc at once, and two arenas kept nearly all of
    # the saving of one (bench/converge.py, 1000 tasks: PSS 57 MB with either, 60-80 MB uncapped).
    limit_malloc_arenas(2)
    fix_mmap_threshold()
    from controller import logsetup

    logsetup.setup(args.log_format, getattr(logging, args.log_level.upper()))
    from manifests.agent_config_load import ConfigError, load_agent_config

    config_path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        config = load_agent_config(config_path)
    except ConfigError as e:
        print(f"tasksd: invalid config:\n{e}", file=sys.stderr)
        return 2
    return Daemon(config, config_path, args).run()


class Daemon:
    def __init__(self, config, config_path: str | None, args: Args):
        self.config = config
        self.config_path = config_path
        self.args = args
        self.state_dir = Path(args.state_dir).resolve()
        self.tasks_dir = str(Path(args.tasks_dir).absolute())
        self.loop_done = threading.Event()

    def run(self) -> int:
        from controller import sdnotify
        from controller.api import Api
        from controller.controller import Controller
        from controller.store import Store
        from controller.watcher import DirWatcher
        from isolation.drivers import make_drivers
        from isolation.runtime import Runtime

        self.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)
        lock = os.open(self.state_dir / "tasksd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("another tasksd already runs with state dir %s", self.state_dir)
            return 1
        try:
            runtime = Runtime(self.state_dir, cgroup_parent=self.config.cgroup_parent,
                              spare_dirs=self.config.spare_alloc_dirs)
            for problem in runtime.open():
                log.warning("runtime: %s", problem)
        except Exception as e:  # noqa: BLE001 - the message is what the operator needs
            log.error("cannot start the task runtime: %s", e)
            return 1
        drivers = make_drivers(runtime, self.config)
        for name, d in drivers.items():
            h = d.fingerprint()
            log.info("driver %s: %s", name, "healthy" if h.healthy else f"unavailable: {h.reason}")
        try:
            store = Store(self.state_dir)
        except (OSError, sqlite3.Error) as e:
            # Read-only or full state dir at start: say so and exit; running tasks (and the launcher) are separate
            # processes and keep running, and the next start (systemd's Restart=always) re-adopts them.
            log.error("cannot open the state store in %s: %s (is the state dir read-only or full?); "
                      "tasks keep running", self.state_dir / "db", e)
            runtime.close()
            return 1
        ctl = Controller(self.config, self.tasks_dir, store, runtime, drivers)
        self.ctl = ctl
        watcher = DirWatcher(self.tasks_dir, lambda: ctl.wake("watch"), early=runtime.expect_start)
        api = Api(ctl, self.args.socket, self.config.socket_group, self.config.metrics_address)

        def on_term(signum, frame):
            log.info("received %s: exiting; tasks keep running and are re-adopted on the next start",
                     signal.Signals(signum).name)
            ctl.stop_loop()

        def on_hup(signum, frame):
            threading.Thread(target=self.reload, name="reload", daemon=True).start()

        # A signal sent to the process is taken by whichever thread the kernel picks, and that thread's C handler
        # only flags it: the Python handler runs on the main thread once it executes bytecode again. A main thread
        # asleep on a lock would sleep through it (a SIGHUP was lost this way under load), so it sleeps on the
        # wakeup fd, which that C handler writes to from any thread.
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        try:
            watcher.start()
        except OSError as e:
            log.warning("cannot watch %s (%s); relying on the periodic resync", self.tasks_dir, e)
        api.start()
        loop = threading.Thread(target=self._loop, args=(ctl, wake_w), name="reconcile")
        loop.start()

        def ready():
            ctl.ready.wait()
            sdnotify.notify(f"READY=1\nSTATUS=running {len(ctl.records)} tasks from {self.tasks_dir}")
            log.info("ready: %d tasks from %s; API on %s", len(ctl.records), self.tasks_dir, self.args.socket)
            interval = sdnotify.watchdog_interval()
            while interval and loop.is_alive():
                # Only a live reconcile loop pets the watchdog: a wedged loop gets us restarted by systemd.
                try:
                    ctl.call(lambda: None, timeout=interval)
                    sdnotify.notify("WATCHDOG=1")
                except Exception:  # noqa: BLE001
                    pass
                loop.join(interval)

        threading.Thread(target=ready, name="notify", daemon=True).start()
        # No timeout: a signal or the loop's end writes to the wakeup fd, so an idle daemon never wakes here.
        while not self.loop_done.is_set():  # not loop.is_alive(): the thread outlives its last write to the fd
            select.select([wake_r], [], [])
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
        loop.join()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        sdnotify.notify("STOPPING=1")
        watcher.stop()
        api.stop()
        ctl.pool.shutdown(wait=True)
        drained = ctl.draining
        if drained:
            runtime.shutdown_launcher()
            if runtime.spares is not None:
                runtime.spares.clear()
            # Drain means "remove everything tasksd made": the task cgroups went with their allocs, now the parent.
            if not runtime.cgroups.remove_parent():
                log.warning("drain: task cgroups remain below %s", runtime.cgroups.parent_paths)
        else:
            runtime.close()
        store.close()
        return 1 if ctl.failure else 0

    def _loop(self, ctl, wake_w: int) -> None:
        try:
            ctl.run()
        except Exception:  # noqa: BLE001
            log.exception("reconcile loop crashed; exiting (tasks keep running)")
            ctl.failure = "the reconcile loop crashed"
        finally:
            self.loop_done.set()
            try:
                os.write(wake_w, b"\0")  # the main thread waits on this fd
            except BlockingIOError:
                pass  # full: the main thread has bytes to wake on already

    def reload(self) -> None:
        from manifests.agent_config_load import ConfigError, load_agent_config

        try:
            config = load_agent_config(self.config_path)
        except ConfigError as e:
            log.error("SIGHUP: config not reloaded:\n%s", e)
            return
        ctl = self.ctl

        def apply():
            ctl.config = config
            if ctl.runtime.spares is not None:
                ctl.runtime.spares.target = config.spare_alloc_dirs
            for d in ctl.drivers.values():
                d.config = config
            if ctl.scanner.strict != config.strict_manifest_permissions:
                # Files refused (or let through) under the old rule are judged again: no cached verdict stands.
                ctl.scanner.strict = config.strict_manifest_permissions
                ctl.scanner.forget()
                ctl.wake("config")
            ctl._full_pending = True  # grace periods and plugin settings may have changed for every task
            ctl.event("config_reloaded", f"reloaded {self.config_path or 'defaults'}")

        ctl.call(apply)


if __name__ == "__main__":
    sys.exit(main())
