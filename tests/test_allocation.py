"""Layer allocation (strategy.allocation) against closed forms and brute force."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers import context
from torch import nn

from prunebench.pruning.masks import prunable_weights
from prunebench.strategies import allocation
from prunebench.strategies.l1 import L1
from prunebench.strategies.selection import Selection
from prunebench.strategies.sparsegpt import SparseGPT
from prunebench.strategies.wanda import Wanda


def hand_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 3))


def prune(model, amount, allocation_name, batches=()):
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    ctx = context(batches)
    selection = Selection(L1(), amount=amount, allocation=allocation_name)
    report = selection.prune(model, weights, masks, ctx, amount)
    return report.masks, (selection, report)


@pytest.mark.parametrize("amount", [0.5, 0.9, 0.97])
def test_erk_densities_equal_the_closed_form_and_the_total_is_exact(amount):
    model = hand_model()
    shapes = {n: tuple(w.shape) for n, w in prunable_weights(model).items()}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    # closed form: density = eps * sum(dims) / prod(dims); layers over 1 dense, eps re-solved
    dense, kept = set(), (1 - amount) * total
    for _ in shapes:
        rest = [n for n in shapes if n not in dense]
        eps = (kept - sum(sizes[n] for n in dense)) / sum(sum(shapes[n]) for n in rest)
        dense |= {n for n in rest if eps * sum(shapes[n]) / sizes[n] > 1}
    expected = {n: 1.0 if n in dense else eps * sum(shapes[n]) / sizes[n] for n in shapes}
    got = allocation.erk_densities(shapes, amount)
    for n in shapes:
        assert got[n] == pytest.approx(expected[n], rel=1e-12), n

    masks, _ = prune(model, amount, "erk")
    nonzero = {n: int(m.sum()) for n, m in masks.items()}
    assert total - sum(nonzero.values()) == round(amount * total)  # exact total sparsity
    for n in shapes:  # each layer within one weight of its ERK density
        assert abs(nonzero[n] - expected[n] * sizes[n]) < 1 + 1e-9, n
    if amount == 0.5:
        assert dense, "the small first conv should be kept dense at 50%"


def test_lamp_scores_equal_brute_force_and_rank_globally():
    model = hand_model()
    weights = prunable_weights(model)
    scores = {n: w.detach().abs() for n, w in weights.items()}
    lamp = allocation.lamp_scores(scores)
    for n, s in scores.items():
        values = s.flatten().tolist()
        for i, v in enumerate(values[:60]):
            brute = v * v / sum(u * u for u in values if u >= v)
            assert lamp[n].flatten()[i].item() == pytest.approx(brute, rel=1e-9)
    masks, _ = prune(model, 0.8, "lamp")
    flat = sorted((lamp[n].flatten()[i].item(), n, i) for n in weights
                  for i in range(weights[n].numel()))
    removed = {(n, i) for _, n, i in flat[:round(0.8 * len(flat))]}
    for n, m in masks.items():
        for i, keep in enumerate(m.flatten().tolist()):
            assert keep == (0.0 if (n, i) in removed else 1.0)
    # the largest weight of every layer has LAMP score 1: no layer is ever emptied
    assert all(m.sum() >= 1 for m in masks.values())


def test_owl_lowers_sparsity_where_outliers_are_more_and_hits_the_total():
    model = hand_model()
    with torch.no_grad():  # plant outliers in the second conv: a few huge weights
        model[2].weight[:, :, 1, 1] *= 40
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batches = [(x, torch.zeros(64, dtype=torch.long))]
    masks, (selection, report) = prune(model, 0.8, "owl", batches)
    ratios = report.outlier_ratios
    assert max(ratios, key=ratios.get) == "2.weight"
    # the ratio is the fraction of |W_ij| * ||X_j|| above 5x its mean, by hand for one layer
    w, h = model[4].weight.detach(), nn.Sequential(*model[:4])(x)
    a = w.abs() * h.pow(2).sum(0).sqrt()
    assert ratios["4.weight"] == pytest.approx(float((a > 5 * a.mean()).float().mean()))
    density = {n: float(m.mean()) for n, m in masks.items()}
    assert density["2.weight"] == max(density.values())
    assert all(abs(d - 0.2) <= 2 * selection.owl_lambda + 1e-3 for d in density.values())
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.8 * total)


def test_scope_is_an_alias_and_contradictions_are_one_line(cli):
    assert allocation.resolve("layer", None) == "uniform"
    assert allocation.resolve("global", None) == "global"
    assert allocation.resolve("global", "erk") == "erk"
    model = hand_model()
    uniform, _ = prune(model, 0.6, "uniform")
    layer = Selection(L1(), amount=0.6, scope="layer").select(
        {n: w.abs() for n, w in prunable_weights(model).items()},
        {n: torch.ones_like(w) for n, w in prunable_weights(model).items()}, 0.6)
    assert all(torch.equal(uniform[n], layer[n]) for n in uniform)

    from omegaconf import OmegaConf

    from prunebench.config import checks
    from prunebench.config.errors import ConfigError
    bad = OmegaConf.create({"strategy": {"name": "l1", "amount": 0.5, "scope": "layer",
                                         "allocation": "erk", "granularity": "weight"}})
    with pytest.raises(ConfigError, match="scope=layer contradicts .*allocation=erk"):
        checks.check_strategy(bad, lambda: False)

    results, out = cli(["strategy.allocation=erk", "strategy.amount=0.9"])
    chosen = results["allocation"]
    assert chosen["name"] == "erk"
    layers = {layer["name"]: layer for layer in results["final"]["layers"]}
    for name, density in chosen["densities"].items():
        assert density == pytest.approx(layers[name]["nonzero"] / layers[name]["params"])
    assert results["final"]["sparsity"] == pytest.approx(
        round(0.9 * results["final"]["params"]) / results["final"]["params"])
    assert json.loads((out / "results.json").read_text())["status"] == "ok"


class Block(nn.Module):
    """A residual MLP block: the Linear layers one outlier ratio and one density cover."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Stack(nn.Module):
    def __init__(self, width: int = 8, depth: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def planted_stack():
    """Four blocks; input feature 0 is 20x the others (an outlier feature, as in LLMs'
    activations) and block 2's fc1 weighs input 3 25x: the blocks' outlier ratios differ."""
    torch.manual_seed(0)
    model = Stack()
    with torch.no_grad():
        model.blocks[2].fc1.weight[:, 3] *= 25
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        x = torch.randn(16, 8, generator=g)
        x[:, 0] *= 20
        batches.append((x, torch.zeros(16, dtype=torch.long)))
    return model, batches


def owl_reference(model, x, amount: float, m: float = 5.0, lam: float = 0.08):
    """OWL as its authors' code (lib/prune_all.py, prune_wanda_outlier) computes it, written
    out here: a dense pass gives each block's outlier ratio (the share of |W_ij| * ||X_j||,
    over all the block's Linear layers together, above m x their mean); the ratios are
    min-max scaled to [0, 2 lam] and shifted to mean 1 - amount (one density per block); then
    block by block, inputs read through the blocks pruned before, each output row of each
    Linear loses round((1 - density) * width) of its lowest |W_ij| * ||X_j||."""
    model = copy.deepcopy(model)
    ratios, h = [], x
    with torch.no_grad():
        for block in model.blocks:
            hidden = torch.relu(block.fc1(h))
            metric = torch.cat([(block.fc1.weight.abs() * h.norm(dim=0)).flatten(),
                                (block.fc2.weight.abs() * hidden.norm(dim=0)).flatten()])
            ratios.append(float((metric > m * metric.mean()).float().mean()))
            h = block(h)
        r = torch.tensor(ratios, dtype=torch.float64)
        scaled = (r - r.min()) / (r.max() - r.min()) * 2 * lam
        density = scaled - scaled.mean() + (1 - amount)
        masks, h = {}, x
        for k, block in enumerate(model.blocks):
            hidden = torch.relu(block.fc1(h))  # both layers' inputs before the block is pruned
            for name, layer, inputs in (("fc1", block.fc1, h), ("fc2", block.fc2, hidden)):
                metric = layer.weight.abs() * inputs.norm(dim=0)
                remove = round((1 - float(density[k])) * metric.shape[1])
                keep = torch.ones_like(metric, dtype=torch.bool)
                for row in range(len(metric)):
                    keep[row, torch.argsort(metric[row], stable=True)[:remove]] = False
                masks[f"blocks.{k}.{name}.weight"] = keep
                layer.weight.mul_(keep)
            h = block(h)
    return ratios, density.tolist(), masks


def test_owl_as_published_per_block_densities_and_per_row_selection():
    """allocation=owl with sequential Wanda on a stack of blocks with planted outliers: the
    outlier ratios (one per block), the densities (one per block, shared by its Linears) and
    the per-row masks equal the published formulas computed above; the layers' weights are
    the pruned ones."""
    model, batches = planted_stack()
    x = torch.cat([b[0] for b in batches])
    ratios, density, expected = owl_reference(model, x, 0.5)
    assert len(set(ratios)) > 2  # the planted outliers make the blocks differ
    weights = prunable_weights(model)
    selection = Selection(Wanda(batches=3), amount=0.5, scope="row", allocation="owl")
    ctx = context(batches, model)
    report = selection.prune(model, weights, ctx.masks, ctx, 0.5)
    assert report.blocks == {n: n.rsplit(".", 2)[0] for n in weights}  # blocks.k
    got = [report.outlier_ratios[f"blocks.{k}"] for k in range(4)]
    assert got == pytest.approx(ratios, abs=1e-12)
    summary = selection.summary(report.masks, report)
    assert [summary["block_densities"][f"blocks.{k}"] for k in range(4)] == pytest.approx(
        density, abs=1e-12)
    for name, keep in expected.items():
        assert torch.equal(report.masks[name] > 0, keep), name
        assert torch.equal(weights[name] != 0, keep), name  # pruned in the model, in order


def test_owl_with_sparsegpt_gives_each_layer_its_blocks_density():
    """SparseGPT under allocation=owl (sequential too): the densities are the same dense
    pass's, each layer loses its block's share (whole layer, SparseGPT's own selection),
    and the total is exactly the target."""
    model, batches = planted_stack()
    x = torch.cat([b[0] for b in batches])
    _, density, _ = owl_reference(model, x, 0.5)
    weights = prunable_weights(model)
    selection = Selection(SparseGPT(batches=3, block_size=4), amount=0.5, scope="layer",
                          allocation="owl")
    ctx = context(batches, model)
    masks = selection.prune(model, weights, ctx.masks, ctx, 0.5).masks
    for name, mask in masks.items():
        k = int(name.split(".")[1])
        assert abs(float(mask.sum()) - density[k] * mask.numel()) < 1, name
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.5 * total)
