"""Cost of an experiment tracker: a digits run with logger=mlflow against logger=none.

Both run in this one process through prunebench.runner.run, interleaved round by round (so
machine load hits them alike); each round is a whole run (dense training, pruning,
fine-tuning, evaluation, results.json), each in a fresh folder and with the dense cache off.
The MLflow store is SQLite, made (tables migrated) and the client imported before timing, as
in a sweep where it already exists; what is timed is what a run adds: its MLflow run, params,
per-epoch metrics, summary, artifacts. Reported: the best wall time of each and their ratio.

    python scripts/bench_loggers.py [--rounds 3] [--epochs 10] [--loggers mlflow,tensorboard]

The table also goes to --csv (default docs/performance/data/bench_loggers.csv, which the
documentation's "Experiment tracking" page includes).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from prunebench import runner
from prunebench.config import schema
from prunebench.runstate import files

# the documentation's benchmark tables (docs/usage/tracking.md includes this one)
DOCS_DATA = Path(__file__).resolve().parents[1] / "docs" / "performance" / "data"


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
    base = min(times["none"])
    epochs = args.epochs + args.epochs // 2
    print(f"digits MLP, {epochs} epochs per run (dense {args.epochs}, fine-tuning "
          f"{args.epochs // 2}), best of {args.rounds} rounds")
    rows = []
    for name in loggers:
        best = min(times[name])
        print(f"  logger={name:12s} {best:7.2f} s  x{best / base:.3f}  "
              f"(+{(best - base) / epochs * 1000:.0f} ms per epoch)")
        rows.append({"logger": name, "best run": f"{best:.1f} s", "ratio": f"{best / base:.2f}"})
    files.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
