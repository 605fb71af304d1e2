"""Sparsity patterns finer than a layer: N:M groups and per-row comparison.

N:M (`strategy.pattern=2:4`): every group of M consecutive weights along a weight's input
dimension loses its N lowest scores, so 2:4 and 4:8 remove exactly half of every group. The
input dimension is dim 1 of weight.flatten(1): a Linear weight's columns; for a convolution the
flattened (in_channels, kernel height, kernel width) in torch's layout, kernel width fastest
(not the channels-last order cuSPARSELt's convolutions group by). A layer whose input width is
not a multiple of M is left to the plain selection and logged, as NVIDIA's ASP skips it.

Row comparison (`strategy.scope=row`, Wanda's choice): each output row of every weight loses
the same fraction of its own weights.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """`"2:4"` -> (2, 4); None stays None. A bad pattern raises ValueError naming the key."""
    if pattern is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if match is None or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(f"strategy.pattern={pattern} is invalid: allowed null or N:M with "
                         f"0 < N < M, e.g. 2:4")
    return int(match[1]), int(match[2])


def pattern_removes(n: int, m: int, amount: float | None) -> int:
    """Weights each group of M loses: N, or fewer on the way there (iterative schedules).

    round(amount * M), capped at N: amount=N/M (or more, or no amount) gives exactly N:M; an
    intermediate round of an iterative or gradual schedule removes fewer per group.
    """
    return n if amount is None else min(n, round(amount * m))


def nm_keep(scores: Tensor, n: int, m: int) -> Tensor:
    """Boolean keep-mask removing the n lowest scores of every m consecutive along dim 1.

    `scores` is one weight's scores; its flattened input width must be a multiple of m. Ties
    go to the earlier position (stable sort), as in base.bottom_k.
    """
    rows = scores.flatten(1)
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    if n > 0:
        lowest = torch.argsort(groups, dim=-1, stable=True)[..., :n]
        keep.scatter_(-1, lowest, False)
    return keep.view_as(scores)


def fits_pattern(scores: Tensor, m: int) -> bool:
    return scores.dim() > 1 and scores[0].numel() % m == 0


def row_keep(scores: Tensor, amount: float) -> Tensor:
    """Boolean keep-mask removing round(amount * width) lowest scores from every output row."""
    rows = scores.flatten(1)
    keep = torch.ones_like(rows, dtype=torch.bool)
    k = round(amount * rows.shape[1])
    if k > 0:
        lowest = torch.argsort(rows, dim=1, stable=True)[:, :k]
        keep.scatter_(1, lowest, False)
    return keep.view_as(scores)


def pattern_keep(scores: dict[str, Tensor], n: int, m: int, amount: float | None,
                 fallback) -> dict[str, Tensor]:
    """N:M keep-masks for the weights that fit groups of m; `fallback(scores)` for the rest."""
    removes = pattern_removes(n, m, amount)
    fit = {k: s for k, s in scores.items() if fits_pattern(s, m)}
    rest = {k: s for k, s in scores.items() if k not in fit}
    if rest:
        log.warning("pattern %d:%d: input width not a multiple of %d, unstructured "
                    "selection instead in %s", n, m, m, ", ".join(rest))
    return {**{k: nm_keep(s, removes, m) for k, s in fit.items()},
            **(fallback(rest) if rest else {})}
