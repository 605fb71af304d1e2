"""How a target sparsity is spread over layers: `strategy.allocation`.

    global   one ranking of every weight's score across layers (the default)
    uniform  every layer loses the same fraction (`strategy.scope=layer` means this)
    row      every output row of every layer loses the same fraction (Wanda's comparison;
             `strategy.scope=row` means this)
    erk      Erdős–Rényi-Kernel densities (Evci et al. 2020): a layer's density is
             proportional to (sum of its weight's dims) / (product of its dims), scaled so the
             total hits the target; layers that would go over density 1 stay dense
    lamp     layer-adaptive magnitude scores (Lee et al. 2021): s_u^2 / sum of s_v^2 over the
             weights v of its layer with s_v >= s_u, then one global ranking; any criterion's
             (non-negative) scores stand in for the magnitudes
    owl      outlier-weighted layer-wise sparsity (Yin et al. 2024) as the authors' code
             (lib/prune_all.py) does it: one dense pass gives each block its outlier ratio,
             the share of Wanda's |W_ij| * ||X_j|| above `strategy.owl_m` times their mean
             over all the block's prunable layers together; the ratios, min-max scaled to
             [0, 2 owl_lambda], are shifted so the mean density is 1 - amount, and every
             layer of a block gets its block's density (more outliers: denser). A block is a
             transformer block (an entry of the model's first nn.ModuleList holding prunable
             layers, calibration.block_of); in a model without one (an MLP, a CNN) each layer
             is its own block. Within a layer the comparison group is the scope's: each output
             row with scope=row (Wanda's), the whole layer otherwise (then integer per-layer
             counts make the total exact). With a layer-wise criterion (Wanda with
             sequential=true, SparseGPT) the pruning pass is sequential, block by block.

`strategy.scope` is kept as an alias: scope=global is allocation=global, scope=layer is
allocation=uniform. `strategy.allocation` (when set) decides; with scope=layer it must be
uniform (scope=global is every weight criterion's default, so it never contradicts).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.strategies import offload
from prunebench.strategies.autodiff import eval_mode, forward_hooks
from prunebench.strategies.calibration import block_of
from prunebench.strategies.ranking import bottom_k, select_by_amount

log = logging.getLogger(__name__)
ALLOCATIONS = ("global", "uniform", "row", "erk", "lamp", "owl")
SCOPE_ALIAS = {"global": "global", "layer": "uniform", "row": "row"}
OWL_BATCHES = 8  # batches the outlier ratios are taken over (a layer-wise criterion: its own)


def resolve(scope: str | None, allocation: str | None) -> str:
    """The allocation a strategy uses, from `allocation` or its alias `scope` (with owl, scope
    is the comparison group inside a layer: row, or the whole layer)."""
    if allocation is None:
        return SCOPE_ALIAS.get(scope, scope)
    if scope == "layer" and allocation not in ("uniform", "owl"):
        raise ValueError(f"strategy.scope=layer contradicts strategy.allocation={allocation}: "
                         "scope is an alias (layer = allocation=uniform), set one")
    return allocation


def check(allocation: str | None, scope: str | None, granularity: str) -> str | None:
    """One-line problem with these keys, or None."""
    if allocation is not None and allocation not in ALLOCATIONS:
        return (f"strategy.allocation={allocation} is invalid: allowed "
                f"{', '.join(ALLOCATIONS)}")
    try:
        allocation = resolve(scope, allocation)
    except ValueError as err:
        return str(err)
    if allocation not in ("global", "uniform") and granularity != "weight":
        return (f"strategy.allocation={allocation} needs strategy.granularity=weight "
                "(it allocates weights, not units)")
    return None


# ---- per-layer densities ------------------------------------------------------------------

def erk_densities(shapes: dict[str, tuple[int, ...]], amount: float) -> dict[str, float]:
    """ERK densities whose weighted total keeps exactly (1 - amount) of the weights.

    density_l = eps * sum(shape_l) / prod(shape_l); eps solves sum_l n_l density_l = kept.
    A layer whose density would pass 1 is kept dense and eps is solved again for the rest.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    kept = (1.0 - amount) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = kept - sum(sizes[n] for n in dense)
        eps = budget / sum(raw[n] * sizes[n] for n in rest) if rest else 0.0
        over = {n for n in rest if eps * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def owl_densities(ratios: dict[str, float], sizes: dict[str, int], amount: float,
                  lam: float) -> dict[str, float]:
    """OWL: the blocks' outlier ratios mapped onto [0, 2 lam], shifted so the mean density
    is 1 - amount (`sizes`: the blocks' weights).

    Yin et al. shift by the plain mean over (equal-sized) transformer blocks, which the
    parameter-weighted mean used here equals; blocks that differ in size (an MLP's layers)
    then still meet the total. Densities are clamped to [0, 1].
    """
    names = list(ratios)
    d = torch.tensor([ratios[n] for n in names], dtype=torch.float64)
    n = torch.tensor([sizes[k] for k in names], dtype=torch.float64)
    spread = d.max() - d.min()
    scaled = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    density = scaled - (scaled * n).sum() / n.sum() + (1.0 - amount)
    return dict(zip(names, density.clamp(0.0, 1.0).tolist(), strict=True))


def keep_counts(densities: dict[str, float], sizes: dict[str, int],
                total_keep: int) -> dict[str, int]:
    """Integer per-layer counts near densities * sizes summing to `total_keep` exactly
    (largest remainders get the leftover weights; no layer passes its size)."""
    want = {n: min(densities[n], 1.0) * sizes[n] for n in sizes}
    counts = {n: min(math.floor(w), sizes[n]) for n, w in want.items()}
    left = total_keep - sum(counts.values())
    order = sorted(sizes, key=lambda n: counts[n] - want[n])  # largest remainder first
    while left != 0:
        step = 1 if left > 0 else -1
        moved = False
        for n in order:
            if left != 0 and 0 <= counts[n] + step <= sizes[n]:
                counts[n] += step
                left -= step
                moved = True
        if not moved:
            break
    return counts


def owl_ratios(model: nn.Module, weights: dict[str, Tensor], batches, m: float,
               store: offload.BlockStore | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """(outlier ratio of each block, the block of each layer) on `batches`, the model as it
    is (dense: before any block of this call is pruned). With `store` (model.offload) one
    block is on the device at a time (offload.each_block), its ratio taken while it is."""
    blocks = {n: block_of(model, n) for n in weights}
    squares: dict[str, Tensor] = {}
    with eval_mode(model), torch.no_grad():
        if store is None:
            with forward_hooks(input_squares(model, list(weights), squares)):
                for x, _ in batches:
                    model(x)
            ratios = outlier_ratios(weights, squares, blocks, m)
        else:
            ratios = {}
            offload.each_block(
                model, list(weights), store,
                lambda block: ratios.update(outlier_ratios(block, squares, blocks, m)),
                batches=batches, hooks=lambda names: input_squares(model, names, squares),
                label="owl")
    log.info("owl outlier ratios: %s", ", ".join(f"{b} {r:.4f}" for b, r in ratios.items()))
    return ratios, blocks


def input_squares(model: nn.Module, names: list[str], squares: dict[str, Tensor]):
    """(module, forward hook) pairs adding the squares of each named layer's input features,
    summed over every sample and position, to `squares[name]` (float32, on their device)."""
    def hook(name: str, module: nn.Module):
        def add(_module, inputs, _output):
            x = inputs[0].detach().float()
            # Linear: features in the last dim; Conv: channels in dim 1
            x = x.flatten(0, -2) if isinstance(module, nn.Linear) else \
                x.transpose(0, 1).flatten(1).T
            squares[name] = squares.get(name, 0) + x.pow(2).sum(0)
        return add

    for n in names:
        module = model.get_submodule(n.rpartition(".")[0])
        yield module, hook(n, module)


def outlier_ratios(weights: dict[str, Tensor], squares: dict[str, Tensor],
                   blocks: dict[str, str], m: float) -> dict[str, float]:
    """Per block of `weights`: the fraction of |W_ij| * ||X_j|| above m x their mean, over
    every layer of the block together (||X_j||^2: `squares`, input feature j of the layer
    over every calibration sample and position). The layers' squares are used up."""
    metric: dict[str, list[Tensor]] = {}
    for n, w in weights.items():
        shape = (1, -1) + (1,) * (w.dim() - 2)  # input features are dim 1 of the weight
        score = w.detach().abs().float() * squares.pop(n).sqrt().view(shape)
        metric.setdefault(blocks[n], []).append(score.flatten())
    ratios = {}
    for block, scores in metric.items():
        flat = torch.cat(scores)
        ratios[block] = float((flat > m * flat.mean()).float().mean())
    return ratios


def block_densities(ratios: dict[str, float], blocks: dict[str, str], sizes: dict[str, int],
                    amount: float, lam: float) -> dict[str, float]:
    """OWL's density of each block (`blocks`: the block of each layer, `sizes`: its weights)."""
    block_sizes: dict[str, int] = {}
    for n, block in blocks.items():
        block_sizes[block] = block_sizes.get(block, 0) + sizes[n]
    return owl_densities(ratios, block_sizes, amount, lam)


def owl_amounts(density: dict[str, float], blocks: dict[str, str], sizes: dict[str, int],
                amount: float, rows: bool) -> dict[str, float]:
    """The fraction of each layer's weights removed under owl: its block's 1 - density
    (`rows`: each output row loses it), or per layer in integer counts adding up to
    round(amount * n) weights in all."""
    layer_density = {n: density[blocks[n]] for n in sizes}
    if rows:
        return {n: 1.0 - d for n, d in layer_density.items()}
    total = sum(sizes.values())
    keep = keep_counts(layer_density, sizes, total - round(amount * total))
    return {n: (sizes[n] - keep[n]) / sizes[n] for n in sizes}


# ---- selection ----------------------------------------------------------------------------

def lamp_scores(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """LAMP: s_u^2 / sum_{v in layer, s_v >= s_u} s_v^2; -inf (pruned already) stays -inf.

    Tied scores all count in each other's denominator.
    """
    out = {}
    for name, s in scores.items():
        flat = s.detach().double().flatten()
        alive = torch.isfinite(flat)
        if (flat[alive] < 0).any():
            raise ConfigError(f"strategy.allocation=lamp needs non-negative scores; {name} has "
                             "negative ones")
        sq = torch.where(alive, flat, torch.zeros_like(flat)).pow(2)
        order = torch.argsort(sq, descending=True, stable=True)
        ranked = sq[order]
        suffix = torch.cumsum(ranked, 0)  # sum of every score at or above each, largest first
        _, tie, counts = torch.unique_consecutive(ranked, return_inverse=True,
                                                  return_counts=True)
        last = torch.cumsum(counts, 0) - 1  # a tie's denominator includes the whole tie
        denom = torch.empty_like(sq)
        denom[order] = suffix[last[tie]]
        lamp = torch.where(denom > 0, sq / denom.clamp_min(1e-300), torch.zeros_like(sq))
        lamp = torch.where(alive, lamp, torch.full_like(lamp, -math.inf))
        out[name] = lamp.view_as(s)
    return out


def erk_amounts(scores: dict[str, Tensor], amount: float) -> dict[str, int]:
    """How many weights each layer loses under erk, round(amount * n) in all."""
    sizes = {n: s.numel() for n, s in scores.items()}
    densities = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, amount)
    total = sum(sizes.values())
    keep = keep_counts(densities, sizes, total - round(amount * total))
    return {n: sizes[n] - keep[n] for n in sizes}


def select(scores: dict[str, Tensor], amount: float, allocation: str) -> dict[str, Tensor]:
    """Keep-masks removing round(amount * n) weights in all, spread as `allocation` says
    (owl: the selection's `owl_amounts` per layer)."""
    if allocation in ("global", "uniform", "row"):
        scope = {"global": "global", "uniform": "layer", "row": "row"}[allocation]
        return select_by_amount(scores, amount, scope)
    if allocation == "lamp":
        return select_by_amount(lamp_scores(scores), amount, "global")
    removed = erk_amounts(scores, amount)
    return {n: bottom_k(s.flatten(), removed[n]).view_as(s) for n, s in scores.items()}

