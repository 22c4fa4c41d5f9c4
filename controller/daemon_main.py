"""Placeholder entry point of the `tasksd` daemon until the daemon lands: only --version and --help work."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manifests.version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tasksd", description="Run the Nomad jobspecs of a directory as isolated, supervised tasks."
    )
    parser.add_argument("--version", action="version", version=f"tasksd {__version__}")
    parser.parse_args(argv)
    print("tasksd: the daemon is not implemented yet; try `tasksctl validate`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
