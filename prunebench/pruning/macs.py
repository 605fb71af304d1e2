"""Multiply-accumulates (MACs) per image, measured with forward hooks on a dummy input.

results.json keeps the names users read, `flops` and `effective_flops`, for these counts: they
are MACs (one multiply-accumulate each; torch's FLOP counter reports twice as many).

Every Linear and Conv layer is counted (norms, activations, pooling and biases are not, as in
the pruning literature's FLOP figures). The *effective* count skips zero weights: a layer's MACs
scale with the nonzero fraction of its weight, which is what a sparse kernel would execute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunebench.pruning.masks import PRUNABLE


def layer_macs(model: nn.Module, input_shape: Sequence[int],
               dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """{layer name: {macs, effective_macs}} for one input of `input_shape` (C, H, W), or
    one window of token ids (T,) with dtype int64."""
    counts: dict[str, dict] = {}

    def hook(name: str):
        def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                per_output = module.in_features
            else:  # each output value sums over its group's input channels times the kernel
                per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs = output.numel() * per_output
            density = int(torch.count_nonzero(module.weight)) / module.weight.numel()
            entry = counts.setdefault(name, {"macs": 0, "effective_macs": 0})
            entry["macs"] += macs  # a layer called twice counts twice
            entry["effective_macs"] += round(macs * density)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, PRUNABLE)]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()  # no batch-norm statistics updated by the dummy input
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


def count(model: nn.Module, input_shape: Sequence[int],
          dtype: torch.dtype = torch.float32) -> dict:
    """Totals recorded in every phase of results.json: `flops` and `effective_flops`, both
    counted in MACs (the keys keep their first names)."""
    layers = layer_macs(model, input_shape, dtype).values()
    return {"flops": sum(layer["macs"] for layer in layers),
            "effective_flops": sum(layer["effective_macs"] for layer in layers)}
