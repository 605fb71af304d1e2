"""Criterion variants sweep from the CLI into one table; bad criterion keys fail in one line.

(Every conf/strategy/*.yaml at its defaults runs in tests/test_strategies.py.)
"""

from __future__ import annotations

import csv
import json

import pytest
from helpers import ONE_THREAD, run_cli


@pytest.mark.parametrize("strategy, key, values", [
    ("gradient", "variant", "snip,taylor,grasp,synflow"),
    ("hessian", "variant", "obd,obs"),
])
def test_variants_sweep_into_one_table(tmp_path, strategy, key, values):
    sweep = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}",
             "train.epochs=2", "finetune.epochs=0", *ONE_THREAD, f"strategy={strategy}",
             f"strategy.{key}={values}", "strategy.amount=0.8", "strategy.scope=layer"],
            cwd=tmp_path)
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert len(rows) == len(values.split(","))
    for i, row in enumerate(rows):
        assert row["status"] == "ok" and row["strategy"] == strategy
        assert float(row["sparsity_mean"]) == pytest.approx(0.8, abs=1e-3)
        config = json.loads((sweep / str(i) / "results.json").read_text())["config"]
        assert config["strategy"][key] in values.split(",")


@pytest.mark.parametrize("overrides, key", [
    (["strategy=gradient", "strategy.variant=nope"], "strategy.variant"),
    (["strategy=hessian", "strategy.estimator=nope"], "strategy.estimator"),
    (["strategy=l0", "strategy.lambda=-1"], "strategy.lambda"),
    (["strategy=l1", "strategy.amount=null"], "strategy.amount"),
])
def test_bad_criterion_keys_fail_in_one_line(tmp_path, overrides, key):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", *overrides], cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and key in lines[0], proc.stderr
