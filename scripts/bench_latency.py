"""A prunebench run's `latency` block as a table: dense, masked and deployed-form ms per forward
and the speedup with its 95% interval, at every batch size and thread count it measured.

Runs `prunebench OVERRIDES inference.measure=true` --runs times, one after another, each in a
folder of its own under a temporary directory (with the dense cache there: the dense model is
trained once, so the runs differ only in what the latency block measured), and writes a row
per run, batch and thread count to --csv (default docs/performance/data/bench_latency.csv,
which the "Inference and sparse kernels" page includes), with its provenance beside it
(scripts/benchtable.py). The speedup is the run's own: the deployed form against dense, the
ratio of median interleaved rounds with a bootstrap interval (pruning/latency.py).

    python scripts/bench_latency.py [--runs 1] [OVERRIDES ...]

Without OVERRIDES: the inference page's LeNet-300-100 command,
`+experiment=lenet300_fashion_mnist strategy.amount=0.95 train.epochs=3 finetune.epochs=2
train.threads=null` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchtable import DOCS_DATA, write

LENET = ["+experiment=lenet300_fashion_mnist", "strategy.amount=0.95", "train.epochs=3",
         "finetune.epochs=2", "train.threads=null"]


def run(overrides: list[str], folder: Path, cache: Path) -> dict:
    """One prunebench run with the latency block on; its results.json."""
    command = [sys.executable, "-m", "prunebench", *overrides, "inference.measure=true",
               f"hydra.run.dir={folder}", f"cache.dir={cache}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_latency: the run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((folder / "results.json").read_text())


def rows(number: int, results: dict) -> list[dict]:
    """The table's rows of one run: one per batch size and thread count."""
    latency, final = results["latency"], results["final"]
    metric = ("accuracy", final["accuracy"]) if "accuracy" in final else (
        "perplexity", final["perplexity"])
    out = []
    for b in latency["batches"]:
        for t in latency["threads"]:
            s = latency["speedups"][f"batch_{b}"][f"threads_{t}"]
            dense, masked, deployed = (latency["forms"].get(form, {}).get(f"batch_{b}", {}).get(
                f"threads_{t}") for form in ("dense", "masked", s["form"]))
            out.append({"run": number, "batch": b, "threads": t,
                        "dense ms": f"{dense:.4g}", "masked ms": f"{masked:.4g}",
                        "deployed ms": f"{deployed:.4g}" if deployed is not None else "",
                        "speedup [95%]": f"{s['ratio']:.2f}x [{s['low']:.2f}, {s['high']:.2f}]",
                        "form": s["form"], f"final {metric[0]}": f"{metric[1]:.4f}",
                        "sparsity": f"{final['sparsity']:.4f}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="identical runs, one after another")
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_latency.csv"))
    parser.add_argument("overrides", nargs="*", help="prunebench overrides (default: LeNet)")
    args = parser.parse_args()
    overrides = args.overrides or LENET
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, args.runs + 1):
            these = rows(i, run(overrides, Path(tmp) / f"run{i}", Path(tmp) / "cache"))
            for row in these:
                print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            table += these
    write(args.csv, table)


if __name__ == "__main__":
    main()
