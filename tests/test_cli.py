"""The CLI end to end in subprocesses: single run, multirun with table, report, bad inputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import checkpoint_accuracy, run_cli

PHASE_KEYS = {"accuracy", "loss", "params", "nonzero", "sparsity", "layers"}


def test_single_run_writes_contract(cli):
    results, out = cli(["strategy.amount=0.8"])
    assert results["status"] == "ok"
    assert results["config"]["strategy"]["amount"] == 0.8
    for phase in ("dense", "pruned", "final"):
        assert PHASE_KEYS <= results[phase].keys(), phase
        assert results[phase]["accuracy"] == pytest.approx(
            checkpoint_accuracy(results, out / "checkpoints" / f"{phase}.pt")), phase
        for layer in results[phase]["layers"]:
            assert {"name", "params", "nonzero"} <= layer.keys()
    assert {"train_s", "prune_s", "finetune_s", "total_s"} <= results["timing"].keys()
    assert results["final"]["sparsity"] == pytest.approx(0.8, abs=1e-4)

    # checkpoints are plain state_dicts; pruned weights are exact zeros, counts agree
    for phase in ("dense", "pruned", "final"):
        state = torch.load(out / "checkpoints" / f"{phase}.pt", weights_only=True)
        weights = [v for k, v in state.items() if k.endswith("weight")]
        nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
        assert nonzero == results[phase]["nonzero"], phase
    pruned = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    for k, w in pruned.items():
        if k.endswith("weight"):
            assert torch.all(final[k][w == 0] == 0), k  # fine-tuning held the masks


def test_overrides_layer_scope_and_seed(cli):
    results, _ = cli(["strategy=random", "strategy.amount=0.9", "strategy.scope=layer",
                      "finetune.epochs=2", "seed=1"])
    assert results["config"]["seed"] == 1
    assert len(results["history"]["finetune"]) == 2
    for layer in results["final"]["layers"]:
        assert layer["params"] - layer["nonzero"] == round(0.9 * layer["params"])


def test_prune_at_initialization_with_zero_epochs(cli):
    results, _ = cli(["train.epochs=0", "finetune.epochs=3", "strategy.amount=0.5"])
    assert results["status"] == "ok" and results["history"]["train"] == []
    assert results["final"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert results["final"]["accuracy"] > results["dense"]["accuracy"]  # trained after pruning


def test_help_and_cfg_job(tmp_path):
    assert "strategy" in run_cli(["--help"], cwd=tmp_path).stdout
    job = run_cli(["--cfg", "job", "strategy=random"], cwd=tmp_path).stdout
    assert "name: random" in job and "amount:" in job


@pytest.mark.parametrize("override, key", [
    ("strategy.amount=1.5", "strategy.amount"),
    ("train.epochs=-1", "train.epochs"),
    ("strategy=nope", "strategy"),
    ("model=nope", "model"),
    ("strategy.threshold=0.1", "strategy.threshold"),
])
def test_bad_input_one_line_nonzero_exit(tmp_path, override, key):
    out = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'c'}", override],
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not (out / "checkpoints").exists()  # nothing ran
    results = out / "results.json"
    assert not results.exists() or json.loads(results.read_text())["status"] == "failed"


def test_multirun_writes_comparison_and_reuses_dense_cache(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}",
                    "train.epochs=2", "finetune.epochs=1", "strategy=l1,random",
                    "strategy.amount=0.5,0.9"], cwd=tmp_path)
    assert "comparison" in proc.stdout
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert len(rows) == 4
    assert {(r["strategy"], float(r["target"])) for r in rows} == {
        (s, a) for s in ("l1", "random") for a in (0.5, 0.9)}
    for r in rows:
        assert r["status"] == "ok"
        assert r["n"] == "1" and r["sparsity_std"] == ""  # one seed: a mean and no spread
        assert float(r["sparsity_mean"]) == pytest.approx(float(r["target"]), abs=1e-4)
    table_lines = [line for line in (sweep / "comparison.md").read_text().splitlines()
                   if line.startswith("|")]
    assert len(table_lines) == 6  # header, rule, 4 rows

    # one dense training for the whole sweep: one cache entry, three hits
    hits = [json.loads((sweep / str(i) / "results.json").read_text())["cache"]["hit"]
            for i in range(4)]
    assert sorted(hits) == [False, True, True, True]
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    dense = {json.loads((sweep / str(i) / "results.json").read_text())["dense"]["accuracy"]
             for i in range(4)}
    assert len(dense) == 1

    # the report CLI rebuilds the same table from the folder, elsewhere with --out
    report = tmp_path / "report"
    run_cli([str(sweep), "--out", str(report)], cwd=tmp_path, script="prunebench-report")
    assert (report / "comparison.csv").read_text() == (sweep / "comparison.csv").read_text()


def test_report_over_several_sweeps_and_single_runs(cli, tmp_path):
    cli(["strategy.amount=0.5"], name="runs/a")
    cli(["strategy=random"], name="runs/b")
    proc = run_cli([str(tmp_path / "runs")], cwd=tmp_path, script="prunebench-report")
    rows = list(csv.DictReader((tmp_path / "runs" / "comparison.csv").open()))
    assert sorted(r["run"] for r in rows) == ["a", "b"]
    assert "random" in proc.stdout


def test_two_jobs_racing_on_one_cache_entry(tmp_path):
    """Started together, one job trains and saves; the other waits on the lock and loads."""
    import subprocess

    from helpers import BIN

    procs = [subprocess.Popen([str(BIN / "prunebench"), f"hydra.run.dir={tmp_path / str(i)}",
                               f"cache.dir={tmp_path / 'cache'}", "train.epochs=3",
                               "finetune.epochs=0"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    results = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in range(2)]
    assert sorted(r["cache"]["hit"] for r in results) == [False, True]
    assert results[0]["dense"] == results[1]["dense"]
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # no half-written leftovers
