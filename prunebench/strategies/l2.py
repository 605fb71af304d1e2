"""Norm-based structured pruning: a unit (Linear row, Conv filter) matters as much as its norm.

L1 norms of filters are Li et al. (2017, "Pruning Filters for Efficient ConvNets"); L2 norms
are He et al. (2018, soft filter pruning). `norm` picks p; at granularity=weight a single
weight's norm is its magnitude, so this ranks weights like l1 does.
"""

from __future__ import annotations

from torch import Tensor

from prunebench.config.errors import ConfigError
from prunebench.strategies.base import PruneContext, Strategy


class L2(Strategy):
    weights_only = True  # model.offload: scored one block at a time

    def __init__(self, norm: float = 2):
        if isinstance(norm, bool) or not isinstance(norm, (int, float)) or norm <= 0:
            raise ConfigError(f"strategy.norm={norm} is invalid: allowed a number > 0 "
                              "(1 = L1, 2 = L2)")
        self.norm = norm

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        return {n: w.abs() for n, w in weights.items()}

    def score_units(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        return {n: w.flatten(1).norm(p=self.norm, dim=1) for n, w in weights.items()}
