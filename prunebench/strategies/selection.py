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
LAYERWISE_ALLOCATIONS = ("uniform", "row", "owl")  # decided one layer at a time
SCOPES = ("global", "layer", "row")
GRANULARITIES = ("weight", "neuron")


@dataclass
class Report:
    """What one pruning call chose, returned rather than kept on the criterion."""

    masks: dict[str, Tensor]  # new masks: the prunable weights' (and `coupled` at neuron)
    units: Units | None = None  # the model's removable units (granularity=neuron)
    coupled: dict[str, Tensor] = field(default_factory=dict)  # biases, norms of removed units
    collapsed: list[str] = field(default_factory=list)  # layers left with no unit
    outlier_ratios: dict[str, float] | None = None  # allocation=owl: per block
    blocks: dict[str, str] | None = None  # allocation=owl: the block of each layer
    block_densities: dict[str, float] | None = None  # allocation=owl: per block


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
        # compared within each output row: scope=row, and owl's layers under scope=row
        self.rows = self.allocation == "row" or (self.allocation == "owl" and scope == "row")
        self.granularity, self.allow_collapse = granularity, allow_collapse
        self.owl_m, self.owl_lambda = owl_m, owl_lambda
        self.layerwise = criterion.layerwise and granularity == "weight"
        if criterion.needs_amount and amount is None:
            raise ValueError("this criterion needs strategy.amount (not a threshold)")
        if (self.layerwise and self.allocation not in LAYERWISE_ALLOCATIONS
                and self.pattern is None):
            raise ValueError(f"strategy.allocation={self.allocation} spreads the sparsity over "
                             "all layers at once, and this criterion prunes layer by layer: "
                             "allowed uniform (scope=layer), row or owl (Wanda: or "
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
        # a layer-wise criterion's calibration batches serve OWL's dense pass too (as in
        # the OWL authors' code)
        batches = take_batches(ctx, self.criterion.batches) if self.layerwise else None
        owl, report = None, Report({}, units)
        if self.allocation == "owl" and amount is not None:
            owl = allocations.owl_ratios(model, weights, batches or take_batches(
                ctx, allocations.OWL_BATCHES), self.owl_m, ctx.offload)
            report.outlier_ratios, report.blocks = owl
            report.block_densities = allocations.block_densities(
                *owl, {n: w.numel() for n, w in weights.items()}, amount, self.owl_lambda)
        ctx = replace(ctx, model=model, masks=masks, amount=amount, units=units,
                      select=lambda s, m, a: self.select(s, m, a, units, owl),
                      by_weight=self.granularity == "weight" and self.pattern is None)
        if self.layerwise:
            report.masks = self.prune_layerwise(model, weights, masks, ctx, batches, amount, owl)
            return report
        scores = self.scores(weights, ctx)
        if self.granularity == "neuron":
            new, report.coupled, report.collapsed = select_units(
                scores, masks, amount, self.threshold, units, self.scope == "layer",
                self.allow_collapse)
        else:
            new = self.select(scores, masks, amount, owl=owl)
        self.criterion.compensate(weights, new, ctx)
        report.masks = new | report.coupled
        return report

    def scores(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """The criterion's scores: per unit at granularity=neuron where it gives them, else
        per weight. Under model.offload a criterion that reads nothing but the weights
        (magnitude) scores one block at a time on the device (offload.each_block), its scores
        kept beside the masks."""
        def score(some: dict[str, Tensor]) -> dict[str, Tensor]:
            units = (self.criterion.score_units(some, ctx) if self.granularity == "neuron"
                     else None)
            return self.criterion.score(some, ctx) if units is None else units

        if ctx.offload is None or not self.criterion.weights_only:
            with torch.enable_grad():
                return score(weights)
        scores: dict[str, Tensor] = {}
        offload.each_block(ctx.model, list(weights), ctx.offload, lambda block: scores.update(
            {n: s.to(ctx.masks[n].device) for n, s in score(block).items()}),
            label=type(self.criterion).__name__.lower())
        return scores

    def select(self, scores: dict[str, Tensor], masks: dict[str, Tensor],
               amount: float | None, units: Units | None = None,
               owl: tuple[dict, dict] | None = None) -> dict[str, Tensor]:
        """Masks keeping the best-scoring weights (or units, given `units`) by `amount`,
        else `threshold`; `owl` is allocation=owl's (block ratios, block of each layer)."""
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
        elif self.allocation == "owl":
            amounts = self.layer_amounts(amount, owl, scores)
            keep = {n: self.target(n, amount, amounts).keep(s, masks[n])
                    for n, s in scores.items()}
        else:
            keep = allocations.select(scores, amount, self.allocation)
        return {n: keep[n].to(masks[n].dtype) * masks[n] for n in masks}

    def layer_amounts(self, amount: float | None, owl: tuple[dict, dict] | None,
                      weights: dict[str, Tensor]) -> dict[str, float] | None:
        """Under allocation=owl, each layer's share of `amount` (its block's density,
        `weights` giving the layers' sizes); None otherwise."""
        if owl is None or amount is None:
            return None
        sizes = {n: w.numel() for n, w in weights.items()}
        density = allocations.block_densities(*owl, sizes, amount, self.owl_lambda)
        return allocations.owl_amounts(density, owl[1], sizes, amount, self.rows)

    def target(self, name: str, amount: float | None,
               amounts: dict[str, float] | None = None) -> LayerTarget:
        """What layer `name` is pruned to on its own: `amount`, or its share in `amounts`
        (layer_amounts), per row or per layer, N:M."""
        return LayerTarget(amount if amounts is None else amounts[name], self.threshold,
                           self.rows, self.pattern)

    def prune_layerwise(self, model: nn.Module, weights: dict[str, Tensor],
                        masks: dict[str, Tensor], ctx: PruneContext, batches: list,
                        amount: float | None, owl: tuple[dict, dict] | None = None
                        ) -> dict[str, Tensor]:
        """A layer-wise criterion, group by group (calibration.sequential): each layer's
        input statistics gathered through the layers pruned so far, then the layer pruned
        to its target and written back into the model before the next group runs."""
        criterion = self.criterion
        cost, budget = criterion.group_budget(weights, batches[0][0]) or (None, None)
        new = {n: m.clone() for n, m in masks.items()}
        amounts = self.layer_amounts(amount, owl, weights)
        stats: dict = {}

        def start(group: list[str]):
            stats.clear()
            return lambda name, x: criterion.accumulate(stats, name, x)

        def prune_group(group: list[str]) -> None:
            for n in group:
                target = self.target(n, amount, amounts)
                # model.offload: the layer is on the device, its masks stay beside the blocks
                mask = masks[n].to(weights[n].device)
                w, keep = criterion.solve_layer(n, weights[n], stats.pop(n), mask, target)
                weights[n].copy_(w)  # the next groups read their inputs through this layer
                new[n] = (keep.to(mask.dtype) * mask).to(masks[n].device)

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
            out["outlier_ratios"] = report.outlier_ratios  # per block
            out["block_densities"], out["blocks"] = report.block_densities, report.blocks
            out["owl_m"], out["owl_lambda"] = self.owl_m, self.owl_lambda
        return out
