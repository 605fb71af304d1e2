"""scikit-learn's bundled 8x8 handwritten digits: offline, tiny, the embedded default."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from prunebench.data.batches import Dataset, Split, carve_validation, channel_stats


def load(name: str = "digits", test_fraction: float = 0.2, val_fraction: float = 0.1,
         split_seed: int = 0) -> Dataset:
    bunch = load_digits()
    # pixel values are 0..16; store as 8-bit images like every other image dataset
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction,
        stratify=labels.numpy(), random_state=split_seed)
    x = images.unsqueeze(1)  # [N, 1, 8, 8]
    train = Split(x[train_idx], labels[train_idx])
    test = Split(x[test_idx], labels[test_idx])
    train, val = carve_validation(train, val_fraction, split_seed)
    mean, std = channel_stats(train.x, 255.0)
    return Dataset(name, train, test, val, (1, 8, 8), 10, mean, std, 255.0)
