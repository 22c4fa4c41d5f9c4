"""tasksctl: the operator's command line. One function per subcommand, registered in COMMANDS.

Exit codes: 0 success, 1 the command ran and found a problem (e.g. an invalid manifest), 2 usage errors.
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

        matches = [t for t in tasks if t["id"] == args.id or t["id"].split("/")[-len(args.id.split("/")):] ==
                   args.id.split("/")]
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


COMMANDS: dict[str, Command] = {
    "validate": Command("check manifests without running them (for CI)", _configure_validate, _run_validate),
    "status": Command("show tasks (through the daemon, or from the state dir when it is down)",
                      _configure_status, _run_status),
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
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
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
