"""Generated Gaussian-cluster images: one random prototype per class plus noise."""

from __future__ import annotations

import torch

from prunebench.data.batches import Dataset, Split, carve_validation


def load(name: str = "synthetic", train_size: int = 512, test_size: int = 256,
         val_fraction: float = 0.0, channels: int = 1, image_size: int = 8,
         num_classes: int = 4, noise: float = 1.0, split_seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(split_seed)
    shape = (channels, image_size, image_size)
    prototypes = torch.randn((num_classes, *shape), generator=g)

    def sample(n: int) -> Split:
        y = torch.randint(num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn((n, *shape), generator=g)
        return Split(x, y)

    train, val = carve_validation(sample(train_size), val_fraction, split_seed)
    ones = torch.ones(channels)
    return Dataset(name, train, sample(test_size), val, shape, num_classes,
                   mean=0 * ones, std=ones, scale=1.0)
