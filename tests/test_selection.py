"""Selection against independent references: brute force and torch.nn.utils.prune."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import context, tiny_layers
from torch import nn
from torch.nn.utils import prune

from prunebench.pruning.masks import prunable_weights
from prunebench.strategies.l1 import L1
from prunebench.strategies.ranking import bottom_k, select_by_amount
from prunebench.strategies.selection import Selection


def l1_masks(model, amount, scope="global"):
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    selection = Selection(L1(), amount=amount, scope=scope)
    return selection.prune(model, weights, masks, context(), amount).masks


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_global_l1_matches_brute_force_and_torch_prune(amount):
    model = tiny_layers()
    ours = l1_masks(model, amount)

    # brute force: rank every weight by |w| with a plain Python sort
    weights = prunable_weights(model)
    entries = [(abs(v), name, i) for name, w in weights.items()
               for i, v in enumerate(w.detach().flatten().tolist())]
    k = round(amount * len(entries))
    pruned = {(name, i) for _, name, i in sorted(entries)[:k]}
    for name, w in weights.items():
        expected = torch.tensor([0.0 if (name, i) in pruned else 1.0
                                 for i in range(w.numel())]).view_as(w)
        assert torch.equal(ours[name], expected), name

    # torch.nn.utils.prune's global_unstructured L1 on the same weights
    reference = tiny_layers()
    modules = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=amount)
    for (module, _), name in zip(modules, weights, strict=False):
        assert torch.equal(module.weight_mask, ours[name]), name


def test_layer_scope_hits_target_in_every_layer():
    model = tiny_layers()
    for amount in (0.25, 0.5, 0.8):
        masks = l1_masks(model, amount, scope="layer")
        for name, mask in masks.items():
            assert int((mask == 0).sum()) == round(amount * mask.numel()), name


def test_threshold_prunes_exactly_scores_below_it():
    model = tiny_layers()
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    threshold = 0.15
    new = Selection(L1(), threshold=threshold).prune(model, weights, masks, context(),
                                                     None).masks
    for name, w in weights.items():
        assert torch.equal(new[name], (w.abs() >= threshold).float()), name


def test_already_pruned_weights_stay_pruned_and_count_toward_target():
    model = tiny_layers()
    weights = prunable_weights(model)
    first = l1_masks(model, 0.5)
    second = Selection(L1(), amount=0.8).prune(model, weights, first, context(), 0.8).masks
    total = sum(m.numel() for m in second.values())
    assert sum(int((m == 0).sum()) for m in second.values()) == round(0.8 * total)
    for name in first:
        assert torch.all(second[name][first[name] == 0] == 0)


def test_ties_are_broken_deterministically_by_position():
    scores = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0, 0.5])
    keep = bottom_k(scores, 2)
    assert keep.tolist() == [True, False, False, True, True, True]
    assert torch.equal(keep, bottom_k(scores.clone(), 2))


def test_select_by_amount_counts_over_all_layers_for_every_amount():
    scores = {"a": torch.rand(7, 3), "b": torch.rand(5)}
    for amount in itertools.islice(torch.linspace(0, 0.99, 12).tolist(), None):
        keep = select_by_amount(scores, amount, "global")
        assert sum(int((~k).sum()) for k in keep.values()) == round(amount * 26)
