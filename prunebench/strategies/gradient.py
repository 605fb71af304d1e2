"""The gradient family: a weight matters as much as the loss (or flow) changes without it.

    snip     |g * w| from the mean gradient over `batches` batches (Lee et al. 2019)
    taylor   (g * w)^2 per batch, averaged over batches (Molchanov et al. 2017/2019)
    grasp    w * (H g): keeps the weights whose removal would shrink gradient flow most
             (Wang et al. 2020 remove the largest -w * Hg; here higher = keep, so the sign flips)
    synflow  |dR/dw * w| with R = sum of the outputs of the all-positive net on an all-ones
             input; data-free, pruned in `iterations` rounds (Tanaka et al. 2020)

With `strategy.threshold` the classic rule applies: remove weights whose score is below it.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.func import functional_call

from prunebench.config.values import choice, number
from prunebench.console import steps
from prunebench.strategies.autodiff import batch_gradients, eval_mode, mean_gradient, take_batches
from prunebench.strategies.base import PruneContext, Strategy

log = logging.getLogger(__name__)
VARIANTS = ("snip", "taylor", "grasp", "synflow")


class Gradient(Strategy):
    def __init__(self, variant: str = "snip", batches: int = 1, iterations: int = 100):
        choice("strategy.variant", variant, VARIANTS)
        for key, value in (("batches", batches), ("iterations", iterations)):
            number(f"strategy.{key}", value, low=1, integer=True, allowed="an integer >= 1")
        self.variant, self.batches, self.iterations = variant, batches, iterations

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        with eval_mode(ctx.model):
            if self.variant == "synflow":
                return self._synflow(weights, ctx)
            batches = take_batches(ctx, self.batches)
            return getattr(self, f"_{self.variant}")(weights, batches, ctx)

    def _snip(self, weights, batches, ctx):
        grads = mean_gradient(ctx.model, weights, batches, ctx)
        return {n: (grads[n] * w).abs() for n, w in weights.items()}

    def _taylor(self, weights, batches, ctx):
        total = {n: torch.zeros_like(w) for n, w in weights.items()}
        for grads in batch_gradients(ctx.model, weights, batches, ctx):
            for n, w in weights.items():
                total[n].add_((grads[n] * w).pow(2), alpha=1.0 / len(batches))
        return total

    def _grasp(self, weights, batches, ctx):
        """Hessian-gradient product by double backprop: H g = d(g_fixed . grad) / dw."""
        fixed = mean_gradient(ctx.model, weights, batches, ctx)
        params = list(weights.values())
        hg = {n: torch.zeros_like(w) for n, w in weights.items()}
        for x, y in batches:
            grads = torch.autograd.grad(ctx.loss(ctx.model(x), y), params, create_graph=True)
            dot = sum((g * fixed[n]).sum() for n, g in zip(weights, grads, strict=True))
            for n, h in zip(weights, torch.autograd.grad(dot, params), strict=True):
                hg[n].add_(h, alpha=1.0 / len(batches))
        return {n: w.detach() * hg[n] for n, w in weights.items()}

    def _synflow(self, weights, ctx):
        """Prune in rounds to densities (1 - amount)^(k / iterations), rescoring each time.

        Rounds use the run's selection (ctx.select: scope, granularity) as the final cut does;
        the final scores mark what earlier rounds removed as -inf, so the final cut meets the
        target.
        """
        x, _ = next(iter(ctx.batches()))
        ones = torch.ones_like(x[:1])  # only the input's shape is used: SynFlow is data-free
        masks = dict(ctx.masks)
        rounds = self.iterations if ctx.amount is not None else 1
        with steps("synflow", rounds) as advance:  # a bar, and a safe point each round
            for k in range(1, rounds + 1):
                scores = synflow_scores(ctx.model, masks, ones)
                advance(1)
                if k == rounds:
                    break
                masks = ctx.select(scores, masks, 1.0 - (1.0 - ctx.amount) ** (k / rounds))
        log.info("synflow: %d rounds", rounds)
        return {n: s.masked_fill(masks[n] == 0, -torch.inf) for n, s in scores.items()}


def synflow_scores(model: torch.nn.Module, masks: dict[str, Tensor],
                   ones: Tensor) -> dict[str, Tensor]:
    """|dR/dw * w| for the net with all parameters made positive and masks applied."""
    params = {n: p.detach().abs() for n, p in model.named_parameters()}
    for n, m in masks.items():
        params[n] = (params[n] * m).requires_grad_()
    flow = functional_call(model, params, (ones,)).sum()
    grads = torch.autograd.grad(flow, [params[n] for n in masks])
    return {n: (g * params[n]).detach().abs() for n, g in zip(masks, grads, strict=True)}
