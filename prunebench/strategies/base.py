"""The one interface every criterion shares: score the prunable weights, then select.

A criterion implements `score()`; selection (exact count by `amount`, or `threshold`), scope
(global or per layer) and granularity (weights or whole output units) are handled here, so any
criterion works with any of them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.strategies import allocation as allocations
from prunebench.strategies.context import PruneContext
from prunebench.strategies.patterns import parse_pattern, pattern_keep
from prunebench.strategies.selection import bottom_k, select_by_amount

if TYPE_CHECKING:
    from prunebench.pruning.units import Units

SCOPES = ("global", "layer", "row")
GRANULARITIES = ("weight", "neuron")
log = logging.getLogger(__name__)


class Strategy:
    """Base class: subclasses override `score` (higher score = more important).

    A criterion that judges whole units (a unit's activations, a filter's norm) overrides
    `score_units` instead or as well; otherwise, with granularity=neuron, a unit's score is
    the sum of its weights' scores.

    A criterion checks its own keys in its constructor (config.values.number / choice, raising
    ConfigError naming `strategy.KEY`); build.check builds the strategy once before any work,
    so a bad value stops the run there with one line.
    """

    # True for a criterion that may run with amount and threshold both unset, choosing the
    # sparsity itself (L0's penalty); the run then reports the sparsity it reached
    sets_own_sparsity = False

    def __init__(self, name: str, amount: float | None = None, threshold: float | None = None,
                 scope: str = "global", granularity: str = "weight",
                 allow_collapse: bool = False, allocation: str | None = None,
                 owl_m: float = 5.0, owl_lambda: float = 0.08, exclude: Sequence[str] = (),
                 pattern: str | None = None):
        self.name, self.amount, self.threshold = name, amount, threshold
        self.pattern = parse_pattern(pattern)  # (N, M) or None: see patterns.py
        if self.pattern and (granularity != "weight" or threshold is not None):
            raise ValueError(f"strategy.pattern={pattern} needs granularity=weight and "
                             f"strategy.amount, not a threshold")
        self.exclude = tuple(exclude)  # name patterns of layers left dense
        for pattern in self.exclude:

            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"strategy.exclude: {pattern!r} is not a regular expression "
                                  f"({err})") from None
        # strategy.scope is an alias of strategy.allocation (strategies/allocation.py)
        self.allocation = allocations.resolve(scope, allocation)
        self.scope = {"uniform": "layer", "row": "row"}.get(self.allocation, "global")
        self.granularity = granularity
        self.owl_m, self.owl_lambda = owl_m, owl_lambda
        self.outlier_ratios: dict[str, float] | None = None  # allocation=owl, per layer
        self.allow_collapse = allow_collapse
        self.units: Units | None = None  # the model's traced units, kept for later calls
        self.coupled: dict[str, Tensor] = {}  # masks of biases, norms ... of removed units
        self.collapsed: list[str] = []  # layers left with no units by the last selection

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        """Raise ConfigError (one line naming the layer) on a model whose prunable `weights`
        this criterion cannot prune; called once the model is built, before any training."""

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """One score per weight, the shape of each prunable weight (higher = more important).

        `weights` maps each prunable layer's name to its weight (already masked); `ctx` gives
        training batches, the loss, the model and the current masks. Selection (amount or
        threshold, allocation, granularity, N:M pattern) happens after, in `prune`.
        """
        raise NotImplementedError

    def score_units(self, weights: dict[str, Tensor], ctx: PruneContext
                    ) -> dict[str, Tensor] | None:
        """One score per output unit (dim 0 of each weight), or None to sum `score`."""
        return None

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
        toward the target. With granularity=neuron the masks also cover the biases and norm
        parameters of removed units (see `_select_units`).
        """
        ctx = replace(ctx, model=model, masks=masks, amount=amount)
        if self.granularity == "neuron":
            ctx.units = self.units = self.traced_units(ctx)
        if self.allocation == "owl":
            self.outlier_ratios = allocations.owl_ratios(self, model, weights, ctx)
        scores = None
        if self.granularity == "neuron":
            with torch.enable_grad():
                scores = self.score_units(weights, ctx)
        if scores is None:
            with torch.enable_grad():
                scores = self.score(weights, ctx)
        new = self.select(scores, masks, amount, ctx.units)
        self.compensate(weights, new, ctx)
        return new | self.coupled if self.granularity == "neuron" else new

    def traced_units(self, ctx: PruneContext) -> Units:
        """`ctx.units`, or the removable units of `ctx.model` traced on one batch."""
        if ctx.units is not None:
            return ctx.units
        return self.trace(ctx.model, next(iter(ctx.batches()))[0])

    def trace(self, model: nn.Module, x: Tensor) -> Units:
        """The removable units of `model`, traced on two samples of `x` the first time only:
        which units can go depends on the model's structure, not on its weights."""
        if self.units is None or self.units.model is not model:
            # torch-pruning loads for structured runs only
            from prunebench.pruning.units import example_input, find_units

            self.units = find_units(model, example_input(model, x), self.exclude)
        return self.units

    def select(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
               amount: float | None, units: Units | None = None) -> dict[str, Tensor]:
        """Masks keeping the best-scoring weights or units (by `amount`, else `threshold`).

        At granularity=neuron (`units` required), scores are per weight (summed per unit) or
        1-D, per unit.
        """
        if self.granularity == "neuron":
            return self._select_units(scores, masks, amount, units)
        scores = {n: s.detach().float().masked_fill(masks[n] == 0, -torch.inf)
                  for n, s in scores.items()}
        if self.pattern is not None:
            n, m = self.pattern
            rest = amount if amount is not None else n / m
            keep = pattern_keep(scores, n, m, amount,
                                lambda s: select_by_amount(s, rest, self.scope))
        elif amount is None:
            keep = {n: s >= self.threshold for n, s in scores.items()}
        else:
            keep = allocations.select(scores, amount, self.allocation, self.outlier_ratios,
                                      self.owl_lambda)
        return {n: keep[n].to(masks[n].dtype) * masks[n] for n in masks}

    def _select_units(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
                      amount: float | None, units: Units) -> dict[str, Tensor]:
        """Remove whole output units of the layers where that is consistent (units.py).

        `amount` is a fraction of removable units (as in torch.nn.utils.prune.ln_structured
        and Torch-Pruning), not of weights; the sparsity a run reports counts the weights
        really removed. A unit whose weights are all masked was removed before and stays
        removed. Unless allow_collapse, each layer keeps its best unit. The removed units'
        biases, norm parameters and the next layers' input columns are masked too
        (`self.coupled` for the non-prunable ones), so their outputs are exactly zero.
        """
        from prunebench.pruning.units import unit_masks

        unit_scores = {}
        for n in units.layers:
            s = scores[n].detach().float()
            s = unit_sums({n: s}, masks)[n] if s.dim() > 1 else s.clone()
            unit_scores[n] = s.masked_fill(masks[n].flatten(1).sum(1) == 0, -torch.inf)
        keep = self._keep_units(unit_scores, amount)
        params = dict(units.model.named_parameters())
        removed = unit_masks(units, keep, params)
        new = {n: m * removed[n] if n in removed else m.clone() for n, m in masks.items()}
        self.coupled = {n: m for n, m in removed.items() if n not in masks}
        return new

    def _keep_units(self, units: dict[str, Tensor], amount: float | None) -> dict[str, Tensor]:
        """Keep-masks over units by amount (per layer or global) or threshold."""
        protect = {} if self.allow_collapse else {
            n: s.argmax() for n, s in units.items() if torch.isfinite(s.max())}
        ranked = {n: s.clone() for n, s in units.items()}
        for n, i in protect.items():
            ranked[n][i] = torch.inf
        if amount is None:
            keep = {n: s >= self.threshold for n, s in ranked.items()}
        elif self.scope == "layer":
            keep = {n: bottom_k(s, min(round(amount * s.numel()), s.numel() - (n in protect)))
                    for n, s in ranked.items()}
        else:
            flat = torch.cat(list(ranked.values()))
            k = min(round(amount * flat.numel()), flat.numel() - len(protect))
            sizes = [s.numel() for s in ranked.values()]
            keep = dict(zip(ranked, bottom_k(flat, k).split(sizes), strict=True))
        self.collapsed = [n for n, k in keep.items() if not k.any()]
        if self.collapsed:
            log.warning("layer collapse: no units left in %s", ", ".join(self.collapsed))
        return keep


def unit_sums(scores: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-weight scores summed over each output unit, masked weights left out."""
    return {n: s.detach().float().masked_fill(masks[n] == 0, 0).flatten(1).sum(1)
            for n, s in scores.items()}


def expand_units(units: dict[str, Tensor], weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Unit scores as per-weight scores: each weight gets its unit's score."""
    return {n: units[n].view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone()
            for n, w in weights.items()}
