"""SparseGPT (Frantar & Alistarh 2023): Optimal Brain Surgeon made fast enough for 768 wide.

Each layer keeps its outputs W X close. With H = 2 X X^T / N over its calibration inputs,
damped by `damp` times the mean of its diagonal, the columns of W are visited left to right.
Removing weight q of a row while the columns left of q are fixed is the OBS step restricted
to the remaining columns F = {q, q+1, ...}:

    dw_F = -(w_q / [H_F^-1]_qq) [H_F^-1]_q,:

and the rows of U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), hold exactly these
rows: [H_F^-1]_q,: = U_qq U_q,F. So one factorization serves every column, and every row of
W is updated at once (they share H). Updates are applied lazily: inside a block of
`block_size` columns immediately, to the columns right of the block in one matrix product
once the block is done. The mask is chosen adaptively: at the start of each block (or of each
group of M columns for N:M) from the weights as updated so far, by w^2 / U_qq^2 (the OBS
saliency w_q^2 / [H_F^-1]_qq), removing `amount` of the block's weights (per row with
scope=row). Layers are pruned in sequence with their inputs read through the layers pruned
before (calibration.py), and the memory the Hessians need is planned and logged first.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.config.values import number
from prunebench.strategies import calibration, obs
from prunebench.strategies.autodiff import eval_mode, take_batches
from prunebench.strategies.base import LayerTarget, PruneContext, Strategy
from prunebench.strategies.patterns import fits_pattern, nm_keep, pattern_removes

log = logging.getLogger(__name__)
BYTES = 4  # float32


class SparseGPT(Strategy):
    layerwise = True  # at granularity=weight: solve_layer, block by block (selection.py)
    needs_amount = True  # the solver removes a fraction of each block of columns

    def __init__(self, batches: int = 8, block_size: int = 128, damp: float = 0.01,
                 max_memory_gb: float = 2.0, wbits: int | None = None,
                 groupsize: int | None = None):
        check_quantization(wbits, groupsize)
        for key, value in (("batches", batches), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"strategy.{key}={value} is invalid: allowed an integer >= 1")
        number("strategy.damp", damp, low=0, allowed="a number >= 0")
        number("strategy.max_memory_gb", max_memory_gb, low=0, low_open=True,
               allowed="a number > 0")
        self.batches, self.block_size = batches, block_size
        self.damp, self.max_memory_gb = damp, max_memory_gb
        self.wbits, self.groupsize = wbits, groupsize

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        obs.check_layers(model, weights, "strategy=sparsegpt")

    @torch.no_grad()
    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """granularity=neuron only: OBS saliency w_q^2 / [H^-1]_qq of the dense model, summed
        per unit by the selection; whole units are removed without compensation."""
        stats: dict = {}
        with eval_mode(ctx.model):
            calibration.collect(ctx.model, list(weights), take_batches(ctx, self.batches),
                                lambda n, x: self.accumulate(stats, n, x), stop_early=False)
        out = {}
        for n, w in weights.items():
            gram, count = stats[n]
            h = 2 * gram / max(count, 1)
            scale = h.diagonal().mean()
            h.diagonal().add_(self.damp * scale)
            lower, _ = obs.damped_cholesky(h, scale, self.damp, n.removesuffix(".weight"))
            # model.offload: the Hessian is where the block ran, the weight where it rests
            inverse_diag = torch.cholesky_inverse(lower).diagonal().to(w.device)
            out[n] = (w.detach().flatten(1).pow(2) / inverse_diag).view_as(w)
        return out

    def group_budget(self, weights: dict[str, Tensor], x: Tensor):
        budget = self.max_memory_gb * 2**30
        return memory_plan(weights, x, budget).__getitem__, budget

    def accumulate(self, stats: dict, name: str, x: Tensor) -> None:
        """stats[name] = (sum of x x^T over the calibration rows, their count)."""
        gram, count = stats.get(name, (0, 0))
        stats[name] = (gram + x.T @ x, count + len(x))

    def solve_layer(self, name: str, weight: Tensor, stats, mask: Tensor,
                    target: LayerTarget) -> tuple[Tensor, Tensor]:
        gram, count = stats
        return prune_layer(weight, 2 * gram / max(count, 1), mask, target.amount,
                           "row" if target.rows else "layer", target.pattern,
                           self.block_size, self.damp, name.removesuffix(".weight"),
                           self.wbits, self.groupsize)


def check_quantization(wbits: int | None, groupsize: int | None) -> None:
    number("strategy.wbits", wbits, low=2, high=16, integer=True, optional=True,
           allowed="null or an integer 2 <= wbits <= 16")
    number("strategy.groupsize", groupsize, low=1, integer=True, optional=True,
           allowed="null or an integer >= 1")
    if groupsize is not None and wbits is None:
        raise ConfigError(f"strategy.groupsize={groupsize} needs strategy.wbits (the weights' "
                          "bits when sparsegpt quantizes while it prunes)")


def memory_plan(weights: dict[str, Tensor], x: Tensor, budget: float) -> dict[str, int]:
    """Bytes each layer's Hessian needs while its group gathers inputs, logged before any work.

    Pruning one layer holds H, its Cholesky factors (3 c^2 values) and two copies of the
    weight (2 r c); the forward pass holds one calibration batch's activations on top.
    """
    plan = {n: w[0].numel() ** 2 * BYTES for n, w in weights.items()}
    work = max(3 * w[0].numel() ** 2 + 2 * w.numel() for w in weights.values()) * BYTES
    if work > budget:
        raise ConfigError(f"strategy.max_memory_gb={budget / 2**30:g} is too small: pruning "
                         f"one layer needs {work / 2**30:.3f} GB")
    log.info("sparsegpt memory plan: Hessians %.1f MB for all %d layers, %.1f MB for the "
             "largest, %.1f MB to prune one layer, one batch of %s inputs; groups are cut to "
             "fit strategy.max_memory_gb=%g", sum(plan.values()) / 2**20, len(plan),
             max(plan.values()) / 2**20, work / 2**20, tuple(x.shape), budget / 2**30)
    return plan


def inverse_cholesky(hessian: Tensor, damp: float, layer: str = "") -> Tensor:
    """U with H^-1 = U^T U (upper), for H damped by `damp` x its mean diagonal (more when
    that is not positive definite, obs.damped_cholesky)."""
    h = hessian.clone()
    scale = h.diagonal().mean()
    h.diagonal().add_(damp * scale)
    lower, _ = obs.damped_cholesky(h, scale, damp, layer)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def prune_layer(weight: Tensor, hessian: Tensor, mask: Tensor, amount: float, scope: str,
                pattern: tuple[int, int] | None, block_size: int,
                damp: float, layer: str = "", wbits: int | None = None,
                groupsize: int | None = None) -> tuple[Tensor, Tensor]:
    """(new weight, boolean keep-mask) of one layer; `mask` holds what is pruned already.

    `wbits`: SparseGPT's joint quantization (sec. 3.5 of the paper, GPTQ's grid): each kept
    weight is rounded to its row's grid as its column is visited, and the OBS update spreads
    the rounding error, with the pruning error, over the columns not yet visited. The grid is
    asymmetric min-max with 2^wbits levels and 0 on it exactly (pruned weights stay zeros): per
    row from the dense weights (the paper), or with `groupsize` per row and group of that many
    columns, from the group's kept weights as updated when the solver reaches it (GPTQ).
    """
    w = weight.detach().flatten(1).float().clone()
    h = hessian.float().clone()
    dead = h.diagonal() == 0  # inputs that are always zero: their weights do nothing
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_cholesky(h, damp, layer)
    keep = mask.detach().flatten(1) > 0
    if pattern is not None and not fits_pattern(w, pattern[1]):
        log.warning("sparsegpt: a layer of width %d cannot take %d:%d groups; unstructured",
                    w.shape[1], *pattern)
        pattern = None
    step = math.lcm(pattern[1] if pattern else 1, groupsize if wbits and groupsize else 1)
    block_size = -(-block_size // step) * step  # whole N:M and quantization groups per block
    grid = minmax_grid(w, wbits) if wbits and not groupsize else None
    rows, cols = w.shape
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        ub = u[start:end, start:end]
        block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, device=w.device)
        saliency_scale = ub.diagonal().pow(2)
        if pattern is None:
            scores = block.pow(2) / saliency_scale
            keep[:, start:end] &= block_keep(scores, keep[:, start:end], amount, scope,
                                             start, end, cols)
        for j in range(end - start):
            col = start + j
            if pattern is not None and j % pattern[1] == 0:
                group = slice(j, j + pattern[1])
                scores = block[:, group].pow(2) / saliency_scale[group]
                scores = scores.masked_fill(~keep[:, col:col + pattern[1]], -torch.inf)
                keep[:, col:col + pattern[1]] &= nm_keep(
                    scores, pattern_removes(*pattern, amount), pattern[1])
            kept = block[:, j] * keep[:, col]
            if wbits:
                if groupsize and col % groupsize == 0:
                    group = slice(j, j + groupsize)
                    grid = minmax_grid(block[:, group] * keep[:, col:col + groupsize], wbits)
                kept = to_grid(kept, *grid, wbits)
            error = (block[:, j] - kept) / ub[j, j]
            block[:, j:] -= error.unsqueeze(1) * ub[j, j:].unsqueeze(0)
            block[:, j] = kept  # exact zeros where pruned
            errors[:, j] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w.view_as(weight).to(weight.dtype), keep.view_as(weight)


def minmax_grid(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(scale, zero point) per row of x: 2^bits levels spanning [min(x, 0), max(x, 0)]
    (GPTQ's asymmetric grid; an all-zero row gets [-1, 1])."""
    low, high = x.min(1).values.clamp(max=0), x.max(1).values.clamp(min=0)
    empty = (low == 0) & (high == 0)
    low, high = low.masked_fill(empty, -1.0), high.masked_fill(empty, 1.0)
    scale = (high - low) / (2 ** bits - 1)
    return scale, torch.round(-low / scale)


def to_grid(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """x rounded to the nearest of its row's levels scale * (q - zero), q = 0 .. 2^bits - 1."""
    return scale * (torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1) - zero)


def block_keep(scores: Tensor, keep: Tensor, amount: float, scope: str, start: int, end: int,
               cols: int) -> Tensor:
    """Keep-mask of one block: the lowest scores go, already-pruned weights counted first.

    The count is the block's share of round(amount * size) (per layer, or per row with
    scope=row), taken as a difference of running totals so the blocks add up to the target.
    """
    scores = scores.masked_fill(~keep, -torch.inf)
    rows = scores.shape[0]
    if scope == "row":
        k = round(amount * end) - round(amount * start)
        out = torch.ones_like(keep)
        if k > 0:
            out.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        return out
    k = round(amount * rows * end) - round(amount * rows * start)
    out = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        out[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return out.view_as(keep)
