"""Activation-based unit pruning: a unit matters as much as what it outputs on real data.

The unit's activation is read after the ReLU that follows the layer (after its BatchNorm,
if any), over `batches` training batches, in eval mode:

- mean:    mean activation magnitude over samples and positions (Molchanov et al. 2017's
           activation baseline);
- apoz:    1 - APoZ, the fraction of non-zero activations (Hu et al. 2016 prune the units
           with the highest Average Percentage of Zeros);
- entropy: entropy of the unit's per-sample (spatially averaged) activation, histogrammed
           into `bins` bins (Luo & Wu 2017): a unit whose output hardly varies carries little.

Scores are per unit; at granularity=weight every weight gets its unit's score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.strategies.base import PruneContext, Strategy, expand_units

VARIANTS = ("mean", "apoz", "entropy")


class Activation(Strategy):
    needs_units = True  # where each unit's activation is read (its ReLU)

    def __init__(self, variant: str = "mean", batches: int = 8, bins: int = 32):
        if variant not in VARIANTS:
            raise ConfigError(f"strategy.variant={variant} is invalid: allowed "
                              f"{', '.join(VARIANTS)}")
        for key, value, low in (("batches", batches, 1), ("bins", bins, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"strategy.{key}={value} is invalid: allowed an integer "
                                  f">= {low}")
        self.variant, self.batches, self.bins = variant, batches, bins

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        return expand_units(self.score_units(weights, ctx), weights)

    @torch.no_grad()
    def score_units(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        model = ctx.model
        units = ctx.units  # traced by the selection (needs_units)
        outputs: dict[str, list[Tensor]] = {n: [] for n in weights}
        handles = []
        for name in weights:
            site, relu = units.activation_site(units.prunable[name])
            # a Linear's units are its last dim: tokens [B, T, C] become [B, C, T]
            tokens = isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Linear)

            def keep(module, inputs, out, name=name, relu=relu, tokens=tokens):
                out = out.detach().movedim(-1, 1) if tokens and out.dim() > 2 else out.detach()
                outputs[name].append(out.relu() if relu else out)
            handles.append(site.register_forward_hook(keep))
        was_training = model.training
        model.eval()
        try:
            for i, (x, _) in enumerate(ctx.batches()):
                if i == self.batches:
                    break
                model(x)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return {n: self.unit_score(torch.cat(out)) for n, out in outputs.items()}

    def unit_score(self, a: Tensor) -> Tensor:
        """Score per channel (dim 1) of activations [N, C, ...]."""
        per_unit = a.transpose(0, 1).flatten(1)  # [C, N * positions]
        if self.variant == "mean":
            return per_unit.abs().mean(1)
        if self.variant == "apoz":
            return (per_unit != 0).float().mean(1)
        return entropy(a.flatten(2).mean(2) if a.dim() > 2 else a, self.bins)


def entropy(x: Tensor, bins: int) -> Tensor:
    """Entropy (nats) of each column of [N, C], histogrammed over its own range."""
    low, high = x.min(0).values, x.max(0).values
    scaled = (x - low) / (high - low).clamp_min(1e-12)
    index = (scaled * bins).long().clamp(0, bins - 1)  # [N, C]
    counts = torch.zeros(x.shape[1], bins, device=x.device)
    counts.scatter_add_(1, index.T, torch.ones_like(index.T, dtype=counts.dtype))
    p = counts / x.shape[0]
    return -(p * torch.log(p.clamp_min(1e-30))).sum(1)



