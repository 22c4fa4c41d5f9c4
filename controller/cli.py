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


COMMANDS: dict[str, Command] = {
    "validate": Command("check manifests without running them (for CI)", _configure_validate, _run_validate),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasksctl", description="Control and inspect tasksd, the single-node Nomad-jobspec runner."
    )
    parser.add_argument("--version", action="version", version=f"tasksctl {__version__}")
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
