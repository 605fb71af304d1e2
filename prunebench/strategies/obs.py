"""Optimal Brain Surgeon on the layer-wise problem (OBC / SparseGPT, Frantar & Alistarh).

Pruning layer W (rows = output units) while keeping its outputs W X close is a quadratic in
each row with Hessian H = 2 X X^T / N over the layer's inputs, the same H for every row.
Removing the set Q from a row w and moving the survivors S to the optimum gives

    w'_S = w_S + H_SS^-1 H_SQ w_Q,   w'_Q = 0

which for a single weight q is the textbook OBS update  dw = -(w_q / [H^-1]_qq) H^-1 e_q.
All rows are solved at once as masked linear systems (A = S H S + (I - S)). H is kept
block-diagonal along the inputs, with the block size chosen so the work fits max_memory_gb.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.console import steps
from prunebench.strategies.autodiff import forward_hooks

log = logging.getLogger(__name__)
BYTES = 4  # float32


@dataclass
class LayerCurvature:
    hessian: Tensor  # [blocks, b, b] damped diagonal blocks of H (padding: identity)
    inverse: Tensor  # [blocks, b, b] their inverses
    width: int  # inputs per row (before padding)
    chunk: int  # row blocks solved at once

    def saliency(self, weight: Tensor) -> Tensor:
        """w_q^2 / (2 [H^-1]_qq): the loss increase of removing q alone, survivors moved."""
        inv_diag = self.inverse.diagonal(dim1=-2, dim2=-1).flatten()[:self.width]
        return (weight.detach().flatten(1).pow(2) / (2 * inv_diag)).view_as(weight)

    def surgeon(self, weight: Tensor, mask: Tensor) -> Tensor:
        """The weight with masked entries removed and each row's survivors compensated."""
        blocks, size = self.hessian.shape[:2]
        pad = blocks * size - self.width
        w = F.pad(weight.detach().flatten(1), (0, pad)).view(-1, size)
        keep = F.pad(mask.flatten(1).to(w.dtype), (0, pad), value=1.0).view(-1, size)
        block_of_row = torch.arange(len(w), device=w.device) % blocks
        out = torch.empty_like(w)
        for start in range(0, len(w), self.chunk):
            rows = slice(start, start + self.chunk)
            h, s = self.hessian[block_of_row[rows]], keep[rows]
            removed = w[rows] * (1 - s)
            system = s.unsqueeze(2) * h * s.unsqueeze(1) + torch.diag_embed(1 - s)
            rhs = s * (h @ removed.unsqueeze(2)).squeeze(2)
            shift = torch.linalg.solve(system, rhs)
            out[rows] = s * (w[rows] + shift)
        return out.view(weight.shape[0], -1)[:, :self.width].reshape(weight.shape)


SUPPORTED = "Linear and Conv1d/Conv2d layers with groups=1 and numeric padding"


def unsupported(module: nn.Module) -> str | None:
    """Why `layer_inputs` cannot lay out this layer's inputs, or None when it can."""
    if isinstance(module, nn.Linear):
        return None
    kind = type(module).__name__
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return f"a {kind}"
    if module.groups != 1:
        return f"a grouped {kind} (groups={module.groups})"
    if isinstance(module.padding, str):
        return f"a {kind} with padding='{module.padding}'"
    return None


def check_layers(model: nn.Module, weights: dict[str, Tensor], what: str) -> None:
    """ConfigError naming the first prunable layer whose inputs `layer_inputs` cannot read
    (`what` names the criterion, e.g. `strategy=wanda`): before any training."""
    for name in weights:
        why = unsupported(model.get_submodule(name.rpartition(".")[0]))
        if why:
            layer = name.removesuffix(".weight")
            raise ConfigError(f"{what} cannot prune layer {layer}, {why}: it reads the inputs "
                              f"of {SUPPORTED} (strategy.exclude names layers left dense)")


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows [samples, width] matching weight.flatten(1)'s columns."""
    why = unsupported(module)
    if why:
        raise ValueError(f"obs supports {SUPPORTED}, not {why}: {module}")
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):  # a Conv1d is a Conv2d of height 1
        x = x.unsqueeze(2)
        size = lambda v: (1, v[0])  # noqa: E731
    else:
        size = tuple
    cols = F.unfold(x, size(module.kernel_size), size(module.dilation),
                    size(module.padding), size(module.stride))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def choose_block(rows: int, width: int, block_size: int, budget_gb: float) -> tuple[int, int]:
    """(block size, row blocks per solve) fitting the budget.

    Storage: the blocks of H and of its inverse, about 2 * width * b values. Each solve: the
    gathered H, the system and its factorization, 3 * b^2 values per row block.
    """
    budget = budget_gb * 2**30 / BYTES
    b = min(block_size, width)
    while b > 1 and (2 * width * b > budget / 2 or 3 * b * b > budget / 2):
        b //= 2
    chunk = int(max(1, min(rows * -(-width // b), (budget / 2) // (3 * b * b))))
    return b, chunk


@torch.no_grad()
def layer_curvatures(model: nn.Module, weights: dict[str, Tensor], batches, damp: float,
                     block_size: int, budget_gb: float) -> dict[str, LayerCurvature]:
    """Damped block-diagonal H = 2 X X^T / N of every prunable layer, from one pass."""
    modules = {n: model.get_submodule(n.rpartition(".")[0]) for n in weights}
    plan = {}
    for n, w in weights.items():
        width = w[0].numel()
        b, chunk = choose_block(len(w), width, block_size, budget_gb)
        blocks = -(-width // b)
        plan[n] = (width, b, blocks, chunk)
        log.info("obs: %s: %d inputs, blocks of %d, %d row blocks per solve, ~%.3f GB", n,
                 width, b, chunk, (2 * blocks * b * b + 3 * chunk * b * b) * BYTES / 2**30)
    sums = {n: torch.zeros(blocks, b, b, device=w.device)
            for (n, w), (_, b, blocks, _) in zip(weights.items(), plan.values(), strict=True)}
    counts = dict.fromkeys(weights, 0)

    def hook(name):
        def accumulate(module, inputs, _output):
            width, b, blocks, _ = plan[name]
            x = layer_inputs(module, inputs[0].detach().float())
            x = F.pad(x, (0, blocks * b - width)).view(len(x), blocks, b)
            sums[name] += torch.einsum("nki,nkj->kij", x, x)
            counts[name] += len(x)
        return accumulate

    out = {}
    # a bar, and a safe point after each batch and each layer's inverse
    with steps("obs (layer Hessians)", len(batches) + len(plan)) as advance:
        with forward_hooks((modules[n], hook(n)) for n in weights):
            for x, _ in batches:
                model(x)
                advance(1)
        for n, (width, b, blocks, chunk) in plan.items():
            h = 2 * sums[n] / max(counts[n], 1)
            diag = h.diagonal(dim1=-2, dim2=-1)
            pad = torch.arange(blocks * b, device=h.device).view(blocks, b) >= width
            # dampening relative to the mean curvature, as in SparseGPT; padding gets identity
            diag += damp * diag.flatten()[:width].mean() + 1e-8
            diag[pad] = 1.0
            lower, h = damped_cholesky(h, diag.flatten()[:width].mean(), damp, n)
            inverse = torch.cholesky_inverse(lower)
            out[n] = LayerCurvature(h, inverse, width, chunk)
            advance(1)
    return out


def damped_cholesky(h: Tensor, scale: Tensor, damp: float, layer: str) -> tuple[Tensor, Tensor]:
    """(lower Cholesky factor, matrix factored) of `h`, which the caller damped by `damp` x
    `scale` (its mean diagonal), or of each matrix of a batch of them.

    A Hessian of a layer whose inputs are constant or linearly dependent is not positive
    definite with `strategy.damp=0` (or a damping too small for float32): the damping then
    grows tenfold until it is, with a warning, as users of the reference code raise it by
    hand. One line naming `strategy.damp` if even 1000 x the mean diagonal does not do.
    """
    lower, info = torch.linalg.cholesky_ex(h)
    extra = max(damp, 1e-4)
    while bool((info != 0).any()):
        extra *= 10
        if extra > 1e3:
            raise ConfigError(f"strategy.damp={damp}: the Hessian of layer {layer} is not "
                              f"positive definite even damped by 1000 x its mean diagonal")
        damped = h.clone()
        damped.diagonal(dim1=-2, dim2=-1).add_(extra * scale)
        lower, info = torch.linalg.cholesky_ex(damped)
        if not bool((info != 0).any()):
            log.warning("the Hessian of layer %s is not positive definite with strategy.damp=%g:"
                        " damped by %g x its mean diagonal instead", layer, damp, extra)
            return lower, damped
    return lower, h
