"""Multilayer perceptrons on flattened inputs (the default `mlp`, and LeNet-300-100)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from prunebench.config.values import check_sizes


class MLP(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (256, 128), name: str = "mlp"):
        check_sizes("model.hidden", hidden, allowed="a list of widths >= 1 ([] for none)",
                    empty=True)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
