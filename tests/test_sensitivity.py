"""prunebench-sensitivity: one layer pruned at a time, from one cached dense model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from torch.nn.utils import prune

from prunebench.data.digits import load as load_digits
from prunebench.models.mlp import MLP


def test_sensitivity_matches_pruning_by_hand_and_reuses_the_dense_model(tmp_path):
    common = ["model=lenet300", "train.epochs=2", "train.threads=1",
              f"cache.dir={tmp_path / 'cache'}"]
    run_cli([*common, "--amounts", "0.5,0.9", "--out", str(tmp_path / "a")], tmp_path,
            script="prunebench-sensitivity")
    out = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    meta, rows = out["meta"], out["rows"]
    assert (tmp_path / "a" / "sensitivity.png").stat().st_size > 0
    assert "| 3.weight |" in (tmp_path / "a" / "sensitivity.md").read_text()
    assert not meta["cache_hit"] and meta["split"] == "val"
    assert {(r["layer"], r["amount"]) for r in rows} == {
        (n, a) for n in ("1.weight", "3.weight", "5.weight") for a in (0.5, 0.9)}

    # by hand: the dense weights, layer 3 alone pruned to 90% by torch.nn.utils.prune
    data = load_digits()
    model = MLP(data.input_shape, data.num_classes, hidden=[300, 100])
    model.load_state_dict(torch.load(tmp_path / "a" / "checkpoints" / "dense.pt",
                                     weights_only=True))
    prune.l1_unstructured(model[3], "weight", amount=0.9)
    model.eval()
    shape = (1, -1, 1, 1)  # the loader's normalization, per channel
    with torch.no_grad():
        x = (data.val.x.float() - (data.mean * data.scale).view(shape)) / (
            data.std * data.scale).view(shape)
        accuracy = (model(x).argmax(1) == data.val.y).float().mean().item()
    row = next(r for r in rows if r["layer"] == "3.weight" and r["amount"] == 0.9)
    assert row["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert row["accuracy"] == pytest.approx(accuracy)

    run_cli([*common, "--amounts", "0.5", "--out", str(tmp_path / "b")], tmp_path,
            script="prunebench-sensitivity")
    again = json.loads((tmp_path / "b" / "sensitivity.json").read_text())
    assert again["meta"]["cache_hit"] and again["meta"]["dense"] == meta["dense"]
