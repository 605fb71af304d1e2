"""CIFAR ResNets of He et al. 2016 (section 4.2): depth 6n+2, three stages of n basic blocks
with 16/32/64 channels, identity shortcuts zero-padded where the shape changes (option A);
ResNet-20 has 0.27M parameters. Global average pooling makes any input size work."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.config.values import check_sizes


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra = stride, out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: subsample and append zero channels; no parameters to prune."""
        if self.stride == 1 and self.extra == 0:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 20,
                 widths: Sequence[int] = (16, 32, 64), name: str = "resnet"):
        super().__init__()
        check_sizes("model.widths", widths, allowed="a list of channel counts >= 1")
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"model.depth={depth} is invalid: allowed 6n+2 (20, 32, 44, 56, 110)")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
