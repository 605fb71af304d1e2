"""Comparison tables: one row per finished run, built from results.json files only.

Reading never instantiates anything from the files: it is plain JSON, so a report over
someone else's folder is safe.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prunebench import io

log = logging.getLogger(__name__)
# piped output gets a wide fixed width rather than rich's 80 columns, so tables stay readable
stdout = Console(width=None if sys.stdout.isatty() else 200)
# a results.json is a few hundred kB at most; anything far larger is not one of ours
MAX_RESULTS_BYTES = 64 * 2**20
# the terminal table leaves out columns the files still have
TERMINAL_SKIP = {"params", "train_s", "prune_s", "finetune_s"}

# (column, header, format) in table order
COLUMNS = [
    ("run", "run", "{}"),
    ("status", "status", "{}"),
    ("model", "model", "{}"),
    ("dataset", "dataset", "{}"),
    ("strategy", "strategy", "{}"),
    ("schedule", "schedule", "{}"),
    ("target", "target", "{}"),
    ("seed", "seed", "{}"),
    ("sparsity", "sparsity", "{:.4f}"),
    ("dense_acc", "dense acc", "{:.4f}"),
    ("pruned_acc", "pruned acc", "{:.4f}"),
    ("final_acc", "final acc", "{:.4f}"),
    ("nonzero", "nonzero", "{:,}"),
    ("grad_max", "max grad norm", "{:.3g}"),
    ("clipped", "clipped", "{:.3f}"),
    ("params", "params", "{:,}"),
    ("train_s", "train s", "{:.1f}"),
    ("prune_s", "prune s", "{:.2f}"),
    ("finetune_s", "finetune s", "{:.1f}"),
    ("total_s", "total s", "{:.1f}"),
    ("error", "error", "{}"),
]


def row(results: dict, run: str) -> dict:
    """Flatten one results.json into a table row (missing phases stay empty)."""
    cfg = results.get("config", {})
    strategy = cfg.get("strategy", {})
    final = results.get("final", {})
    timing = results.get("timing", {})
    amount, threshold = strategy.get("amount"), strategy.get("threshold")
    return {
        "run": run,
        "status": results.get("status"),
        "model": cfg.get("model", {}).get("name"),
        "dataset": cfg.get("dataset", {}).get("name"),
        "strategy": strategy.get("name"),
        "schedule": cfg.get("schedule", {}).get("name"),
        "target": amount if amount is not None else f"t<{threshold}",
        "seed": cfg.get("seed"),
        "sparsity": final.get("sparsity"),
        "dense_acc": results.get("dense", {}).get("accuracy"),
        "pruned_acc": results.get("pruned", {}).get("accuracy"),
        "final_acc": final.get("accuracy"),
        "nonzero": final.get("nonzero"),
        **gradient_health(results.get("gradients") or {}),
        "params": final.get("params"),
        "train_s": timing.get("train_s"),
        "prune_s": timing.get("prune_s"),
        "finetune_s": timing.get("finetune_s"),
        "total_s": timing.get("total_s"),
        "error": results.get("error", ""),
    }


def gradient_health(gradients: dict) -> dict:
    """Largest gradient norm and fraction of clipped steps over all training phases."""
    phases = [p for p in gradients.values() if p and p.get("steps")]
    norms = [p["norm_max"] for p in phases if p.get("norm_max") is not None]
    steps = sum(p["steps"] for p in phases)
    clipped = sum(p["clipped_fraction"] * p["steps"] for p in phases)
    return {"grad_max": max(norms) if norms else None,
            "clipped": clipped / steps if steps else None}


def collect(root: str | Path) -> list[dict]:
    """Rows for every results.json under `root`; unreadable files are reported and skipped."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob("results.json"))
    rows = []
    for path in paths:
        try:
            if path.stat().st_size > MAX_RESULTS_BYTES:
                raise ValueError(f"larger than {MAX_RESULTS_BYTES} bytes")
            results = json.loads(path.read_text())
            if not isinstance(results, dict) or "status" not in results:
                raise ValueError("not a prunebench results.json")
            run = str(path.parent.relative_to(root)) if root.is_dir() else path.parent.name
            rows.append(row(results, run or "."))
        except Exception as err:  # whatever is in the file, the report goes on without it
            log.warning("skipping %s: %s: %s", path, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
    return rows


def _cell(value, fmt: str) -> str:
    if value is None or value == "":
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [_cell(r[c], f).replace("|", "\\|") for c, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c for c, _, _ in COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write(rows: list[dict], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "comparison.md", out_dir / "comparison.csv"]
    io.write_text(paths[0], markdown(rows))
    io.write_text(paths[1], csv_text(rows))
    return paths


def show(rows: list[dict], title: str = "prunebench comparison") -> None:
    skip = TERMINAL_SKIP | ({"error"} if not any(r.get("error") for r in rows) else set())
    columns = [(c, h, f) for c, h, f in COLUMNS if c not in skip]
    table = Table(title=title)
    for column, header, _ in columns:
        numeric = column not in {"run", "status", "model", "dataset", "strategy",
                                 "schedule", "error"}
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric)
    for r in rows:
        style = None if r["status"] == "ok" else "red"
        # cells come from files anyone may have written: escape rich markup like "[/]"
        table.add_row(*[escape(_cell(r[c], f)) for c, _, f in columns], style=style)
    stdout.print(table)


def show_run(results: dict) -> None:
    """One run: a row per phase (dense, pruned, final) and the time each took."""
    timing = results.get("timing", {})
    seconds = {"dense": timing.get("train_s"), "pruned": timing.get("prune_s"),
               "final": timing.get("finetune_s")}
    table = Table(title=f"prunebench: {results.get('status')}")
    for header in ("phase", "accuracy", "loss", "sparsity", "nonzero / params", "time s"):
        table.add_column(header, justify="left" if header == "phase" else "right")
    for phase in ("dense", "pruned", "final"):
        m = results.get(phase)
        if not m:
            continue
        table.add_row(phase, f"{m['accuracy']:.4f}", f"{m['loss']:.4f}", f"{m['sparsity']:.4f}",
                      f"{m['nonzero']:,} / {m['params']:,}", _cell(seconds[phase], "{:.2f}"))
    stdout.print(table)
