"""Activation scores against an independent computation: hooks on the nets' ReLU modules."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import context
from test_structured import conv_net, image_batches, ready
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.pruning.masks import Masks
from prunebench.strategies.activation import Activation
from prunebench.strategies.selection import Selection


def relu_outputs(model: nn.Sequential, batches) -> list[torch.Tensor]:
    """Each nn.ReLU module's output over the batches, in model order."""
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    seen: dict[nn.Module, list] = {m: [] for m in relus}
    handles = [m.register_forward_hook(lambda m, i, o: seen[m].append(o)) for m in relus]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return [torch.cat(seen[m]) for m in relus]


def reference(a: torch.Tensor, variant: str, bins: int = 8) -> torch.Tensor:
    """Per-channel statistic, one channel at a time, with torch.histc for the entropy."""
    scores = []
    for c in range(a.shape[1]):
        v = a[:, c]
        if variant == "mean":
            scores.append(v.abs().mean())
        elif variant == "apoz":
            scores.append(1 - (v == 0).float().mean())
        else:
            per_sample = v.flatten(1).mean(1) if v.dim() > 1 else v
            counts = torch.histc(per_sample, bins, float(per_sample.min()),
                                 float(per_sample.max()))
            p = counts / counts.sum()
            scores.append(-sum(float(q) * math.log(q) for q in p if q > 0))
    return torch.tensor([float(s) for s in scores])


@pytest.mark.parametrize("variant", ["mean", "apoz", "entropy"])
def test_scores_equal_hook_reference(variant):
    model = ready(conv_net())
    ctx = context(image_batches(3))
    strategy = Activation(variant=variant, batches=2, bins=8)
    masks = Masks(model)
    ctx.model = model
    ctx.units = Selection(strategy, granularity="neuron").trace(model, image_batches(1)[0][0])
    scores = strategy.score_units(masks.weights, ctx)
    expected = relu_outputs(model, list(ctx.batches())[:2])  # batches=2 of the 3
    for name, a in zip(("0.weight", "3.weight", "7.weight"), expected, strict=True):
        torch.testing.assert_close(scores[name], reference(a, variant), rtol=1e-5, atol=1e-5)


def test_apoz_prunes_the_units_that_are_mostly_zero():
    model = ready(conv_net())
    with torch.no_grad():
        model[7].bias[:4] = -100.0  # four hidden units that never fire
    selection = Selection(Activation(variant="apoz"), granularity="neuron", scope="layer")
    masks = Masks(model)
    ctx = context(image_batches())
    masks.update(selection.prune(model, masks.weights, masks.masks, ctx, 4 / 12).masks)
    masks.apply()
    gone = (model[7].weight == 0).all(1)
    assert gone[:4].all() and not gone[4:].any()


def test_weight_granularity_gives_each_weight_its_unit_score():
    model = ready(conv_net())
    strategy = Activation(variant="mean")
    masks = Masks(model)
    ctx = context(image_batches())
    ctx.model = model
    ctx.units = Selection(strategy).trace(model, image_batches(1)[0][0])
    scores = strategy.score(masks.weights, ctx)
    units = strategy.score_units(masks.weights, ctx)
    for name, w in masks.weights.items():
        assert scores[name].shape == w.shape
        assert torch.equal(scores[name].flatten(1)[:, 0], units[name])


@pytest.mark.parametrize("kwargs", [{"variant": "nope"}, {"batches": 0}, {"bins": 1}])
def test_bad_settings_name_the_key(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Activation(**kwargs)
