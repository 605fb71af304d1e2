"""`prunebench-report PATH`: the comparison table of every finished run under PATH."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prunebench.console import log_handler
from prunebench.results import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prunebench-report",
        description="Build comparison.md and comparison.csv from a folder tree of runs.")
    parser.add_argument("path", type=Path, help="a sweep folder, a run folder, or any tree")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the tables (default: PATH itself)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, handlers=[log_handler()], format="%(message)s")

    if not args.path.exists():
        print(f"prunebench-report: error: {args.path} does not exist", file=sys.stderr)
        return 2
    rows = table.collect(args.path)
    if not rows:
        print(f"prunebench-report: error: no results.json under {args.path}", file=sys.stderr)
        return 1
    out = args.out or (args.path if args.path.is_dir() else args.path.parent)
    paths = table.write(rows, out)
    table.show(rows, title=f"comparison: {args.path}")
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
