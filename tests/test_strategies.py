"""Every conf/strategy/*.yaml composes and runs from the CLI, in one sweep like the README's
`prunebench -m strategy=...`: at its own defaults, and again with granularity=neuron, where
each run also writes a compact model matching the masked one."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import ROOT, run_cli

STRATEGIES = sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml"))
TINY = ["train.epochs=1", "finetune.epochs=0", "train.threads=1"]  # strategy keys: defaults


def sweep(tmp_path, *overrides: str) -> tuple[list[dict], list[dict]]:
    """Run one multirun over every strategy; (comparison rows, results.json of each job)."""
    out = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={out}", f"cache.dir={tmp_path / 'cache'}",
             f"strategy={','.join(STRATEGIES)}", *TINY, *overrides], cwd=tmp_path)
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))]
    return rows, results


def test_every_strategy_at_its_defaults_gets_a_row(tmp_path):
    rows, results = sweep(tmp_path)
    assert sorted(r["strategy"] for r in rows) == STRATEGIES
    for r in rows:
        assert r["status"] == "ok", (r["strategy"], r["error"])
        assert 0 < float(r["sparsity_mean"]) < 1, r["strategy"]
    for res in results:
        neuron = res["config"]["strategy"]["granularity"] == "neuron"
        assert ("compact" in res) == neuron, res["config"]["strategy"]["name"]


def test_every_strategy_removes_whole_units_and_compacts(tmp_path):
    rows, results = sweep(tmp_path, "strategy.granularity=neuron", "strategy.scope=layer",
                          "strategy.amount=0.5", "strategy.threshold=null")
    assert sorted(r["strategy"] for r in rows) == STRATEGIES
    assert all(r["status"] == "ok" for r in rows), [(r["strategy"], r["error"]) for r in rows]
    for res in results:
        name, compact = res["config"]["strategy"]["name"], res["compact"]
        assert compact["widths"] == {"1.weight": [128, 256], "3.weight": [64, 128]}, name
        assert compact["params"] == res["final"]["total_nonzero"], name
        assert compact["max_abs_diff"] <= 1e-5, name
        assert "latency" not in compact, name  # inference.measure=false: nothing timed
        assert res["final"]["sparsity"] == pytest.approx(1 - (64 * 128 + 128 * 64 + 64 * 10)
                                                         / (64 * 256 + 256 * 128 + 128 * 10))
