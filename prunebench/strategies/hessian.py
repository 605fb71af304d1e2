"""Second-order criteria: the loss curvature says what a weight costs to remove.

    obd  Optimal Brain Damage (LeCun et al. 1990): saliency 1/2 H_ii w_i^2, with the diagonal
         H_ii from `estimator`: hutchinson (E[v * Hv] over Rademacher probes v), fisher (the
         empirical Fisher, mean squared per-sample gradient) or exact (one Hessian row per
         weight; small models and tests).
    obs  Optimal Brain Surgeon (Hassibi & Stork 1993) on the layer-wise problem of OBC and
         SparseGPT (Frantar & Alistarh 2022, 2023): each layer keeps its outputs W X close,
         whose Hessian is H = 2 X X^T / N over the layer's inputs, shared by all output rows.
         Saliency w_q^2 / (2 [H^-1]_qq); once the masks are chosen, the survivors of every row
         move to the exact least-squares optimum given what was removed (see obs.py).
         Exact, but one masked solve per row: `strategy=sparsegpt` (sparsegpt.py) is the
         fast column-by-column approximation for transformer-sized layers.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from prunebench.config.checks import choice, number
from prunebench.console import steps
from prunebench.strategies import obs
from prunebench.strategies.autodiff import (
    Batch,
    activations_per_sample,
    chunk_fitting,
    eval_mode,
    take_batches,
)
from prunebench.strategies.base import PruneContext, Strategy

log = logging.getLogger(__name__)
VARIANTS = ("obd", "obs")
ESTIMATORS = ("hutchinson", "fisher", "exact")


class Hessian(Strategy):
    def __init__(self, name: str, variant: str = "obd", estimator: str = "hutchinson",
                 batches: int = 4, probes: int = 8, damp: float = 0.01, block_size: int = 1024,
                 max_memory_gb: float = 2.0, **selection):
        super().__init__(name, **selection)
        choice("strategy.variant", variant, VARIANTS)
        if estimator is not None:
            choice("strategy.estimator", estimator, ESTIMATORS)
        for key, value in (("batches", batches), ("probes", probes), ("block_size", block_size)):
            number(f"strategy.{key}", value, low=1, integer=True, allowed="an integer >= 1")
        number("strategy.damp", damp, low=0, allowed="a number >= 0")
        number("strategy.max_memory_gb", max_memory_gb, low=0, low_open=True,
               allowed="a number > 0")
        self.variant, self.estimator = variant, estimator
        self.batches, self.probes = batches, probes
        self.damp, self.block_size, self.max_memory_gb = damp, block_size, max_memory_gb
        self._curvature: dict[str, obs.LayerCurvature] = {}

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        if self.variant == "obs":
            obs.check_layers(model, weights, "strategy.variant=obs")

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        batches = take_batches(ctx, self.batches)
        with eval_mode(ctx.model):
            if self.variant == "obs":
                self._curvature = obs.layer_curvatures(ctx.model, weights, batches, self.damp,
                                                       self.block_size, self.max_memory_gb)
                return {n: c.saliency(weights[n]) for n, c in self._curvature.items()}
            diagonal = self.diagonal(ctx.model, weights, batches, ctx)
        return {n: 0.5 * diagonal[n] * w.detach().pow(2) for n, w in weights.items()}

    @torch.no_grad()
    def compensate(self, weights: dict[str, Tensor], masks: dict[str, Tensor],
                   ctx: PruneContext) -> None:
        # a stop between layers drops the half-compensated model: resume starts from state.pt
        try:
            with steps("obs (surgeon)", len(self._curvature)) as advance:
                for n, curvature in self._curvature.items():
                    weights[n].copy_(curvature.surgeon(weights[n], masks[n]))
                    advance(1)
        finally:
            self._curvature = {}  # the layers' Hessians are not kept past this call

    def diagonal(self, model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                 ctx: PruneContext) -> dict[str, Tensor]:
        """The Hessian diagonal of the loss averaged over `batches`, by `self.estimator`."""
        if self.estimator == "hutchinson":
            return hutchinson_diagonal(model, weights, batches, ctx, self.probes)
        params = sum(p.numel() for p in model.parameters())
        act = activations_per_sample(model, batches[0][0])
        if self.estimator == "fisher":
            # one per-sample gradient holds all parameters and the sample's activations
            chunk = chunk_fitting(self.max_memory_gb, 4 * 3 * (params + act), len(batches[0][1]))
            log.info("fisher: per-sample gradients in chunks of %d samples", chunk)
            return fisher_diagonal(model, weights, batches, ctx, chunk)
        # one batched Hessian row holds a gradient-sized tensor and the batch's activations
        chunk = chunk_fitting(self.max_memory_gb, 4 * 3 * (params + act * len(batches[0][1])),
                              max(w.numel() for w in weights.values()))
        log.info("exact Hessian diagonal: %d rows at a time", chunk)
        return exact_diagonal(model, weights, batches, ctx, chunk)


def rademacher(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2.0 - 1.0).to(device)


def hutchinson_diagonal(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                        ctx: PruneContext, probes: int) -> dict[str, Tensor]:
    """E[v * Hv] with Rademacher v: one backward with a graph, then one HVP per probe."""
    names, params = list(weights), list(weights.values())
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    scale = 1.0 / (probes * len(batches))
    with steps("hessian (hutchinson)", len(batches) * probes) as advance:
        for x, y in batches:
            grads = torch.autograd.grad(ctx.loss(model(x), y), params, create_graph=True)
            for _ in range(probes):
                vs = [rademacher(p.shape, ctx.generator, p.device) for p in params]
                hvs = torch.autograd.grad(grads, params, vs, retain_graph=True)
                for n, v, hv in zip(names, vs, hvs, strict=True):
                    diag[n].add_(v * hv, alpha=scale)
                advance(1)
    return diag


def fisher_diagonal(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                    ctx: PruneContext, chunk: int) -> dict[str, Tensor]:
    """Mean squared per-sample gradient (torch.func vmap over grad), `chunk` samples at once."""
    fixed = {n: p.detach() for n, p in model.named_parameters()}

    def sample_loss(ws: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **ws}, (x.unsqueeze(0),))
        return ctx.loss(out, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk)
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = sum(len(y) for _, y in batches)
    with steps("hessian (fisher)", len(batches)) as advance:
        for x, y in batches:
            grads = per_sample({n: fixed[n] for n in weights}, x, y)
            for n, g in grads.items():
                diag[n].add_(g.pow(2).sum(0), alpha=1.0 / count)
            advance(1)
    return diag


def exact_diagonal(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                   ctx: PruneContext, chunk: int) -> dict[str, Tensor]:
    """H_ii read off Hessian rows: batched double backprop with one-hot vectors."""
    params = list(weights.values())
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    rows_total = len(batches) * sum(w.numel() for w in weights.values())
    with steps("hessian (exact rows)", rows_total) as advance:
        for x, y in batches:
            grads = torch.autograd.grad(ctx.loss(model(x), y), params, create_graph=True)
            for (n, w), g in zip(weights.items(), grads, strict=True):
                flat, out = g.flatten(), diag[n].view(-1)
                for start in range(0, flat.numel(), chunk):
                    idx = torch.arange(start, min(start + chunk, flat.numel()), device=w.device)
                    onehot = torch.zeros(len(idx), flat.numel(), dtype=w.dtype, device=w.device)
                    onehot[torch.arange(len(idx)), idx] = 1.0
                    rows = torch.autograd.grad(flat, w, onehot, retain_graph=True,
                                               is_grads_batched=True)[0].flatten(1)
                    out[idx] += rows[torch.arange(len(idx)), idx] / len(batches)
                    advance(len(idx))
    return diag
