"""The in-memory dataset container and its batch iterator.

Whole splits are held as tensors (uint8 images where the source is 8-bit); a batch is one
index_select plus a per-channel affine normalization, so an epoch costs a handful of tensor ops
per batch instead of a Python call per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from prunebench import distributed


@dataclass
class Split:
    x: Tensor  # [N, C, H, W], uint8 (scale 255) or float (scale 1)
    y: Tensor  # [N], int64

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Split | None
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int
    mean: Tensor  # per channel, in [0, 1] units
    std: Tensor
    scale: float = 255.0  # raw value of 1.0 (255 for uint8 images)
    # optional whole-batch augmentation applied to normalized training batches
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = field(default=None)
    # "classify": x are images, y labels; "lm": x are token windows [N, T] (input_shape (T,),
    # num_classes the vocabulary), y the next tokens, served as they are (data/text.py)
    task: str = "classify"

    @property
    def input_dtype(self) -> torch.dtype:
        """What a model takes: float images, or int64 token ids."""
        return torch.long if self.task == "lm" else torch.float32

    def to(self, device: torch.device) -> Dataset:
        val = self.val.to(device) if self.val is not None else None
        return replace(self, train=self.train.to(device), test=self.test.to(device), val=val,
                       mean=self.mean.to(device), std=self.std.to(device))


def batches(data: Dataset, split: Split, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, train: bool = False, shard: bool = False
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield normalized (x, y) batches; `train=True` applies the dataset's augmentation.

    `shard=True` on a run of several ranks yields this rank's part of each global batch of
    `batch_size` (the order is drawn from `generator` alike on every rank). Augmentation draws
    from the generator for the whole global batch, as one process does, before the part is
    taken, so its random draws are those of the one-process run.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.x.device) if shuffle else None
    shape = (1, -1) + (1,) * (split.x.dim() - 2)
    offset = (data.mean * data.scale).view(shape)
    inv = (1.0 / (data.std * data.scale)).view(shape)
    augment = data.augment if train and data.task != "lm" else None
    sharded = shard and distributed.active()
    for start in range(0, n, batch_size):
        if order is None and not sharded:  # a slice: no copy of uint8 or token data
            xb, yb = split.x[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = (order[start:start + batch_size] if order is not None
                   else torch.arange(start, min(start + batch_size, n), device=split.x.device))
            part = distributed.shard(idx) if sharded else idx
            xb = split.x.index_select(0, idx if augment is not None else part)
            yb = split.y.index_select(0, part)
        if data.task == "lm":  # token ids: nothing to normalize or augment
            yield xb, yb
            continue
        xb = torch.sub(xb.float(), offset).mul_(inv)  # sub makes a copy: float data stay put
        if augment is not None:
            xb = augment(xb, generator)
            if sharded:  # the same rows of the augmented global batch as `part`
                xb = distributed.shard(xb)
        yield xb, yb


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Split a seeded random `fraction` of the training set off as validation."""
    if fraction <= 0:
        return train, None
    n_val = max(1, round(len(train) * fraction))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return (Split(train.x[train_idx], train.y[train_idx]),
            Split(train.x[val_idx], train.y[val_idx]))


def channel_stats(x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of [N, C, ...] data, in [0, 1] units."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / scale
    return flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
