"""Wanda (Sun et al. 2024): a weight matters as much as |W_ij| * ||X_j||_2.

X_j is the j-th input feature of the layer over every calibration token (a convolution's
unfolded patch position), so a small weight on an input with large activations survives.
Wanda compares scores within each output row (`scope: row`, its default here); `layer` and
`global` (and the other allocations) are offered too. With `sequential: true` (Wanda's code)
the criterion is layer-wise: the selection prunes block by block, each block's inputs read
after the blocks before it were pruned (selection.py, calibration.py); allocation=owl runs
so too, as its authors' code does (the outlier ratios from one dense pass first). global, erk
and lamp need `sequential: false`, one pass over the dense model, since they rank all layers
at once. With granularity=neuron a unit's score is the sum of its weights' scores
from one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunebench.strategies import calibration, obs
from prunebench.strategies.autodiff import eval_mode, take_batches
from prunebench.strategies.base import PruneContext, Strategy


class Wanda(Strategy):
    def __init__(self, batches: int = 8, sequential: bool = True):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"strategy.batches={batches} is invalid: allowed an integer >= 1")
        if sequential not in (True, False):
            raise ValueError(f"strategy.sequential={sequential} is invalid: allowed true, false")
        # sequential: the selection drives score_layer block by block (selection.py)
        self.batches, self.layerwise = batches, sequential

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        obs.check_layers(model, weights, "strategy=wanda")

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """Scores from one pass over the model as it is (sequential=false, or neuron)."""
        batches = take_batches(ctx, self.batches)
        with eval_mode(ctx.model), torch.no_grad():
            norms = input_norms(ctx.model, list(weights), batches)
        # model.offload: the norms are where the blocks ran, the weights where they rest
        return {n: wanda_scores(weights[n], norms[n].to(weights[n].device)) for n in weights}

    def accumulate(self, stats: dict, name: str, x: Tensor) -> None:
        accumulate_squares(stats, name, x)

    def score_layer(self, name: str, weight: Tensor, stats: Tensor) -> Tensor:
        return wanda_scores(weight, stats.sqrt())


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
