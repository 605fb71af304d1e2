"""The in-memory dataset container and its batch iterator.

Whole splits are held as tensors (uint8 images where the source is 8-bit); a batch is one
index_select plus a per-channel affine normalization, so an epoch costs a handful of tensor ops
per batch instead of a Python call per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from prunebench import distributed


@dataclass
class Split:
    x: Tensor  # [N, C, H, W], uint8 (scale 255) or float (scale 1)
    y: Tensor  # [N], int64
    # a memory-mapped image file (data/mapped.py): the rows of `x` this split holds, in its
    # order; `x` then stays on the host and each batch is moved to the device of `y`
    rows: Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        if self.rows is not None:
            return Split(self.x, self.y.to(device), self.rows)
        return Split(self.x.to(device), self.y.to(device))

    def images(self, idx: Tensor) -> Tensor:
        """The raw rows at positions `idx` of the split, on the device of `y`."""
        if self.rows is None:
            return self.x.index_select(0, idx)
        rows = self.rows.index_select(0, idx.cpu())
        return self.x.index_select(0, rows).to(self.y.device, non_blocking=True)

    def resident(self) -> Tensor:
        """All of `x` in memory (small splits, and what only ever reads a few rows)."""
        return self.x if self.rows is None else self.x[self.rows]


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
    # how a language model is judged (data/text.py), recorded in results.json as `protocol`
    protocol: dict | None = None
    # a language model's calibration text apart from `train` (dataset.calibration): a
    # data/calibration.py CalibrationText the session draws windows from; None: `train`
    calibration: object | None = None

    @property
    def input_dtype(self) -> torch.dtype:
        """What a model takes: float images, or int64 token ids."""
        return torch.long if self.task == "lm" else torch.float32

    def to(self, device: torch.device) -> Dataset:
        val = self.val.to(device) if self.val is not None else None
        return replace(self, train=self.train.to(device), test=self.test.to(device), val=val,
                       mean=self.mean.to(device), std=self.std.to(device))


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Training steps in one pass over `split`: the last batch may be short."""
    return math.ceil(len(split) / batch_size)


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
    order = torch.randperm(n, generator=generator).to(split.y.device) if shuffle else None
    shape = (1, -1) + (1,) * (split.x.dim() - 2)
    offset = (data.mean * data.scale).view(shape)
    inv = (1.0 / (data.std * data.scale)).view(shape)
    augment = data.augment if train and data.task != "lm" else None
    sharded = shard and distributed.active()
    for start in range(0, n, batch_size):
        if order is None and not sharded and split.rows is None:  # a slice: no copy
            xb, yb = split.x[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = (order[start:start + batch_size] if order is not None
                   else torch.arange(start, min(start + batch_size, n), device=split.y.device))
            part = distributed.shard(idx) if sharded else idx
            xb = split.images(idx if augment is not None else part)
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
    """Split a seeded random `fraction` of the training set off as validation (a mapped
    split is carved by its rows: nothing is read)."""
    if fraction <= 0:
        return train, None
    n_val = max(1, round(len(train) * fraction))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    if train.rows is not None:
        return (Split(train.x, train.y[train_idx], train.rows[train_idx]),
                Split(train.x, train.y[val_idx], train.rows[val_idx]))
    return (Split(train.x[train_idx], train.y[train_idx]),
            Split(train.x[val_idx], train.y[val_idx]))


def channel_stats(x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of [N, C, ...] data, in [0, 1] units."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / scale
    return flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
