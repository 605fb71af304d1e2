"""Quantization of the pruned weights: each prunable layer's nonzeros become codes into a small
table of shared values, the zeros (the masks) stay exactly where they are.

    kmeans  Deep Compression's weight sharing (Han et al. 2016, sec. 3): per layer, 1-D k-means
            over the remaining nonzeros with 2^bits clusters, centroids initialized linearly
            between the smallest and largest weight (the paper's best initialization); a weight
            becomes the code of its cluster and the table is the centroids
    int8    symmetric per output channel: scale = max|w| / 127 of each output row, code =
            round(w / scale) in [-127, 127]; the table is the per-row scales

A layer with no nonzeros left has nothing to store and is skipped. `Quantized` keeps the codes
(the assignment) and the table; `decode` rebuilds the weight from them, which both the model
(fine-tuning, the quantized phase) and the compressed file's loader use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("none", "int8", "kmeans")
INT8_MAX = 127
KMEANS_ITERATIONS = 100


@dataclass
class Quantized:
    """One layer: `positions` of its nonzeros in the flattened weight (ascending), their
    `codes`, and the `table` the codes index (kmeans: centroids [2^bits]; int8: one scale per
    output row, the code being the integer level)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    positions: Tensor  # int64 [nonzeros]
    codes: Tensor      # int64 [nonzeros]: cluster index (kmeans) or level -127..127 (int8)
    table: Tensor      # float32: centroids (kmeans) or per-row scales (int8)

    def values(self, table: Tensor | None = None) -> Tensor:
        """The nonzeros' values from `table` (default: the layer's own)."""
        table = self.table if table is None else table
        if self.kind == "kmeans":
            return table[self.codes]
        row_size = int(torch.tensor(self.shape[1:]).prod()) if len(self.shape) > 1 else 1
        return table[self.positions // row_size] * self.codes.to(table.dtype)

    def decode(self, table: Tensor | None = None) -> Tensor:
        """The dense weight: values at `positions`, exact zeros elsewhere (differentiable in
        `table`, so each cluster's gradients are summed into its shared value)."""
        values = self.values(table)
        flat = values.new_zeros(int(torch.tensor(self.shape).prod()))
        return flat.index_put((self.positions,), values).view(self.shape)

    def levels(self) -> int:
        """Distinct nonzero values the layer holds."""
        values = self.values()
        return int(values[values != 0].unique().numel())


def quantize(name: str, weight: Tensor, kind: str, bits: int) -> Quantized | None:
    """Quantize one layer's nonzeros; None when it has none."""
    flat = weight.detach().flatten().float().cpu()
    positions = flat.nonzero().flatten()
    if positions.numel() == 0:
        return None
    values = flat[positions]
    if kind == "kmeans":
        table, codes = kmeans_1d(values, 2 ** bits)
    elif kind == "int8":
        rows = weight.detach().float().cpu().reshape(weight.shape[0], -1)
        table = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
        row_of = positions // rows.shape[1]
        codes = torch.round(values / table[row_of]).clamp(-INT8_MAX, INT8_MAX).long()
    else:
        raise ValueError(f"unknown quantization {kind}")
    return Quantized(name, kind, tuple(weight.shape), positions, codes, table)


def kmeans_1d(values: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm in one dimension with linear initialization: (centroids, codes).

    In 1-D the nearest centroid is found by binary search among the midpoints of the sorted
    centroids, O(n log k) per iteration instead of a general k-means' O(n k), which is what
    keeps 256 clusters over a language model's millions of weights fast. Clusters that end
    empty keep their value (unused codes); fewer distinct weights than clusters are their own
    centroids.
    """
    low, high = values.min(), values.max()
    centroids = torch.linspace(float(low), float(high), clusters, dtype=torch.float64)
    data = values.double()
    codes = None
    for _ in range(KMEANS_ITERATIONS):
        centroids, order = centroids.sort()
        new_codes = torch.bucketize(data, (centroids[1:] + centroids[:-1]) / 2)
        if codes is not None and torch.equal(new_codes, codes):
            break
        codes = new_codes
        sums = torch.zeros(clusters, dtype=torch.float64).index_add_(0, codes, data)
        counts = torch.bincount(codes, minlength=clusters)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids.float(), codes


def apply(model, layers: list[Quantized]) -> None:
    """Write each layer's decoded weight into the model (in place, no autograd)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for q in layers:
            param = params[q.name]
            param.copy_(q.decode().to(param.device, param.dtype))
