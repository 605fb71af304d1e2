"""The one interface every criterion shares: score the prunable weights, then select.

A criterion implements `score()`; selection (exact count by `amount`, or `threshold`), scope
(global or per layer) and granularity (weights or whole output units) are handled here, so any
criterion works with any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

SCOPES = ("global", "layer")
GRANULARITIES = ("weight", "neuron")


@dataclass
class PruneContext:
    """What a criterion may use besides the weights: training batches and the loss.

    Data-driven criteria also need the model (its forward), the current masks (what is pruned
    already) and the target of this pruning call (iterative criteria prune in rounds).
    """

    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]  # fresh pass over training data
    loss: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    generator: torch.Generator
    model: nn.Module | None = None
    masks: dict[str, Tensor] | None = None
    amount: float | None = None


class Strategy:
    """Base class: subclasses override `score` (higher score = more important)."""

    def __init__(self, name: str, amount: float | None = None, threshold: float | None = None,
                 scope: str = "global", granularity: str = "weight"):
        self.name, self.amount, self.threshold = name, amount, threshold
        self.scope, self.granularity = scope, granularity

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def compensate(self, weights: dict[str, Tensor], masks: dict[str, Tensor],
                   ctx: PruneContext) -> None:
        """Optionally update surviving weights in place once the new masks are chosen.

        Most criteria only rank weights; Optimal Brain Surgeon moves the survivors to make up
        for the removed ones, and L0 keeps the weights it trained along with its gates.
        """

    @torch.no_grad()
    def prune(self, model: nn.Module, weights: dict[str, Tensor], masks: dict[str, Tensor],
              ctx: PruneContext, amount: float | None) -> dict[str, Tensor]:
        """New masks: `amount` of all prunable weights removed (or the threshold applied).

        Weights pruned already stay pruned: their scores are set to -inf, so they count first
        toward the target.
        """
        ctx = replace(ctx, model=model, masks=masks, amount=amount)
        with torch.enable_grad():
            scores = self.score(weights, ctx)
        new = self.select(scores, masks, amount)
        self.compensate(weights, new, ctx)
        return new

    def select(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
               amount: float | None) -> dict[str, Tensor]:
        """Masks keeping the best-scoring weights or units (by `amount`, else `threshold`)."""
        scores = {n: s.detach().float().masked_fill(masks[n] == 0, -torch.inf)
                  for n, s in scores.items()}
        if self.granularity == "neuron":
            return self._select_units(scores, masks, amount)
        if amount is None:
            keep = {n: s >= self.threshold for n, s in scores.items()}
        else:
            keep = select_by_amount(scores, amount, self.scope)
        return {n: keep[n].to(masks[n].dtype) * masks[n] for n in masks}

    def _select_units(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
                      amount: float | None) -> dict[str, Tensor]:
        """Remove whole output units; the classifier's outputs (last layer) are never removed."""
        names = list(scores)[:-1]
        units = {n: scores[n].flatten(1).sum(1) for n in names}
        if amount is None:
            keep_units = {n: u >= self.threshold for n, u in units.items()}
        else:
            keep_units = select_by_amount(units, amount, self.scope)
        new = dict(masks)
        for n in names:
            shape = (-1,) + (1,) * (masks[n].dim() - 1)
            new[n] = masks[n] * keep_units[n].view(shape).to(masks[n].dtype)
        return new


def bottom_k(scores: Tensor, k: int) -> Tensor:
    """Boolean keep-mask of a flat tensor with its k lowest scores removed.

    A stable sort breaks ties by position, so the same scores always give the same mask.
    """
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def select_by_amount(scores: dict[str, Tensor], amount: float, scope: str) -> dict[str, Tensor]:
    """Keep-masks removing round(amount * n) of the lowest scores, globally or per tensor."""
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
