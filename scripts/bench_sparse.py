"""When does a CSR matrix product beat the dense one on this CPU? Layer shapes of real models.

For each weight shape (LeNet-300-100's Linear layers, ResNet-20's convolutions as the matrix
products of their unfolded inputs, a transformer MLP's 768x3072 and 3072x768), each sparsity
(unstructured, random positions), batch 1 and 64 and one thread and the default thread count:
the dense product `W @ X` (torch.mm, MKL) against the CSR product (torch.addmm with a CSR
weight, MKL sparse BLAS: the kernel prunebench's sparse form runs, pruning/sparse.py), each the
median of torch.utils.benchmark blocks, dense and every sparsity timed in turn in one process,
--repeats rounds. Prints a markdown table (median dense µs, CSR µs, dense/CSR as the ratio of
the rounds' medians with a 95% bootstrap interval over the rounds, the ideal 1/(1-s)) and
where CSR starts to win, and writes both as CSV files into --csv-dir (bench_sparse.csv,
bench_sparse_wins.csv, each with its provenance, scripts/benchtable.py; by default
docs/performance/data/, which the documentation's "Inference and sparse kernels" page
includes: rerun it to update the page). `--models` keeps the shapes of some models only.

    python scripts/bench_sparse.py                      # the full table (~2-5 min on 2 cores)
    python scripts/bench_sparse.py --repeats 1 --min-run-time 0.005   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch
from benchtable import DOCS_DATA, ratio, write
from torch.utils import benchmark

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 64)


def shapes() -> list[tuple[str, str, int, int, int]]:
    """(model, layer, out, in, columns per example): the product is (out x in) @ (in x cols)."""
    out = [("lenet300", name, o, i, 1) for name, o, i in
           (("fc1", 300, 784), ("fc2", 100, 300), ("fc3", 10, 100))]
    # ResNet-20 on 32x32: a 3x3 convolution is (out x in*9) @ (in*9 x positions) after unfold
    for name, cin, cout, side in (("stem", 3, 16, 32), ("stage1 conv", 16, 16, 32),
                                  ("stage2 first conv", 16, 32, 16), ("stage2 conv", 32, 32, 16),
                                  ("stage3 first conv", 32, 64, 8), ("stage3 conv", 64, 64, 8)):
        out.append(("resnet20", name, cout, cin * 9, side * side))
    out += [("transformer MLP", "fc 768->3072", 3072, 768, 1),
            ("transformer MLP", "proj 3072->768", 768, 3072, 1)]
    return out


def pruned(rows: int, cols: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=generator)
    return w * (torch.rand(rows, cols, generator=generator) >= sparsity)


def time_us(stmt: str, env: dict, threads: int, min_run_time: float) -> float:
    eval(stmt, env)  # warm-up
    timer = benchmark.Timer(stmt, globals=env, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


@torch.no_grad()
def bench_shape(o: int, i: int, columns: int, batch: int, threads: int, repeats: int,
                min_run_time: float) -> dict:
    """Per-round dense and per-sparsity CSR times (µs) of one product, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(i, columns * batch, generator=g)
    bias = torch.randn(o, 1, generator=g)
    dense = torch.randn(o, i, generator=g)
    csr = {s: pruned(o, i, s, g).to_sparse_csr() for s in SPARSITIES}
    rounds = {"dense": [], **{s: [] for s in SPARSITIES}}
    for _ in range(repeats):
        env = {"torch": torch, "w": dense, "x": x, "b": bias}
        rounds["dense"].append(time_us("torch.addmm(b, w, x)", env, threads, min_run_time))
        for s, w in csr.items():
            env["w"] = w
            rounds[s].append(time_us("torch.addmm(b, w, x)", env, threads, min_run_time))
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.02)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--csv-dir", default=str(DOCS_DATA),
                        help="where bench_sparse.csv and bench_sparse_wins.csv go")
    parser.add_argument("--models", default=None,
                        help="comma-separated: only these models' shapes (e.g. lenet300)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    threads = sorted({1, torch.get_num_threads()})
    print(f"torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}, "
          f"threads {threads}, medians of {args.repeats} interleaved rounds\n")
    print("| model | layer | W (out x in) | cols | batch | threads | sparsity | dense µs "
          "| CSR µs | dense/CSR | ideal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows, wins = [], []
    chosen = args.models.split(",") if args.models else None
    for model, layer, o, i, columns in shapes():
        if chosen and model not in chosen:
            continue
        for batch in BATCHES:
            for t in threads:
                rounds = bench_shape(o, i, columns, batch, t, args.repeats, args.min_run_time)
                dense_us = statistics.median(rounds["dense"])
                first_win = None
                for s in SPARSITIES:
                    csr_us = statistics.median(rounds[s])
                    rows.append({"model": model, "layer": layer, "out": o, "in": i,
                                 "cols": columns * batch, "batch": batch, "threads": t,
                                 "sparsity": s, "dense_us": dense_us, "csr_us": csr_us,
                                 "ratio": dense_us / csr_us,
                                 "interval": ratio(rounds["dense"], rounds[s]),
                                 "ideal": 1 / (1 - s)})
                    if dense_us <= csr_us:
                        first_win = None
                    elif first_win is None:
                        first_win = s
                    print(f"| {model} | {layer} | {o}x{i} | {columns * batch} | {batch} | {t} "
                          f"| {s:g} | {dense_us:.1f} | {csr_us:.1f} | {rows[-1]['interval']} "
                          f"| {1 / (1 - s):.0f} |", flush=True)
                wins.append((model, layer, batch, t, first_win))
    print("\nCSR wins from (lowest sparsity from which dense/CSR > 1 at every higher one):")
    for model, layer, batch, t, s in wins:
        print(f"  {model} {layer}, batch {batch}, {t} thread(s): "
              f"{'never up to 0.99' if s is None else f'{s:g}'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    write(Path(args.csv_dir) / "bench_sparse.csv", [table_row(r) for r in rows])
    write(Path(args.csv_dir) / "bench_sparse_wins.csv", [
        {"model": m, "layer": layer, "batch": b, "threads": t,
         "CSR wins from": "never up to 0.99" if s is None else f"{s:g}"}
        for m, layer, b, t, s in wins])


def table_row(r: dict) -> dict:
    """A row as the printed table and the docs show it."""
    return {"model": r["model"], "layer": r["layer"], "W (out x in)": f"{r['out']}x{r['in']}",
            "cols": r["cols"], "batch": r["batch"], "threads": r["threads"],
            "sparsity": f"{r['sparsity']:g}", "dense µs": f"{r['dense_us']:.1f}",
            "CSR µs": f"{r['csr_us']:.1f}", "dense/CSR": r["interval"],
            "ideal": f"{r['ideal']:.0f}"}


if __name__ == "__main__":
    main()
