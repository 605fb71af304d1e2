"""`prunebench-report PATH`: the comparison of every finished run under PATH.

    prunebench-report outputs/multirun/... [--group-by strategy,target] [--where model=lenet300]
                      [--baseline l1] [--format md|csv|json|html] [--plot] [--out DIR]

`--format html` writes comparison.html: one self-contained page (tables, embedded plots,
each run's config).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from pathlib import Path

from prunebench.console import log_handler
from prunebench.results import stats, table


def build(path: Path, out: Path, *, group_by: list[str] | None = None,
          where: list[str] | None = None, baseline: str | None = "l1",
          formats: tuple[str, ...] = ("md", "csv", "json"), plot: bool = True,
          title: str | None = None, check_baseline: bool = False) -> list[Path]:
    """Collect, group, write the tables (and plots); shared by the CLI and the sweep callback.

    Returns the paths written; raises FileNotFoundError when there is nothing to report and
    UnknownName for a --group-by key (or a checked --baseline) no run has.
    """
    rows = table.where(table.collect(path), where or [])
    if not rows:
        raise FileNotFoundError(f"no results.json under {path}"
                                + (f" matching {' '.join(where)}" if where else ""))
    check_names(rows, group_by, baseline if check_baseline else None)
    rows = table.with_columns(rows, group_by)
    groups = stats.group(rows, tuple(group_by) if group_by else None, baseline)
    paths = table.write(groups, out, tuple(f for f in formats if f != "html"))
    if "html" in formats:
        from prunebench.results import html

        paths.append(html.write(rows, groups, out, title or f"comparison: {path}"))
    if plot:
        from prunebench.results import plots  # matplotlib loads only when plotting

        paths += plots.write_all(rows, groups, out)
    table.show(groups, title=title or f"comparison: {path}")
    return paths


class UnknownName(LookupError):
    """A --group-by key or --baseline strategy that no run has."""


def check_names(rows: list[dict], group_by: list[str] | None, baseline: str | None) -> None:
    known = {k for r in rows for k in r if not k.startswith("_")} | {
        k for r in rows for k in r.get("_config", {})}
    for key in group_by or []:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else \
                "a column (strategy, target, seed, ...) or a dotted config key"
            raise UnknownName(f"--group-by {key}: no run has it ({hint})")
    strategies = sorted({str(r.get("strategy")) for r in rows})
    if baseline is not None and baseline not in strategies:
        raise UnknownName(f"--baseline {baseline}: no run uses it (strategies here: "
                        f"{', '.join(strategies)}; 'none' skips the test)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prunebench-report",
        description="Comparison tables (mean ± std over seeds, paired tests against a "
                    "baseline strategy) and plots from a folder tree of runs.")
    parser.add_argument("path", type=Path, help="a sweep folder, a run folder, or any tree")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the tables (default: PATH itself)")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated keys (columns or dotted config keys) to group "
                             "on; default: runs that differ only in seed")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose column or dotted config key equals VALUE "
                             "(repeatable)")
    parser.add_argument("--baseline", default=None,
                        help="strategy for the paired test (default l1; 'none' to skip)")
    parser.add_argument("--format", default="md,csv,json",
                        help="comma-separated subset of md,csv,json,html (default: md,csv,"
                             "json; html is one self-contained page with the plots)")
    parser.add_argument("--plot", action="store_true", help="also write PNG plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, handlers=[log_handler()], format="%(message)s")

    def fail(message: str, code: int) -> int:
        print(f"prunebench-report: error: {message}", file=sys.stderr)
        return code

    if not args.path.exists():
        return fail(f"{args.path} does not exist", 2)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("md", "csv", "json", "html")]
    if bad or not formats:
        return fail(f"--format {args.format} is invalid: choose from md, csv, json, html", 2)
    bad = [w for w in args.where if "=" not in w]
    if bad:
        return fail(f"--where {bad[0]} is invalid: use KEY=VALUE", 2)
    group_by = [k.strip() for k in args.group_by.split(",")] if args.group_by else None
    given = args.baseline is not None and args.baseline.lower() != "none"
    baseline = args.baseline if given else (None if args.baseline else "l1")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        return fail(f"--out {args.out} is a file: give a folder for the tables", 2)
    out = args.out or (args.path if args.path.is_dir() else args.path.parent)
    try:
        paths = build(args.path, out, group_by=group_by, where=args.where, baseline=baseline,
                      formats=formats, plot=args.plot, check_baseline=given)
    except FileNotFoundError as err:
        return fail(str(err), 1)
    except UnknownName as err:
        return fail(str(err), 2)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
