"""Sweeps that scale out: the joblib and submitit_local launchers, and the Optuna sweeper.

Each runs the real CLI on the embedded digits data at tiny budgets and reads what it wrote.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml
from helpers import run_cli

from prunebench.results import objective

TINY = ["train.epochs=2", "finetune.epochs=1", "model.hidden=[32]"]


def _results(sweep):
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]


def test_joblib_launcher_divides_threads_and_shares_the_dense_cache(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}", *TINY,
             "strategy=l1,random", "strategy.amount=0.8"], cwd=tmp_path)
    results = _results(sweep)
    assert [r["status"] for r in results] == ["ok", "ok"]
    cores = len(os.sched_getaffinity(0))
    assert {r["config"]["train"]["threads"] for r in results} == {max(1, cores // 2)}
    # the two jobs ran at once on one dense entry: the file lock let one train it
    assert sorted(r["cache"]["hit"] for r in results) == [False, True]
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert sorted(r["strategy"] for r in rows) == ["l1", "random"]
    assert (sweep / "accuracy_sparsity_mlp_digits.png").exists()


def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
             "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}",
             f"cache.dir={tmp_path / 'cache'}", *TINY, "seed=0,1"], cwd=tmp_path)
    results = _results(sweep)
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert sorted(r["config"]["seed"] for r in results) == [0, 1]
    assert {r["config"]["train"]["threads"] for r in results} == {1}  # cpus_per_task
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["seeds"] == "0,1"


def test_optuna_sweeper_searches_the_threshold(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", "+experiment=threshold_search", "hydra.sweeper.n_trials=4",
             f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}", *TINY,
             "objective.min_sparsity=0.5"], cwd=tmp_path)
    results = _results(sweep)
    assert len(results) == 4
    thresholds = [r["config"]["strategy"]["threshold"] for r in results]
    assert len(set(thresholds)) == 4 and all(0.001 <= t <= 0.3 for t in thresholds)
    # what the task returned is the objective of its results; Optuna kept the best of them
    values = [objective.value(r, r["config"]["objective"]) for r in results]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    winner = results[values.index(max(values))]
    assert best["best_params"]["strategy.threshold"] == pytest.approx(
        winner["config"]["strategy"]["threshold"])
    # every phase carries its validation numbers, and the search selected on them
    assert all("validation" in r[phase] for r in results for phase in ("dense", "pruned",
                                                                         "final"))
    # the objective by its definition: the validation accuracy when sparse enough, else minus
    # the shortfall
    assert winner["config"]["objective"]["name"] == "final_accuracy_at_min_sparsity"
    shortfall = 0.5 - winner["final"]["sparsity"]
    expected = winner["final"]["validation"]["accuracy"] if shortfall <= 0 else -shortfall
    assert best["best_value"] == pytest.approx(expected)
    assert (sweep / "comparison.md").exists()
