"""tasksctl: the operator's command line. One function per subcommand, registered in COMMANDS.

Every command but `validate` talks to tasksd over its unix socket: --socket, else $TASKSD_SOCKET, else
/run/tasksd/tasksd.sock (`exec` uses the socket beside it, `tasksd-exec.sock`). Task IDs are `job/group/index/task`
or any unambiguous shortening (`task`, `job/task`, `group/index/task`...).

Exit codes:
  0    success (`plan`: nothing would change)
  1    the command ran and found a problem: an invalid manifest, tasksd not running, an unknown or ambiguous
       task id, a task in the wrong state, a refused request (the message says what to do)
  2    usage errors (bad arguments)
  3    `plan` only: the daemon would change something (like `kubectl diff`, so CI can tell)
  126  `exec` only: the command could not be started in the task
  N    `exec` only: the command's own exit code; 128+S when signal S killed it
  130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from manifests.version import __version__

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CHANGES = 3
EXIT_EXEC_FAILED = 126


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- validate -------------------------------------------------------------------------------------------------


def _configure_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="manifest file, directory of manifests, or - for one manifest on stdin")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")


def _run_validate(args: argparse.Namespace) -> int:
    from manifests.loader import load_bytes, load_file, scan_dir  # keeps `tasksctl --help` fast

    missing = [p for p in args.paths if p != "-" and not os.path.exists(p)]
    if missing:
        for p in missing:
            print(f"tasksctl validate: {p}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    if args.paths.count("-") > 1:
        print("tasksctl validate: '-' (stdin) may be given only once", file=sys.stderr)
        return EXIT_USAGE

    results = []
    for p in args.paths:
        if p == "-":
            results.append(load_bytes(sys.stdin.buffer.read(), "<stdin>"))
        elif os.path.isdir(p):
            files = scan_dir(p)
            if not files and not args.json:
                print(f"{p}: warning: no manifests (*.hcl, *.nomad, *.yaml, *.yml) in this directory",
                      file=sys.stderr)
            results.extend(load_file(f) for f in files)
        else:
            results.append(load_file(p))

    if args.json:
        report = [
            {
                "path": r.path,
                "valid": r.valid,
                "errors": [e.to_dict() for e in r.errors],
                "warnings": [w.to_dict() for w in r.warnings],
            }
            for r in results
        ]
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            for w in r.warnings:
                print(w.format(r.path), file=sys.stderr)
            for e in r.errors:
                print(e.format(r.path))
            if r.valid:
                names = ", ".join(f'job "{n}"' for n in r.names)
                print(f"{r.path}: ok ({names})" if names else f"{r.path}: ok")
    return EXIT_OK if all(r.valid for r in results) else EXIT_INVALID


# -- status ---------------------------------------------------------------------------------------------------

STATUS_COLUMNS = ("ID", "DRIVER", "STATE", "PID", "RESTARTS", "EXIT", "AGE", "LAST ERROR")


def _client(args: argparse.Namespace):
    from controller.client import Client

    return Client(args.socket)


def _configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", help="one task (canonical job/group/index/task, or a unique shortening)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--state-dir", default="/var/lib/tasksd",
                   help="read this state dir directly when the daemon is not running (default /var/lib/tasksd)")


def _offline_status(state_dir: str) -> dict:
    import json as _json

    from controller.controller import TaskRecord
    from controller.store import Store

    store = Store(state_dir, readonly=True)
    try:
        tasks = [TaskRecord.from_row(r).status() for _, r in sorted(store.tasks().items())]
        rejected = [{"path": m["path"], "status": m["status"], "errors": _json.loads(m["errors"])}
                    for m in store.manifests().values() if m["status"] != "applied"]
    finally:
        store.close()
    return {"tasks": tasks, "rejected_manifests": rejected, "offline": True}


def _age(ts: float | None) -> str:
    import time as _time

    if not ts:
        return "-"
    s = int(_time.time() - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _run_status(args: argparse.Namespace) -> int:
    from controller.client import ClientError

    try:
        snap = _client(args).get("/v1/tasks")
    except ClientError as e:
        if e.status is not None or not os.path.exists(os.path.join(args.state_dir, "db", "tasksd.db")):
            print(f"tasksctl status: {e}", file=sys.stderr)
            return EXIT_INVALID
        snap = _offline_status(args.state_dir)
        print(f"tasksctl status: tasksd is not running; showing the last recorded state from {args.state_dir}",
              file=sys.stderr)
    tasks = snap["tasks"]
    if args.id:
        from controller.taskids import match_task_ids

        ids = set(match_task_ids((t["id"] for t in tasks), args.id))
        matches = [t for t in tasks if t["id"] in ids]
        if len(matches) != 1:
            what = "no task" if not matches else "ambiguous task id"
            print(f"tasksctl status: {what} {args.id!r}", file=sys.stderr)
            return EXIT_INVALID
        tasks = matches
    if args.json:
        print(json.dumps(tasks[0] if args.id else snap, indent=2))
        return EXIT_OK
    rows = []
    for t in tasks:
        exit_ = "-" if t["exit_code"] is None else str(t["exit_code"])
        if t.get("signal"):
            exit_ += f" (sig {t['signal']})"
        if t.get("oom_killed"):
            exit_ += " OOM"
        rows.append((t["id"], t["driver"], t["state"], str(t["pid"] or "-"), str(t["restarts"]), exit_,
                     _age(t["started_at"]), (t["last_error"] or "")[:60]))
    widths = [max(len(r[i]) for r in rows + [STATUS_COLUMNS]) for i in range(len(STATUS_COLUMNS))]
    for r in [STATUS_COLUMNS] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for m in snap.get("rejected_manifests", []):
        first = m["errors"][0]["message"] if m["errors"] else "invalid"
        print(f"\nrejected {m['path']}: {first}" + (f" (+{len(m['errors']) - 1} more)" if len(m["errors"]) > 1 else ""))
    return EXIT_OK


def _fail(cmd: str, e: Exception) -> int:
    print(f"tasksctl {cmd}: {e}", file=sys.stderr)
    return EXIT_INVALID


def _quote(ident: str) -> str:
    from urllib.parse import quote

    return quote(ident, safe="/")


def _fmt_ts(ts: float | None) -> str:
    import time as _time

    if not ts:
        return "-"
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.localtime(ts))


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# -- plan -----------------------------------------------------------------------------------------------------


def _configure_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks-dir", metavar="DIR",
                   help="plan this directory instead of the daemon's own tasks dir (e.g. a checkout before a "
                        "GitOps merge)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or ({prefix: {}} if prefix else {})
    return {prefix: obj}


def changed_fields(old: dict | None, new: dict) -> list[str]:
    """Dotted paths of the Task fields that differ (lists compare whole: a changed arg is `config.args`)."""
    a, b = _flatten(old or {}), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def compute_plan(jobs_by_manifest: dict[str, list], running: dict[str, dict]) -> list[dict]:
    """Per task: create / update (with fields) / stop / unchanged. Pure: the daemon's specs come in as data."""
    from reconcilers.desired import desired_tasks, task_instances

    desired = desired_tasks(jobs_by_manifest)
    specs = {tid: t.to_dict() for jobs in jobs_by_manifest.values() for tid, _, _, _, t in task_instances(jobs)}
    out = []
    for tid in sorted(desired.keys() | running.keys()):
        d, r = desired.get(tid), running.get(tid)
        if d is None:
            if r["state"] not in ("stopped", "complete", "failed"):
                out.append({"id": tid, "action": "stop", "fields": []})
            continue
        if r is None or r["task"] is None:
            out.append({"id": tid, "action": "create", "fields": []})
            continue
        fields = changed_fields(r["task"], json.loads(json.dumps(specs[tid])))
        if not fields and r["spec_hash"] not in (None, d.spec_hash):
            fields = ["group network/meta or job meta/type"]
        out.append({"id": tid, "action": "update" if fields else "unchanged", "fields": fields})
    return out


def _run_plan(args: argparse.Namespace) -> int:
    from controller.client import ClientError
    from manifests.loader import load_file, scan_dir

    try:
        snap = _client(args).get("/v1/specs")
    except ClientError as e:
        return _fail("plan", e)
    tasks_dir = args.tasks_dir or snap["tasks_dir"]
    if not os.path.isdir(tasks_dir):
        print(f"tasksctl plan: {tasks_dir}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    running = snap["tasks"]
    jobs_by_manifest: dict[str, list] = {}
    invalid = []
    owner: dict[str, str] = {}
    for f in scan_dir(tasks_dir):
        r = load_file(f)
        if not r.valid:
            invalid.append({"path": r.path, "errors": [e.format(r.path) for e in r.errors]})
            continue
        clash = [j.name for j in r.jobs if j.name in owner]
        if clash:
            invalid.append({"path": r.path, "errors": [f"{r.path}: job {clash[0]!r} is already defined in "
                                                       f"{owner[clash[0]]}"]})
            continue
        for j in r.jobs:
            owner[j.name] = r.path
        jobs_by_manifest[r.path] = list(r.jobs)
    # The daemon keeps the last valid version of an invalid file running: its tasks are not stops.
    kept = {os.path.basename(m["path"]) for m in invalid}
    keep_running = {tid: t for tid, t in running.items()
                    if t["manifest"] and os.path.basename(t["manifest"]) in kept}
    changes = compute_plan(jobs_by_manifest, {k: v for k, v in running.items() if k not in keep_running})
    changes += [{"id": tid, "action": "unchanged", "fields": [], "note": "its manifest is invalid; the running "
                 "version is kept"} for tid in sorted(keep_running)]
    changes.sort(key=lambda c: c["id"])
    if snap.get("draining"):
        changes = [{"id": c["id"], "action": "stop", "fields": [], "note": "tasksd is draining"}
                   for c in changes if c["id"] in running]
    if args.json:
        print(json.dumps({"tasks_dir": tasks_dir, "changes": changes, "invalid": invalid}, indent=2))
    else:
        marks = {"create": "+", "update": "~", "stop": "-", "unchanged": " "}
        for c in changes:
            line = f"{marks[c['action']]} {c['action']:9} {c['id']}"
            if c["fields"]:
                line += f"  ({', '.join(c['fields'])})"
            if c.get("note"):
                line += f"  [{c['note']}]"
            print(line)
        for m in invalid:
            for e in m["errors"]:
                print(f"invalid: {e}")
        n = {a: sum(1 for c in changes if c["action"] == a) for a in marks}
        print(f"\nPlan for {tasks_dir}: {n['create']} to create, {n['update']} to update, {n['stop']} to stop, "
              f"{n['unchanged']} unchanged" + (f"; {len(invalid)} invalid manifest(s)" if invalid else ""))
    if invalid:
        return EXIT_INVALID
    return EXIT_CHANGES if any(c["action"] != "unchanged" for c in changes) else EXIT_OK


# -- logs -----------------------------------------------------------------------------------------------------


def _configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="task id (or a unique shortening)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the task writes (Ctrl-C ends)")
    p.add_argument("--stderr", action="store_true", help="the task's stderr instead of its stdout")
    p.add_argument("-n", "--tail", type=int, default=-1, metavar="N",
                   help="only the last N lines (across rotated files); default: the whole active file")


def _run_logs(args: argparse.Namespace) -> int:
    from controller.client import ClientError

    q = f"stream={'stderr' if args.stderr else 'stdout'}&tail={args.tail}" + ("&follow=1" if args.follow else "")
    out = sys.stdout.buffer
    try:
        for chunk in _client(args).stream(f"/v1/logs/{_quote(args.id)}?{q}"):
            out.write(chunk)
            out.flush()
    except ClientError as e:
        return _fail("logs", e)
    return EXIT_OK


# -- signal, restart, drain -----------------------------------------------------------------------------------


def _configure_signal(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="task id (or a unique shortening)")
    p.add_argument("signal", help="signal name or number: HUP, SIGUSR1, 15...")


def _run_signal(args: argparse.Namespace) -> int:
    from controller.client import ClientError

    sig = args.signal
    if sig.isdigit():
        import signal as _signal

        try:
            sig = _signal.Signals(int(sig)).name
        except ValueError:
            print(f"tasksctl signal: {sig} is not a signal number", file=sys.stderr)
            return EXIT_USAGE
    try:
        r = _client(args).post(f"/v1/signal/{_quote(args.id)}", {"signal": sig})
    except ClientError as e:
        return _fail("signal", e)
    print(f"sent {r['signal']} to {r['id']}")
    return EXIT_OK


def _configure_restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="task id (or a unique shortening)")
    p.add_argument("--timeout", type=float, default=120.0, help="how long to wait for the new process (s)")
    p.add_argument("--no-wait", action="store_true", help="return once the restart is requested")


def _run_restart(args: argparse.Namespace) -> int:
    import time as _time

    from controller.client import ClientError

    client = _client(args)
    try:
        r = client.post(f"/v1/restart/{_quote(args.id)}")
    except ClientError as e:
        return _fail("restart", e)
    tid, old = r["id"], r["old_pid"]
    print(f"restarting {tid}" + (f" (pid {old})" if old else ""), flush=True)
    if args.no_wait:
        return EXIT_OK
    deadline = _time.monotonic() + args.timeout
    last_state = None
    while True:
        try:
            t = client.get(f"/v1/tasks/{_quote(tid)}")
        except ClientError as e:
            return _fail("restart", e)
        if t["state"] == "running" and t["pid"] and t["pid"] != old:
            print(f"{tid} running again (pid {t['pid']})")
            return EXIT_OK
        if t["state"] in ("failed", "complete") and not t["pid"]:
            print(f"tasksctl restart: {tid} is {t['state']}: {t.get('last_error') or 'see tasksctl events'}",
                  file=sys.stderr)
            return EXIT_INVALID
        if t["state"] != last_state:
            print(f"  waiting: {t['state']}" + (f" ({t['last_error']})" if t.get("last_error") else ""), flush=True)
            last_state = t["state"]
        if _time.monotonic() > deadline:
            print(f"tasksctl restart: {tid} not running again after {args.timeout:g}s (state {t['state']}); "
                  f"see `tasksctl events --task {tid}`", file=sys.stderr)
            return EXIT_INVALID
        _time.sleep(0.2)  # polling a local socket: the operator sees progress, not a busy loop


def _configure_drain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _run_drain(args: argparse.Namespace) -> int:
    from controller.client import ClientError

    try:
        r = _client(args).post("/v1/drain")
    except ClientError as e:
        return _fail("drain", e)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"draining: stopping {r['tasks']} task(s); tasksd exits when all are stopped and collected. "
              f"Start tasksd again to run them.")
    return EXIT_OK


# -- events ---------------------------------------------------------------------------------------------------


def _configure_events(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen")
    p.add_argument("--json", action="store_true", help="JSON (a list; with -f one object per line)")
    p.add_argument("--task", help="only this task's events")
    p.add_argument("-n", "--limit", type=int, default=100, help="how many past events (default 100)")


def format_event(ev: dict) -> str:
    subject = ev.get("task_id") or ev.get("manifest") or "tasksd"
    return f"{_fmt_ts(ev.get('ts'))}  {ev['type']:18} {subject}: {ev['message']}"


def _run_events(args: argparse.Namespace) -> int:
    from controller.client import ClientError

    q = f"limit={args.limit}" + (f"&task={_quote(args.task)}" if args.task else "")
    client = _client(args)
    try:
        if not args.follow:
            evs = client.get(f"/v1/events?{q}")
            if args.json:
                print(json.dumps(evs, indent=2))
            else:
                for ev in evs:
                    print(format_event(ev))
            return EXIT_OK
        buf = b""
        for chunk in client.stream(f"/v1/events?{q}&follow=1"):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                print(line.decode() if args.json else format_event(json.loads(line)), flush=True)
    except ClientError as e:
        return _fail("events", e)
    return EXIT_OK


# -- stats ----------------------------------------------------------------------------------------------------


def _configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", help="only this task")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between the two samples cpu %% is computed from (default 1)")


def cpu_percent(first: dict, second: dict) -> float | None:
    """CPU use between two samples of the same cgroup, in % of one CPU (200 = two CPUs busy)."""
    a, b = first.get("cpu_usage_ns"), second.get("cpu_usage_ns")
    dt = second["sampled_at"] - first["sampled_at"]
    if a is None or b is None or dt <= 0 or b < a:
        return None
    return round((b - a) / 1e9 / dt * 100, 1)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _run_stats(args: argparse.Namespace) -> int:
    import time as _time

    from controller.client import ClientError

    client = _client(args)
    try:
        tid = client.get(f"/v1/tasks/{_quote(args.id)}")["id"] if args.id else None
        first = {s["id"]: s for s in client.get("/v1/stats")}
        _time.sleep(max(0.05, args.interval))  # the sampling interval cpu % is measured over
        second = client.get("/v1/stats")
    except ClientError as e:
        return _fail("stats", e)
    rows = []
    for s in second:
        if tid and s["id"] != tid:
            continue
        prev = first.get(s["id"])
        rows.append({"id": s["id"], "pid": s.get("pid"),
                     "cpu_percent": cpu_percent(prev, s) if prev and prev.get("pid") == s.get("pid") else None,
                     "cpu_seconds": s["cpu_usage_ns"] / 1e9 if s.get("cpu_usage_ns") is not None else None,
                     "memory_current": s.get("memory_current"), "memory_peak": s.get("memory_peak"),
                     "pids": s.get("pids"), "oom_kills": s.get("oom_kills")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    _table(("ID", "CPU%", "MEM", "PEAK", "PIDS", "OOM"),
           [(r["id"], "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}", _human(r["memory_current"]),
             _human(r["memory_peak"]), str(r["pids"] if r["pids"] is not None else "-"),
             str(r["oom_kills"] or 0)) for r in rows])
    return EXIT_OK


# -- exec -----------------------------------------------------------------------------------------------------


def _configure_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="run the command on a terminal (a pty relayed by "
                                                            "tasksctl, in raw mode)")
    p.add_argument("id", help="task id (or a unique shortening)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")


def _run_exec(args: argparse.Namespace) -> int:
    from controller.client import Client, ClientError, run_exec

    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        print("tasksctl exec: no command given (tasksctl exec [-i] [-t] ID -- CMD...)", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.socket)
    try:
        return run_exec(client.socket_path, args.id, argv, interactive=args.interactive, tty=args.tty)
    except ClientError as e:
        print(f"tasksctl exec: {e}", file=sys.stderr)
        return EXIT_INVALID if e.status != 422 else EXIT_EXEC_FAILED


COMMANDS: dict[str, Command] = {
    "validate": Command("check manifests without running them (for CI)", _configure_validate, _run_validate),
    "status": Command("show tasks (through the daemon, or from the state dir when it is down)",
                      _configure_status, _run_status),
    "plan": Command("show what tasksd would do with a tasks dir: create / update (which fields) / stop",
                    _configure_plan, _run_plan),
    "logs": Command("print (or follow) a task's stdout or stderr", _configure_logs, _run_logs),
    "signal": Command("send a signal to a task's main process", _configure_signal, _run_signal),
    "restart": Command("restart a task now (not counted by its restart policy) and wait for the new process",
                       _configure_restart, _run_restart),
    "exec": Command("run a command inside a running task (its namespaces, cgroup, user and confinement)",
                    _configure_exec, _run_exec),
    "events": Command("show (or follow) the event log: manifests applied/rejected, starts, exits, restarts...",
                      _configure_events, _run_events),
    "stats": Command("cpu %%, memory and pids per task, from its cgroup", _configure_stats, _run_stats),
    "drain": Command("stop every task, collect every alloc, and exit tasksd", _configure_drain, _run_drain),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasksctl", description="Control and inspect tasksd, the single-node Nomad-jobspec runner."
    )
    parser.add_argument("--version", action="version", version=f"tasksctl {__version__}")
    parser.add_argument("--socket", default=None,
                        help="tasksd's API socket (default $TASKSD_SOCKET or /run/tasksd/tasksd.sock)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help.replace("%%", "%"))
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args._run(args)
    except BrokenPipeError:  # `tasksctl ... | head` is not an error
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
