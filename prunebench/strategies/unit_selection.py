"""Selection at granularity=neuron: whole output units removed where that is consistent.

`amount` is a fraction of removable units (as in torch.nn.utils.prune.ln_structured and
Torch-Pruning), not of weights; the sparsity a run reports counts the weights really removed.
A unit whose weights are all masked was removed before and stays removed. Unless
allow_collapse, each layer keeps its best unit. The removed units' biases, norm parameters and
the next layers' input columns are masked too (the `coupled` masks of the non-prunable ones),
so their outputs are exactly zero.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from prunebench.strategies.base import unit_sums
from prunebench.strategies.ranking import bottom_k

if TYPE_CHECKING:
    from prunebench.pruning.units import Units

log = logging.getLogger(__name__)


def select_units(scores: dict[str, Tensor], masks: dict[str, Tensor], amount: float | None,
                 threshold: float | None, units: Units, per_layer: bool,
                 allow_collapse: bool) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """(new masks of the prunable weights, coupled masks, collapsed layers).

    Scores are per weight (summed per unit) or 1-D, per unit.
    """
    from prunebench.pruning.units import unit_masks  # torch-pruning: structured runs only

    unit_scores = {}
    for n in units.layers:
        s = scores[n].detach().float()
        s = unit_sums({n: s}, masks)[n] if s.dim() > 1 else s.clone()
        unit_scores[n] = s.masked_fill(masks[n].flatten(1).sum(1) == 0, -torch.inf)
    keep, collapsed = keep_units(unit_scores, amount, threshold, per_layer, allow_collapse)
    params = dict(units.model.named_parameters())
    removed = unit_masks(units, keep, params)
    new = {n: m * removed[n] if n in removed else m.clone() for n, m in masks.items()}
    coupled = {n: m for n, m in removed.items() if n not in masks}
    return new, coupled, collapsed


def keep_units(units: dict[str, Tensor], amount: float | None, threshold: float | None,
               per_layer: bool, allow_collapse: bool) -> tuple[dict[str, Tensor], list[str]]:
    """(keep-masks over units by amount, per layer or global, or threshold; the layers left
    with no unit)."""
    protect = {} if allow_collapse else {
        n: s.argmax() for n, s in units.items() if torch.isfinite(s.max())}
    ranked = {n: s.clone() for n, s in units.items()}
    for n, i in protect.items():
        ranked[n][i] = torch.inf
    if amount is None:
        keep = {n: s >= threshold for n, s in ranked.items()}
    elif per_layer:
        keep = {n: bottom_k(s, min(round(amount * s.numel()), s.numel() - (n in protect)))
                for n, s in ranked.items()}
    else:
        flat = torch.cat(list(ranked.values()))
        k = min(round(amount * flat.numel()), flat.numel() - len(protect))
        sizes = [s.numel() for s in ranked.values()]
        keep = dict(zip(ranked, bottom_k(flat, k).split(sizes), strict=True))
    collapsed = [n for n, k in keep.items() if not k.any()]
    if collapsed:
        log.warning("layer collapse: no units left in %s", ", ".join(collapsed))
    return keep, collapsed
