"""What every scripts/bench_*.py shares: its table as a CSV file the documentation includes,
with a sidecar saying how, when and on what it was measured, and ratios with their noise.

`write(path, rows)` writes `path` (CSV, the first row's keys as the header) and `path` with
the suffix `.json`: the command that wrote it (with OMP_NUM_THREADS when set), the UTC date,
the git commit of the measured code (`-dirty` when prunebench/, conf/, the script or this file
differ from it), torch's version, the cores and the load average when it finished. The
site's `<!-- prunebench:csv PATH -->` marker (docs/hooks/prunebench_docs.py) prints that under
the table and fails without it, so a table on the site is one a script wrote. Both files are
written atomically (temporary, then rename).

`ratio(numerator_times, denominator_times)` is the latency block's estimator
(prunebench.pruning.latency.paired_speedup) on interleaved repeats, as text: `1.04x [0.98,
1.10]`: since commit 4af334e the median of the paired repeats' ratios with a 95% bootstrap
interval of that median (a load change between repeats cancels within a pair); tables written
before it (their sidecar's commit says) hold the ratio of medians with a paired bootstrap
interval.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from prunebench.pruning.latency import paired_speedup
from prunebench.runstate import files

ROOT = Path(__file__).resolve().parents[1]
# the documentation's benchmark tables (docs/performance/*.md and others include them)
DOCS_DATA = ROOT / "docs" / "performance" / "data"


def ratio(numerator: list[float], denominator: list[float]) -> str:
    """The paired repeats' ratio numerator / denominator with its 95% interval, as the tables
    show it."""
    if len(numerator) < 2:
        return f"{numerator[0] / denominator[0]:.2f}x"
    r = paired_speedup({"dense": list(numerator), "other": list(denominator)}, "other")
    return f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def commit(script: Path) -> str:
    """The short commit of the measured code, `-dirty` if it differs from that commit."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "prunebench", "conf",
                                  str(script), __file__], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changed else "")


def provenance() -> dict:
    """How, when and on what the table was measured (the sidecar's content)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(ROOT)
    except ValueError:
        shown = script
    load = os.getloadavg()
    env = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] \
        if "OMP_NUM_THREADS" in os.environ else []
    return {"command": shlex.join([*env, "python", str(shown), *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit(script), "torch": torch.__version__,
            "cores": len(os.sched_getaffinity(0)),
            "load average": [round(x, 1) for x in load]}


def write(path: str | Path, rows: list[dict]) -> None:
    """The table as CSV at `path` and its provenance beside it (`path` with `.json`)."""
    path = Path(path)
    files.write_csv(path, rows)
    files.write_text(path.with_suffix(".json"), json.dumps(provenance(), indent=1) + "\n")
