"""Second-order criteria: the loss curvature says what a weight costs to remove.

    obd  Optimal Brain Damage (LeCun et al. 1990): saliency 1/2 H_ii w_i^2, with the diagonal
         H_ii from `estimator`:
         gauss_newton  the exact Gauss-Newton (Levenberg-Marquardt) diagonal, LeCun et al.'s
                       own: sum over samples of diag(J^T H_out J), J the sample's output
                       Jacobian (torch.func), H_out the loss Hessian in the outputs (softmax:
                       diag(p) - p p^T). Never negative; for ReLU networks it equals the
                       Hessian's diagonal (a layer's output is piecewise linear in its own
                       weights, so only the Gauss-Newton term is left).
         mc_fisher     the Fisher with labels drawn from the model (`draws` per sample): mean
                       squared per-sample gradient, an unbiased estimate of the Gauss-Newton
                       diagonal for cross-entropy at one backward per draw.
         auto          gauss_newton when a sample's output has at most MAX_GN_OUTPUTS values
                       (classifiers: one per-sample gradient pass per class), else mc_fisher
                       (language models: tokens x vocabulary outputs).
         fisher        the empirical Fisher (true labels): a known poor proxy (Kunstner et
                       al. 2019), kept for comparison.
         hutchinson    E[v * Hv] over Rademacher probes v: unbiased for the true Hessian
                       diagonal, but each entry's error has variance sum_{j!=i} H_ij^2 / probes,
                       so with few probes it is mostly noise and often negative (on a trained
                       64-256-128-10 MLP, 8 batches x 8 probes: a third or more of the
                       entries negative, correlation 0.14 with the exact diagonal).
         exact         one Hessian row per weight (small models and tests).
         rounds        pruning to an amount at weight granularity, OBD removes its share in
                       `rounds` equal steps and recomputes the diagonal on the model with the
                       removed weights zeroed before each next step: the curvature is local
                       (a Taylor expansion at the current weights), and after removing most
                       weights it is not the dense model's. This is the recomputation of
                       WoodFisher's one-shot pruning (Singh & Alistarh 2020) without
                       training between steps; LeCun et al. themselves prune, retrain and
                       re-estimate in turns. One-shot at 90% on `make run`'s MLP, test
                       (validation) accuracy before fine-tuning, 1 / 2 / 4 / 8 rounds:
                       0.942 (0.931) / 0.944 (0.944) / 0.961 (0.958) / 0.961 (0.958), magnitude
                       0.961 (0.938); 4 is the fewest with the best validation accuracy.
    obs  Optimal Brain Surgeon (Hassibi & Stork 1993) on the layer-wise problem of OBC and
         SparseGPT (Frantar & Alistarh 2022, 2023): each layer keeps its outputs W X close,
         whose Hessian is H = 2 X X^T / N over the layer's inputs, shared by all output rows.
         Saliency w_q^2 / (2 [H^-1]_qq); once the masks are chosen, the survivors of every row
         move to the exact least-squares optimum given what was removed (see obs.py).
         Exact, but one masked solve per row: `strategy=sparsegpt` (sparsegpt.py) is the
         fast column-by-column approximation for transformer-sized layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, vmap

from prunebench.config.values import choice, number
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
ESTIMATORS = ("auto", "gauss_newton", "mc_fisher", "fisher", "hutchinson", "exact")
MAX_GN_OUTPUTS = 1000  # auto: larger outputs (a language model's tokens x vocabulary) -> mc_fisher


class Hessian(Strategy):
    def __init__(self, variant: str = "obd", estimator: str = "auto",
                 batches: int = 4, probes: int = 8, draws: int = 1, rounds: int = 4,
                 damp: float = 0.01, block_size: int = 1024, max_memory_gb: float = 2.0):
        choice("strategy.variant", variant, VARIANTS)
        if estimator is not None:
            choice("strategy.estimator", estimator, ESTIMATORS)
        for key, value in (("batches", batches), ("probes", probes), ("draws", draws),
                           ("rounds", rounds), ("block_size", block_size)):
            number(f"strategy.{key}", value, low=1, integer=True, allowed="an integer >= 1")
        number("strategy.damp", damp, low=0, allowed="a number >= 0")
        number("strategy.max_memory_gb", max_memory_gb, low=0, low_open=True,
               allowed="a number > 0")
        self.variant, self.estimator = variant, estimator
        self.batches, self.probes, self.draws, self.rounds = batches, probes, draws, rounds
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
            return self.obd_scores(weights, batches, ctx)

    def obd_scores(self, weights: dict[str, Tensor], batches: list[Batch],
                   ctx: PruneContext) -> dict[str, Tensor]:
        """1/2 H_ii w^2, in `rounds` rounds where the call prunes to an amount by weight: each
        round removes an equal share of what is left to remove (with the same selection as the
        final cut, ctx.select), then the diagonal is recomputed on the model with those
        weights zeroed; the final scores mark what earlier rounds removed as -inf, so the
        selection meets the target. The same calibration batches serve every round."""
        masks = dict(ctx.masks) if ctx.masks is not None else None
        total = sum(w.numel() for w in weights.values())
        start = 1.0 - sum(float(m.sum()) for m in masks.values()) / total if masks else 0.0
        rounds = self.rounds if (masks and ctx.amount is not None and ctx.amount > start
                                 and ctx.by_weight) else 1
        for k in range(1, rounds + 1):
            with zeroed(ctx.model, weights, masks if k > 1 else None):
                diagonal = self.diagonal(ctx.model, weights, batches, ctx)
            scores = {n: 0.5 * diagonal[n] * w.detach().pow(2) for n, w in weights.items()}
            if k == rounds:
                break
            masks = ctx.select(scores, masks, start + (ctx.amount - start) * k / rounds)
        if rounds == 1:
            return scores
        log.info("obd: %d rounds, the diagonal recomputed after each", rounds)
        return {n: s.masked_fill(masks[n] == 0, -torch.inf) for n, s in scores.items()}

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
        estimator = self.estimator
        if estimator == "hutchinson":
            return hutchinson_diagonal(model, weights, batches, ctx, self.probes)
        params = sum(p.numel() for p in model.parameters())
        act = activations_per_sample(model, batches[0][0])
        # one per-sample gradient holds all parameters and the sample's activations
        chunk = chunk_fitting(self.max_memory_gb, 4 * 3 * (params + act), len(batches[0][1]))
        if estimator in ("auto", "gauss_newton"):
            # one per-sample gradient pass per output value: a classifier's few, not a
            # language model's tokens x vocabulary
            outputs = output_size(model, batches[0][0])
            if estimator == "auto":
                estimator = "gauss_newton" if outputs <= MAX_GN_OUTPUTS else "mc_fisher"
            log.info("obd: %s Hessian diagonal (%d outputs per sample)", estimator, outputs)
        if estimator == "gauss_newton":
            return gauss_newton_diagonal(model, weights, batches, ctx, chunk)
        if estimator in ("fisher", "mc_fisher"):
            log.info("%s: per-sample gradients in chunks of %d samples", estimator, chunk)
            draws = self.draws if estimator == "mc_fisher" else 0
            return fisher_diagonal(model, weights, batches, ctx, chunk, draws)
        # one batched Hessian row holds a gradient-sized tensor and the batch's activations
        chunk = chunk_fitting(self.max_memory_gb, 4 * 3 * (params + act * len(batches[0][1])),
                              max(w.numel() for w in weights.values()))
        log.info("exact Hessian diagonal: %d rows at a time", chunk)
        return exact_diagonal(model, weights, batches, ctx, chunk)


@contextlib.contextmanager
def zeroed(model: nn.Module, weights: dict[str, Tensor],
           masks: dict[str, Tensor] | None) -> Iterator[None]:
    """The model's parameters behind `weights` multiplied by `masks` in place for the block,
    their values restored after (a dynamic schedule keeps the dense values under its masks)."""
    if masks is None:
        yield
        return
    params = dict(model.named_parameters())
    names = functional_names(model, weights)
    saved = {n: params[names[n]].detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n in weights:
                params[names[n]].mul_(masks[n])
        yield
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[names[n]].copy_(value)


@torch.no_grad()
def output_size(model: nn.Module, x: Tensor) -> int:
    """Values the model outputs per sample (classes, or tokens x vocabulary)."""
    return model(x[:1])[0].numel()


def functional_names(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, str]:
    """For functional_call: each scored weight's parameter name. Under a parametrization (the
    dynamic schedules' straight-through masks) that is its `parametrizations.*.original`, so
    the mask is applied to the value passed and the estimators see the model as it runs, as
    the autograd-based ones do."""
    names = dict(model.named_parameters())
    found = {}
    for name in weights:
        module, _, attr = name.rpartition(".")
        original = ".".join(filter(None, (module, "parametrizations", attr, "original")))
        found[name] = original if original in names else name
    return found


def gauss_newton_diagonal(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                          ctx: PruneContext, chunk: int) -> dict[str, Tensor]:
    """Mean over samples of diag(J^T H_out J), `chunk` samples at a time.

    H_out (the loss Hessian in one sample's outputs, torch.func.hessian) is factored as
    R R^T with its negative eigenvalues dropped (none for cross-entropy, which is convex in
    the logits). Then diag(J^T R R^T J) = sum over R's columns r of (J^T r)^2, and J^T r is
    the gradient of the scalar r . output: one per-sample gradient pass (vmap over grad) per
    output value, a sum of squares that is never negative, even in floating point. (vmap
    over jacrev builds the same Jacobians over 100x slower on CPU.)
    """
    fixed = {n: p.detach() for n, p in model.named_parameters()}
    names = functional_names(model, weights)
    current = {names[n]: fixed[names[n]] for n in weights}

    def projected(ws: dict[str, Tensor], x: Tensor, r: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **ws}, (x.unsqueeze(0),))
        return (out.flatten() * r).sum()

    def sample_loss(out: Tensor, y: Tensor) -> Tensor:
        return ctx.loss(out.unsqueeze(0), y.unsqueeze(0))

    per_sample = vmap(grad(projected), in_dims=(None, 0, 0))
    curvatures = vmap(hessian(sample_loss))
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = sum(len(y) for _, y in batches)
    with steps("hessian (gauss-newton)", count) as advance:
        for x, y in batches:
            for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
                with torch.no_grad():
                    out = model(xs)
                size = out[0].numel()
                values, vectors = torch.linalg.eigh(curvatures(out, ys).reshape(-1, size, size))
                root = vectors * values.clamp(min=0).sqrt().unsqueeze(-2)  # H = R R^T
                for column in range(size):
                    grads = per_sample(current, xs, root[:, :, column])
                    for n in weights:
                        diag[n].add_(grads[names[n]].pow(2).sum(0), alpha=1.0 / count)
                advance(len(ys))
    return diag


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
                    ctx: PruneContext, chunk: int, draws: int = 0) -> dict[str, Tensor]:
    """Mean squared per-sample gradient (torch.func vmap over grad), `chunk` samples at once:
    of the loss at the true labels (draws=0, the empirical Fisher), or at `draws` label sets
    drawn from the model's own predictive distribution (the Monte-Carlo Fisher)."""
    fixed = {n: p.detach() for n, p in model.named_parameters()}
    names = functional_names(model, weights)

    def sample_loss(ws: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **ws}, (x.unsqueeze(0),))
        return ctx.loss(out, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk)
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    label_sets = max(draws, 1)
    count = sum(len(y) for _, y in batches) * label_sets
    name = "mc fisher" if draws else "fisher"
    with steps(f"hessian ({name})", len(batches) * label_sets) as advance:
        for x, y in batches:
            for _ in range(label_sets):
                if draws:
                    y = model_labels(model, x, ctx.generator)
                grads = per_sample({names[n]: fixed[names[n]] for n in weights}, x, y)
                for n in weights:
                    diag[n].add_(grads[names[n]].pow(2).sum(0), alpha=1.0 / count)
                advance(1)
    return diag


@torch.no_grad()
def model_labels(model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
    """Labels drawn from the model's softmax over its last dimension (per token for a
    language model), with the run's generator."""
    probs = torch.softmax(model(x).float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    drawn = torch.multinomial(flat, 1, generator=generator).squeeze(1)
    return drawn.reshape(probs.shape[:-1]).to(x.device)


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
