"""Whole-batch augmentation: random crop with zero padding and horizontal flip as one gather.

Each image gets its own crop offset and flip, drawn as tensors, so a batch costs a pad and one
advanced-indexing gather instead of a Python call per image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_flip(padding: int = 4) -> Callable[[Tensor, torch.Generator], Tensor]:
    def augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, c, h, w = x.shape
        # offsets and flips drawn on the CPU generator, so runs are seeded on every device
        dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
        flip = torch.rand((n, 1), generator=generator) < 0.5
        rows = dy + torch.arange(h)
        cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
        rows, cols = rows.to(x.device), cols.to(x.device)
        padded = F.pad(x, (padding,) * 4)  # zeros: the mean colour, as x is normalized
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    return augment
