"""LeNet-5-Caffe (as in Han et al. 2015 and Lee et al. 2019): conv 20@5x5, pool, conv 50@5x5,
pool, fc 500, fc classes; 431K weights on 28x28 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LeNet5(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, name: str = "lenet5"):
        super().__init__()
        channels, height, width = input_shape
        # 'same' padding on small images (8x8 digits) so both 5x5 convs and pools still fit
        padding = 0 if min(height, width) >= 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        with torch.no_grad():  # the flattened size follows from the input size
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(),
                                        nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
