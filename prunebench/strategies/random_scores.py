"""Random scores: the baseline a criterion has to beat to be worth anything."""

from __future__ import annotations

import torch
from torch import Tensor

from prunebench.strategies.base import PruneContext, Strategy


class Random(Strategy):
    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        return {n: torch.rand(w.shape, generator=ctx.generator).to(w.device)
                for n, w in weights.items()}
