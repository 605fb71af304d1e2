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
    owl      outlier-weighted layer-wise sparsity (Yin et al. 2024): a layer's outlier ratio is
             the fraction of |W_ij| * ||X_j|| above `strategy.owl_m` times the layer's mean;
             layers with more outliers get lower sparsity, spread over
             [-owl_lambda, +owl_lambda] around the target

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
from prunebench.strategies.autodiff import eval_mode, forward_hooks, take_batches
from prunebench.strategies.ranking import bottom_k, select_by_amount

log = logging.getLogger(__name__)
ALLOCATIONS = ("global", "uniform", "row", "erk", "lamp", "owl")
SCOPE_ALIAS = {"global": "global", "layer": "uniform", "row": "row"}
OWL_BATCHES = 8  # training batches the activation norms of allocation=owl are taken over


def resolve(scope: str | None, allocation: str | None) -> str:
    """The allocation a strategy uses, from `allocation` or its alias `scope`."""
    if allocation is None:
        return SCOPE_ALIAS.get(scope, scope)
    if scope == "layer" and allocation != "uniform":
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
    """OWL: outlier ratios mapped onto [0, 2 lam], shifted so the mean density is 1 - amount.

    Yin et al. shift by the plain mean over (equal-sized) transformer blocks; layers here
    differ in size, so the shift uses the parameter-weighted mean and the total is exact.
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


def owl_ratios(model: nn.Module, weights: dict[str, Tensor], ctx, m: float) -> dict[str, float]:
    """Outlier ratios of the model's layers on the first OWL_BATCHES training batches."""
    with eval_mode(model):
        ratios = outlier_ratios(model, weights, take_batches(ctx, OWL_BATCHES), m)
    log.info("owl outlier ratios: %s", ", ".join(f"{n} {r:.4f}" for n, r in ratios.items()))
    return ratios


def outlier_ratios(model: nn.Module, weights: dict[str, Tensor], batches, m: float
                   ) -> dict[str, float]:
    """Per layer: fraction of |W_ij| * ||X_j|| above m x its mean (X_j: input feature j of
    the layer over every sample and position of `batches`)."""
    modules = {n: model.get_submodule(n.rpartition(".")[0]) for n in weights}
    squares: dict[str, Tensor] = {}

    def hook(name):
        def add(_module, inputs, _output):
            x = inputs[0].detach().float()
            # Linear: features in the last dim; Conv: channels in dim 1
            x = x.flatten(0, -2) if isinstance(modules[name], nn.Linear) else \
                x.transpose(0, 1).flatten(1).T
            squares[name] = squares.get(name, 0) + x.pow(2).sum(0)
        return add

    with forward_hooks((mod, hook(n)) for n, mod in modules.items()), torch.no_grad():
        for x, _ in batches:
            model(x)
    ratios = {}
    for n, w in weights.items():
        shape = (1, -1) + (1,) * (w.dim() - 2)  # input features are dim 1 of the weight
        score = w.detach().abs().float() * squares[n].sqrt().view(shape)
        ratios[n] = float((score > m * score.mean()).float().mean())
    return ratios


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


def layer_amounts(allocation: str, scores: dict[str, Tensor], amount: float,
                  ratios: dict[str, float] | None, lam: float) -> dict[str, int]:
    """How many weights each layer loses under erk or owl, round(amount * n) in all."""
    sizes = {n: s.numel() for n, s in scores.items()}
    if allocation == "erk":
        densities = erk_densities({n: tuple(s.shape) for n, s in scores.items()}, amount)
    else:
        densities = owl_densities(ratios, sizes, amount, lam)
    total = sum(sizes.values())
    keep = keep_counts(densities, sizes, total - round(amount * total))
    return {n: sizes[n] - keep[n] for n in sizes}


def select(scores: dict[str, Tensor], amount: float, allocation: str,
           ratios: dict[str, float] | None = None, lam: float = 0.08) -> dict[str, Tensor]:
    """Keep-masks removing round(amount * n) weights in all, spread as `allocation` says."""
    if allocation in ("global", "uniform", "row"):
        scope = {"global": "global", "uniform": "layer", "row": "row"}[allocation]
        return select_by_amount(scores, amount, scope)
    if allocation == "lamp":
        return select_by_amount(lamp_scores(scores), amount, "global")
    removed = layer_amounts(allocation, scores, amount, ratios, lam)
    return {n: bottom_k(s.flatten(), removed[n]).view_as(s) for n, s in scores.items()}

