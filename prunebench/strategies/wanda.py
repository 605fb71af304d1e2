"""Wanda (Sun et al. 2024): a weight matters as much as |W_ij| * ||X_j||_2.

X_j is the j-th input feature of the layer over every calibration token (a convolution's
unfolded patch position), so a small weight on an input with large activations survives.
Wanda compares scores within each output row (`scope: row`, its default here); `layer` and
`global` (and the other allocations) are offered too. With `sequential: true` (Wanda's code)
each block's inputs are read after the blocks before it were pruned (calibration.py); global,
erk, lamp and owl need `sequential: false`, one pass over the dense model, since they spread
the sparsity over all layers at once. With granularity=neuron a
unit's score is the sum of its weights' scores from one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunebench.strategies import calibration, obs, offload
from prunebench.strategies.autodiff import eval_mode, take_batches
from prunebench.strategies.base import PruneContext, Strategy


class Wanda(Strategy):
    def __init__(self, name: str, batches: int = 8, sequential: bool = True, **selection):
        super().__init__(name, **selection)
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"strategy.batches={batches} is invalid: allowed an integer >= 1")
        if sequential not in (True, False):
            raise ValueError(f"strategy.sequential={sequential} is invalid: allowed true, false")
        if (sequential and self.allocation not in ("uniform", "row")
                and self.granularity == "weight" and self.pattern is None):
            raise ValueError(f"strategy.allocation={self.allocation} spreads the sparsity over "
                             f"all layers at once: it needs strategy.sequential=false")
        self.batches, self.sequential = batches, sequential

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        obs.check_layers(model, weights, "strategy=wanda")

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """Scores from one pass over the model as it is (sequential=false)."""
        batches = take_batches(ctx, self.batches)
        with eval_mode(ctx.model), torch.no_grad():
            norms = input_norms(ctx.model, list(weights), batches)
        return {n: wanda_scores(weights[n], norms[n]) for n in weights}

    @torch.no_grad()
    def prune(self, model: nn.Module, weights: dict[str, Tensor], masks: dict[str, Tensor],
              ctx: PruneContext, amount: float | None) -> dict[str, Tensor]:
        if not self.sequential or self.granularity == "neuron":
            return super().prune(model, weights, masks, ctx, amount)
        batches = take_batches(ctx, self.batches)
        new = {n: m.clone() for n, m in masks.items()}
        sums: dict[str, Tensor] = {}

        def start(group: list[str]):
            sums.clear()
            return lambda name, x: accumulate_squares(sums, name, x)

        def prune_group(group: list[str]) -> None:
            scores = {n: wanda_scores(weights[n], sums[n].sqrt()) for n in group}
            new.update(self.select(scores, {n: masks[n] for n in group}, amount))
            for n in group:  # the next groups read their inputs through the pruned layers
                weights[n].mul_(new[n])

        with eval_mode(model):
            if ctx.offload is not None:  # model.offload: one block on the device at a time
                offload.sequential(model, weights, batches, ctx.offload, start, prune_group,
                                   new, label="wanda")
            else:
                calibration.sequential(model, weights, batches, start, prune_group,
                                       label="wanda")
        return new


def accumulate_squares(sums: dict[str, Tensor], name: str, x: Tensor) -> None:
    """Sum of squares of each input column over all calibration rows: ||X_j||_2^2."""
    square = x.pow(2).sum(0)
    sums[name] = sums[name] + square if name in sums else square


def input_norms(model: nn.Module, names: list[str], batches) -> dict[str, Tensor]:
    """||X_j||_2 of every named layer's inputs over the batches, in one forward pass each."""
    sums: dict[str, Tensor] = {}
    calibration.collect(model, names, batches, lambda n, x: accumulate_squares(sums, n, x),
                        stop_early=False)
    return {n: s.sqrt() for n, s in sums.items()}


def wanda_scores(weight: Tensor, norms: Tensor) -> Tensor:
    """|W_ij| * ||X_j||_2, with the columns of weight.flatten(1)."""
    return (weight.detach().flatten(1).abs().float() * norms).view_as(weight)
