"""torchvision's ResNet-18 with a small-input stem (3x3 conv, stride 1, no max-pool), the usual
adaptation for 28 to 32 pixel images; 11.2M parameters."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import resnet18


def ResNet18(input_shape: Sequence[int], num_classes: int, name: str = "resnet18") -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model
