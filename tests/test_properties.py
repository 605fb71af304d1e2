"""Property-based tests (hypothesis) of selection and masks, against brute-force references."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunebench.data import Dataset, Split
from prunebench.pruning.masks import Masks
from prunebench.strategies.base import Strategy
from prunebench.strategies.selection import Selection
from prunebench.training.loop import FitSettings, fit

# small integer scores make ties common; the tie rule is part of what is checked
score_values = st.one_of(st.integers(0, 4).map(float),
                         st.floats(-1e6, 1e6, allow_nan=False, width=32))


@st.composite
def scored_layers(draw):
    """{name: (scores, previous mask)} for one to three layers of random shapes."""
    layers = {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        n = torch.Size(shape).numel()
        scores = torch.tensor(draw(st.lists(score_values, min_size=n, max_size=n))).view(shape)
        mask = torch.tensor(draw(st.lists(st.sampled_from([1.0, 1.0, 1.0, 0.0]), min_size=n,
                                          max_size=n))).view(shape)
        layers[f"layer{i}.weight"] = (scores, mask)
    return layers


def reference_amount(layers: dict, amount: float, scope: str) -> dict:
    """Brute force: sort (score, position), already-pruned first, prune the first k."""
    groups = [list(layers)] if scope == "global" else [[n] for n in layers]
    pruned = set()
    for names in groups:
        entries = []
        for name in names:
            scores, mask = layers[name]
            for i, (s, m) in enumerate(zip(scores.flatten().tolist(), mask.flatten().tolist(),
                                           strict=True)):
                entries.append(((float("-inf") if m == 0 else s), len(entries), name, i))
        k = round(amount * len(entries))
        pruned |= {(name, i) for _, _, name, i in sorted(entries)[:k]}
        pruned |= {(name, i) for s, _, name, i in entries if s == float("-inf")}
    return {name: torch.tensor([0.0 if (name, i) in pruned else 1.0
                                for i in range(s.numel())]).view_as(s)
            for name, (s, _) in layers.items()}


@settings(max_examples=150, deadline=None)
@given(scored_layers(), st.floats(0, 0.999), st.sampled_from(["global", "layer"]))
def test_amount_prunes_exactly_the_lowest_scores_ties_by_position(layers, amount, scope):
    strategy = Selection(Strategy(), amount=amount, scope=scope)
    scores = {n: s for n, (s, _) in layers.items()}
    masks = {n: m for n, (_, m) in layers.items()}
    new = strategy.select(scores, masks, amount)
    expected = reference_amount(layers, amount, scope)
    for name in layers:
        assert torch.equal(new[name], expected[name]), name
    # the count is the requested one (or what was pruned already, if that is more)
    groups = [list(layers)] if scope == "global" else [[n] for n in layers]
    for names in groups:
        total = sum(masks[n].numel() for n in names)
        before = sum(int((masks[n] == 0).sum()) for n in names)
        after = sum(int((new[n] == 0).sum()) for n in names)
        assert after == max(round(amount * total), before)
    assert all(torch.equal(new[n], strategy.select(scores, masks, amount)[n]) for n in new)


@settings(max_examples=150, deadline=None)
@given(scored_layers(), score_values)
def test_threshold_prunes_exactly_the_scores_below_it(layers, threshold):
    strategy = Selection(Strategy(), threshold=threshold)
    new = strategy.select({n: s for n, (s, _) in layers.items()},
                          {n: m for n, (_, m) in layers.items()}, None)
    for name, (scores, mask) in layers.items():
        assert torch.equal(new[name], ((scores >= threshold) & (mask > 0)).float()), name


OPTIMIZERS = {
    "sgd": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True,
                                             weight_decay=wd),
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
    "rmsprop": lambda p, lr, wd: torch.optim.RMSprop(p, lr=lr, momentum=0.5, weight_decay=wd),
}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(OPTIMIZERS)), st.floats(1e-4, 0.5), st.floats(0, 0.1),
       st.integers(0, 2**31 - 1), st.floats(0.1, 0.95),
       st.sampled_from([None, 0.5]), st.sampled_from([0.0, 1e-3]), st.sampled_from([0.0, 1e-3]))
def test_no_training_step_revives_a_pruned_weight(name, lr, wd, seed, density, max_norm, l1,
                                                  l2):
    g = torch.Generator().manual_seed(seed)
    split = Split(torch.randn(48, 1, 3, 3, generator=g), torch.randint(3, (48,), generator=g))
    data = Dataset("t", split, split, None, (1, 3, 3), 3, torch.zeros(1), torch.ones(1), 1.0)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = OPTIMIZERS[name](model.parameters(), lr, wd)
    masks = Masks(model)
    run = FitSettings(epochs=1, batch_size=8, max_norm=max_norm, l1=l1, l2=l2)
    fit(model, data, optimizer, None, run, g, "train", masks)  # momentum and moments build up
    keep = {n: (torch.rand(w.shape, generator=g) < density).float()
            for n, w in masks.weights.items()}
    masks.update(keep)
    masks.apply()
    masks.clear_optimizer_state(optimizer)
    fit(model, data, optimizer, None, run, g, "finetune", masks,
        on_step=lambda step: check(masks, keep))


def check(masks: Masks, keep: dict) -> None:
    for n, w in masks.weights.items():
        assert torch.all(w[keep[n] == 0] == 0), n
