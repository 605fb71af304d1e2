"""The one selection of a run: a criterion's scores in, masks and a report out.

Built from cfg.strategy's selection keys (build.selection): `amount` or `threshold`,
`allocation` (or its alias `scope`), `granularity`, `pattern` (N:M), `exclude`,
`allow_collapse` and the owl keys; every other key of cfg.strategy is the criterion's own.
The selection also decides the order: a criterion that sets `layerwise` is driven layer by
layer through calibration.sequential (each block's inputs read through the blocks pruned
before it), every other criterion scores the whole model at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.strategies import allocation as allocations
from prunebench.strategies import calibration, offload
from prunebench.strategies.autodiff import eval_mode, take_batches
from prunebench.strategies.base import LayerTarget, PruneContext, Strategy
from prunebench.strategies.patterns import parse_pattern, pattern_keep
from prunebench.strategies.ranking import select_by_amount
from prunebench.strategies.unit_selection import select_units

if TYPE_CHECKING:
    from prunebench.pruning.units import Units

SELECTION_KEYS = ("amount", "threshold", "scope", "allocation", "granularity", "pattern",
                  "exclude", "allow_collapse", "owl_m", "owl_lambda")
LAYERWISE_ALLOCATIONS = ("uniform", "row")  # decided one layer at a time
SCOPES = ("global", "layer", "row")
GRANULARITIES = ("weight", "neuron")


@dataclass
class Report:
    """What one pruning call chose, returned rather than kept on the criterion."""

    masks: dict[str, Tensor]  # new masks: the prunable weights' (and `coupled` at neuron)
    units: Units | None = None  # the model's removable units (granularity=neuron)
    coupled: dict[str, Tensor] = field(default_factory=dict)  # biases, norms of removed units
    collapsed: list[str] = field(default_factory=list)  # layers left with no unit
    outlier_ratios: dict[str, float] | None = None  # allocation=owl

    def densities(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.masks.items()}


class Selection:
    """Turns a criterion's scores into masks: `prune(...)` returns a `Report`."""

    def __init__(self, criterion: Strategy, amount: float | None = None,
                 threshold: float | None = None, scope: str = "global",
                 allocation: str | None = None, granularity: str = "weight",
                 pattern: str | None = None, exclude: Sequence[str] = (),
                 allow_collapse: bool = False, owl_m: float = 5.0, owl_lambda: float = 0.08):
        self.criterion, self.amount = criterion, amount
        unset = amount is None and threshold is None
        self.threshold = criterion.own_threshold if unset else threshold
        self.pattern = parse_pattern(pattern)  # (N, M) or None: see patterns.py
        if self.pattern and (granularity != "weight" or threshold is not None):
            raise ValueError(f"strategy.pattern={pattern} needs granularity=weight and "
                             f"strategy.amount, not a threshold")
        self.exclude = tuple(exclude)  # name patterns of layers left dense
        for name in self.exclude:
            try:
                re.compile(name)
            except re.error as err:
                raise ConfigError(f"strategy.exclude: {name!r} is not a regular expression "
                                  f"({err})") from None
        # strategy.scope is an alias of strategy.allocation (strategies/allocation.py)
        self.allocation = allocations.resolve(scope, allocation)
        self.scope = {"uniform": "layer", "row": "row"}.get(self.allocation, "global")
        self.granularity, self.allow_collapse = granularity, allow_collapse
        self.owl_m, self.owl_lambda = owl_m, owl_lambda
        self.layerwise = criterion.layerwise and granularity == "weight"
        if criterion.needs_amount and amount is None:
            raise ValueError("this criterion needs strategy.amount (not a threshold)")
        if (self.layerwise and self.allocation not in LAYERWISE_ALLOCATIONS
                and self.pattern is None):
            raise ValueError(f"strategy.allocation={self.allocation} spreads the sparsity over "
                             "all layers at once, and this criterion prunes layer by layer: "
                             "allowed uniform (scope=layer) or row (Wanda: or "
                             "strategy.sequential=false)")
        self._units: Units | None = None  # the model's structure, traced once

    @torch.no_grad()
    def prune(self, model: nn.Module, weights: dict[str, Tensor], masks: dict[str, Tensor],
              ctx: PruneContext, amount: float | None) -> Report:
        """New masks: `amount` of all prunable weights removed (or the threshold applied).

        Weights pruned already stay pruned: their scores are set to -inf, so they count first
        toward the target. With granularity=neuron the masks also cover the biases and norm
        parameters of removed units.
        """
        units = None
        if self.granularity == "neuron" or self.criterion.needs_units:
            units = self.trace(model, next(iter(ctx.batches()))[0])
        ratios = None
        if self.allocation == "owl":
            ratios = allocations.owl_ratios(model, weights, ctx, self.owl_m)
        ctx = replace(ctx, model=model, masks=masks, amount=amount, units=units,
                      select=lambda s, m, a: self.select(s, m, a, units, ratios),
                      by_weight=self.granularity == "weight" and self.pattern is None)
        if self.layerwise:
            return Report(self.prune_layerwise(model, weights, masks, ctx, amount), units,
                          outlier_ratios=ratios)
        scores = None
        with torch.enable_grad():
            if self.granularity == "neuron":
                scores = self.criterion.score_units(weights, ctx)
            if scores is None:
                scores = self.criterion.score(weights, ctx)
        coupled, collapsed = {}, []
        if self.granularity == "neuron":
            new, coupled, collapsed = select_units(scores, masks, amount, self.threshold, units,
                                                   self.scope == "layer", self.allow_collapse)
        else:
            new = self.select(scores, masks, amount, ratios=ratios)
        self.criterion.compensate(weights, new, ctx)
        return Report(new | coupled, units, coupled, collapsed, ratios)

    def select(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
               amount: float | None, units: Units | None = None,
               ratios: dict[str, float] | None = None) -> dict[str, Tensor]:
        """Masks keeping the best-scoring weights (or units, given `units`) by `amount`,
        else `threshold`; `ratios` are allocation=owl's outlier ratios."""
        if self.granularity == "neuron":
            return select_units(scores, masks, amount, self.threshold, units,
                                self.scope == "layer", self.allow_collapse)[0]
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
            keep = allocations.select(scores, amount, self.allocation, ratios, self.owl_lambda)
        return {n: keep[n].to(masks[n].dtype) * masks[n] for n in masks}

    def prune_layerwise(self, model: nn.Module, weights: dict[str, Tensor],
                        masks: dict[str, Tensor], ctx: PruneContext,
                        amount: float | None) -> dict[str, Tensor]:
        """A layer-wise criterion, group by group (calibration.sequential): each layer's
        input statistics gathered through the layers pruned so far, then the layer pruned
        to its target and written back into the model before the next group runs."""
        criterion = self.criterion
        batches = take_batches(ctx, criterion.batches)
        cost, budget = criterion.group_budget(weights, batches[0][0]) or (None, None)
        new = {n: m.clone() for n, m in masks.items()}
        stats: dict = {}

        def start(group: list[str]):
            stats.clear()
            return lambda name, x: criterion.accumulate(stats, name, x)

        def prune_group(group: list[str]) -> None:
            for n in group:
                target = LayerTarget(amount, self.threshold, self.scope == "row", self.pattern)
                w, keep = criterion.solve_layer(n, weights[n], stats.pop(n), masks[n], target)
                weights[n].copy_(w)  # the next groups read their inputs through this layer
                new[n] = keep.to(masks[n].dtype) * masks[n]

        label = type(criterion).__name__.lower()
        with eval_mode(model):
            if ctx.offload is not None:  # model.offload: one block on the device at a time
                offload.sequential(model, weights, batches, ctx.offload, start, prune_group,
                                   new, cost=cost, budget=budget, label=label)
            else:
                calibration.sequential(model, weights, batches, start, prune_group, cost=cost,
                                       budget=budget, label=label)
        return new

    def trace(self, model: nn.Module, x: Tensor) -> Units:
        """The removable units of `model`, traced on two samples of `x` the first time only:
        which units can go depends on the model's structure, not on its weights."""
        if self._units is None or self._units.model is not model:
            # torch-pruning loads for structured runs only
            from prunebench.pruning.units import example_input, find_units

            self._units = find_units(model, example_input(model, x), self.exclude)
        return self._units

    def summary(self, masks: dict[str, Tensor], report: Report | None) -> dict:
        """What results.json keeps: the allocation and the per-layer densities of `masks`,
        and the outlier ratios of the last pruning call (`report`) under allocation=owl."""
        out = {"name": self.allocation,
               "densities": {n: float(m.float().mean()) for n, m in masks.items()}}
        if report is not None and report.outlier_ratios is not None:
            out["outlier_ratios"] = report.outlier_ratios
            out["owl_m"], out["owl_lambda"] = self.owl_m, self.owl_lambda
        return out
