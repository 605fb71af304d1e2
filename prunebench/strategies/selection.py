"""Keep-masks from scores: the k lowest removed, globally, per tensor or per output row."""

from __future__ import annotations

import torch
from torch import Tensor

from prunebench.strategies.patterns import row_keep


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
