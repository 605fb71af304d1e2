"""strategy.exclude and a model's dense_by_default leave layers dense, counted by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import context
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.models.mlp import MLP
from prunebench.pruning.masks import Masks, prunable_weights, sparsity_report
from prunebench.strategies.l1 import L1
from prunebench.strategies.selection import Selection


class Net(nn.Module):
    dense_by_default = ("head",)  # as a language model declares its LM head

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.classifier = nn.Linear(4, 3)
        self.head = nn.Linear(3, 3)


def test_exclude_patterns_and_dense_by_default_are_skipped():
    model = Net()
    assert list(prunable_weights(model)) == ["features.0.weight", "features.2.weight",
                                             "classifier.weight"]
    # a pattern matches the layer name or its weight's name, whole
    assert list(prunable_weights(model, [".*classifier.*"])) == ["features.0.weight",
                                                                 "features.2.weight"]
    assert list(prunable_weights(model, ["features.0"])) == ["features.2.weight",
                                                             "classifier.weight"]
    assert list(prunable_weights(model, ["features"])) == ["features.0.weight",
                                                           "features.2.weight",
                                                           "classifier.weight"]
    masks = Masks(model, ["features\\..*"])
    assert list(masks.weights) == ["classifier.weight"]
    report = sparsity_report(model, ["features\\..*"])
    assert report["params"] == 12  # classifier 4x3 only
    assert report["total_params"] == sum(p.numel() for p in model.parameters())


def test_cli_exclude_leaves_the_classifier_dense(cli):
    # mlp on digits: 1.weight 64x256, 3.weight 256x128, 5.weight (classifier) 128x10
    results, out = cli(["strategy=l1", "strategy.amount=0.5", "strategy.exclude=[.*5]"])
    prunable = 64 * 256 + 256 * 128
    final = results["final"]
    assert [layer["name"] for layer in final["layers"]] == ["1.weight", "3.weight"]
    assert final["params"] == prunable
    assert final["nonzero"] == prunable - round(0.5 * prunable)
    weights = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    assert int(torch.count_nonzero(weights["5.weight"])) == 128 * 10


def test_exclude_at_neuron_granularity_keeps_every_unit():
    torch.manual_seed(0)
    model = MLP((64,), 10)  # 1.weight 64->256, 3.weight 256->128, 5.weight (classifier)
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    ctx = context([(x, y)])
    selection = Selection(L1(), amount=0.5, granularity="neuron", exclude=["1"])
    masks = Masks(model, selection.exclude)
    new = selection.prune(model, masks.weights, masks.masks, ctx, 0.5).masks
    assert list(masks.weights) == ["3.weight", "5.weight"]
    assert bool(new["3.weight"].any(1).sum() == 128 - 64)  # half of the only removable layer
    assert "1.weight" not in new and bool(new.get("1.bias", torch.ones(1)).all())


def test_bad_exclude_pattern_names_the_key():
    with pytest.raises(ConfigError, match="strategy.exclude"):
        Selection(L1(), amount=0.5, exclude=["a("])
