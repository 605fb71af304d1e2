"""Magnitude pruning (Han et al. 2015): a weight matters as much as its absolute value."""

from __future__ import annotations

from torch import Tensor

from prunebench.strategies.base import PruneContext, Strategy


class L1(Strategy):
    weights_only = True  # model.offload: scored one block at a time

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        return {n: w.abs() for n, w in weights.items()}
