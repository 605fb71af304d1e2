"""A small Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches embedded by a
strided convolution, learned position embeddings, pre-LayerNorm blocks (the GPT's, without the
causal mask), a final LayerNorm, mean pooling over patches and a linear head.

As in the transformer-pruning papers (Wanda's ViT and DeiT runs), the Linear layers inside the
blocks are prunable; the patch embedding and the head stay dense (`dense_by_default`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.models.gpt import Block


class ViT(nn.Module):
    dense_by_default = ("patch_embed", "head")

    def __init__(self, input_shape: Sequence[int], num_classes: int, patch_size: int = 4,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0, name: str = "vit"):
        super().__init__()
        channels, height, width = input_shape
        if height % patch_size or width % patch_size:
            raise ConfigError(f"model.patch_size={patch_size} is invalid: allowed a divisor "
                              f"of the image size {height}x{width}")
        if dim % heads:
            raise ConfigError(f"model.dim={dim} is invalid: allowed a multiple of "
                              f"model.heads={heads}")
        patches = (height // patch_size) * (width // patch_size)
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, patches, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, causal=False, mlp_ratio=mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, patches, dim]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))
