"""Masks hold through optimizer steps: pruned weights stay exact zeros."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunebench.pruning.masks import Masks, sparsity_report


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=1e-3),
    lambda p: torch.optim.NAdam(p, lr=0.01, weight_decay=1e-3),
    lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=1e-3),
    # the fused kernels prunebench.build picks by default must keep zeros exactly as well
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True,
                              fused=True),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3, fused=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
])
def test_pruned_weights_stay_zero_through_optimizer_steps(make_optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    optimizer = make_optimizer(model.parameters())
    x, y = torch.randn(64, 10), torch.randint(3, (64,))

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        masks.mask_grads()
        optimizer.step()
        masks.after_step(optimizer)  # as train.fit: skipped for zero-preserving optimizers

    masks = Masks(model)
    for _ in range(3):  # build up momentum / Adam moments before pruning
        step()
    new = {n: (torch.rand_like(w) > 0.7).float() for n, w in masks.weights.items()}
    masks.update(new)
    masks.apply()
    masks.clear_optimizer_state(optimizer)
    for _ in range(20):
        step()
        for name, w in masks.weights.items():
            assert torch.all(w[new[name] == 0] == 0), name
            # optimizer state was cleared too, so nothing pushes the weights back
            for value in optimizer.state[w].values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    assert torch.all(value[new[name] == 0] == 0)
    assert sparsity_report(model)["nonzero"] == sum(int(m.sum()) for m in new.values())


def test_update_counts_pruned_and_recovered():
    model = nn.Linear(4, 2)
    masks = Masks(model)
    first = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]])
    assert masks.update({"weight": first}) == (3, 0)
    second = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0]])
    assert masks.update({"weight": second}) == (1, 1)


class NoisySGD(torch.optim.SGD):
    """An optimizer that moves every weight, gradient or not: masks must re-zero after it."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(torch.randn_like(p), alpha=1e-3)


def test_unknown_optimizer_gets_weights_rezeroed_after_each_step():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    masks = Masks(model)
    mask = (torch.rand(3, 6) > 0.5).float()
    masks.update({"weight": mask})
    masks.apply()
    optimizer = NoisySGD(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        masks.mask_grads()
        optimizer.step()
        masks.after_step(optimizer)
        assert torch.all(model.weight[mask == 0] == 0)
