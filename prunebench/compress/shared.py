"""Fine-tuning the shared values with the assignment fixed (Deep Compression, sec. 3.3).

Each quantized layer's weight is re-parametrized (torch.nn.utils.parametrize) as
`decode(table)`: the trained parameter is the layer's table (centroids, or int8 scales), the
codes and the zeros are fixed buffers. Autograd through the gather sums the gradients of every
weight of a cluster into its centroid, which is the paper's update; pruned weights stay exact
zeros because they are not in the gather at all, so the masks cannot change.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunebench.compress.quantize import Quantized


class SharedValues(nn.Module):
    """weight = layer.decode(table); `right_inverse` hands parametrize the table to train."""

    def __init__(self, layer: Quantized):
        super().__init__()
        self.layer = layer

    def forward(self, table: Tensor) -> Tensor:
        self.layer.positions = self.layer.positions.to(table.device)
        self.layer.codes = self.layer.codes.to(table.device)
        return self.layer.decode(table)

    def right_inverse(self, weight: Tensor) -> Tensor:
        return self.layer.table.to(weight.device, weight.dtype).clone()


def tables_trainable(model: nn.Module, layers: list[Quantized]) -> None:
    """Replace each quantized layer's weight by its table (the trained parameter)."""
    for q in layers:
        module = model.get_submodule(q.name.rpartition(".")[0])
        parametrize.register_parametrization(module, "weight", SharedValues(q), unsafe=True)


def tables_back(model: nn.Module, layers: list[Quantized]) -> None:
    """Keep the trained tables in `layers` and leave plain weights equal to their decoding."""
    for q in layers:
        module = model.get_submodule(q.name.rpartition(".")[0])
        table = module.parametrizations.weight.original.detach()
        q.table = table.float().cpu().clone()
        q.positions, q.codes = q.positions.cpu(), q.codes.cpu()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        with torch.no_grad():  # the weight decoded once more from the table as stored
            module.weight.copy_(q.decode().to(module.weight.device, module.weight.dtype))
