"""Cost of an experiment tracker: a digits run with logger=mlflow against logger=none.

Both run in this one process through prunebench.runner.run, interleaved round by round (so
machine load hits them alike); each round is a whole run (dense training, pruning,
fine-tuning, evaluation, results.json), each in a fresh folder and with the dense cache off.
The MLflow store is SQLite, made (tables migrated) and the client imported before timing, as
in a sweep where it already exists; what is timed is what a run adds: its MLflow run, params,
per-epoch metrics, summary, artifacts. Reported: the median wall time of each and the ratio
of medians with a 95% bootstrap interval over the rounds.

    python scripts/bench_loggers.py [--rounds 3] [--epochs 10] [--loggers mlflow,tensorboard]

The table also goes to --csv (default docs/performance/data/bench_loggers.csv, which the
documentation's "Experiment tracking" page includes), with its provenance beside it
(scripts/benchtable.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from benchtable import DOCS_DATA, ratio, write
from hydra import compose, initialize_config_module

from prunebench import runner
from prunebench.config import schema


def config(logger: str, store: str, epochs: int):
    overrides = [f"logger={logger}", "cache.enabled=false", f"train.epochs={epochs}",
                 f"finetune.epochs={epochs // 2}"]
    if logger == "mlflow":
        overrides.append(f"logger.tracking_uri={store}")
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--loggers", default="mlflow")
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_loggers.csv"))
    args = parser.parse_args()
    schema.register()
    logging.basicConfig(level=logging.WARNING)
    loggers = ["none", *args.loggers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        from mlflow.tracking import MlflowClient  # import and tables before timing

        MlflowClient(store).search_experiments()
        configs = {name: config(name, store, args.epochs) for name in loggers}
        runner.run(configs["none"], Path(tmp) / "warmup")
        times: dict[str, list[float]] = {name: [] for name in loggers}
        for i in range(args.rounds):
            for name in loggers:
                start = time.perf_counter()
                results = runner.run(configs[name], Path(tmp) / f"{name}_{i}")
                times[name].append(time.perf_counter() - start)
                assert results["status"] == "ok"
    base = statistics.median(times["none"])
    epochs = args.epochs + args.epochs // 2
    print(f"digits MLP, {epochs} epochs per run (dense {args.epochs}, fine-tuning "
          f"{args.epochs // 2}), medians of {args.rounds} rounds")
    rows = []
    for name in loggers:
        median = statistics.median(times[name])
        text = ratio(times[name], times["none"])
        print(f"  logger={name:12s} {median:7.2f} s  {text}  "
              f"(+{(median - base) / epochs * 1000:.0f} ms per epoch)")
        rows.append({"logger": name, "epochs per run": epochs,
                     "run s per round": ", ".join(f"{t:.1f}" for t in times[name]),
                     "median s": f"{median:.1f}", "ratio to none": text})
    write(args.csv, rows)


if __name__ == "__main__":
    main()
