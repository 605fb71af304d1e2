"""VGG-11/16 with batch norm, CIFAR-style (as in Li et al. 2017 and Liu et al. 2017): 3x3 conv
stacks, a 512-wide feature vector and a single linear classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunebench.config.errors import ConfigError

LAYOUTS = {  # output channels, "M" = 2x2 max-pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 16,
                 name: str = "vgg"):
        super().__init__()
        if depth not in LAYOUTS:
            allowed = ", ".join(map(str, LAYOUTS))
            raise ConfigError(f"model.depth={depth} is invalid: allowed {allowed}")
        layers: list[nn.Module] = []
        channels, size = input_shape[0], min(input_shape[1:])
        for item in LAYOUTS[depth]:
            if item == "M":
                if size >= 2:  # small inputs (28 or 8 pixels) skip the pools they cannot afford
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False),
                       nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
