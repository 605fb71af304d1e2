"""Keep-masks from scores: the k lowest removed, globally, per tensor or per output row; and
`LayerTarget`, what the selection asks of one layer pruned on its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from prunebench.strategies.patterns import fits_pattern, nm_keep, pattern_removes, row_keep

log = logging.getLogger(__name__)


def bottom_k(scores: Tensor, k: int) -> Tensor:
    """Boolean keep-mask of a flat tensor with its k lowest scores removed.

    A stable sort breaks ties by position, so the same scores always give the same mask.
    """
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def select_by_amount(scores: dict[str, Tensor], amount: float, scope: str) -> dict[str, Tensor]:
    """Keep-masks removing round(amount * n) of the lowest scores, globally, per tensor or per
    output row."""
    if scope == "row":
        return {n: row_keep(s, amount) for n, s in scores.items()}
    if scope == "layer":
        return {n: bottom_k(s.flatten(), round(amount * s.numel())).view_as(s)
                for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = bottom_k(flat, round(amount * flat.numel()))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
    return out


@dataclass(frozen=True)
class LayerTarget:
    """What the selection asks of one layer pruned on its own (layer by layer, calibration.py):
    remove `amount` of its weights (of each output row with `rows`), or what scores below
    `threshold`; with `pattern` (N, M), N of every M along the input dimension instead."""

    amount: float | None
    threshold: float | None = None
    rows: bool = False
    pattern: tuple[int, int] | None = None

    def keep(self, scores: Tensor, mask: Tensor) -> Tensor:
        """Boolean keep-mask of one layer; weights pruned already (`mask` 0) go first."""
        scores = scores.detach().float().masked_fill(mask == 0, -torch.inf)
        scope = "row" if self.rows else "layer"
        if self.pattern is not None:
            n, m = self.pattern
            if fits_pattern(scores, m):
                return nm_keep(scores, pattern_removes(n, m, self.amount), m) & (mask > 0)
            log.warning("pattern %d:%d: input width %d is not a multiple of %d, unstructured "
                        "selection instead", n, m, scores[0].numel(), m)
            amount = n / m if self.amount is None else self.amount
            return select_by_amount({"": scores}, amount, scope)[""] & (mask > 0)
        if self.amount is None:
            return (scores >= self.threshold) & (mask > 0)
        return select_by_amount({"": scores}, self.amount, scope)[""] & (mask > 0)
