"""A small GPT (Radford et al. 2019) in plain torch, in the spirit of nanoGPT: token and learned
position embeddings, pre-LayerNorm blocks of causal self-attention and a GELU MLP, a final
LayerNorm and a head tied to the token embedding. Input [B, T] token ids, output [B, T, vocab].

Prunable are the Linear layers inside the blocks (attention qkv and projection, MLP in and
out), as in the LLM-pruning papers; embeddings, norms and the tied head hold no Linear module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunebench.config.errors import ConfigError


class SelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, causal: bool = True):
        super().__init__()
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.dropout, self.causal = n_head, dropout, causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        if torch.is_grad_enabled():
            # written out: the fused kernel has no second derivative, which Hessian criteria
            # (obd, grasp) take through this graph
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            if self.causal:
                future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                att = att.masked_fill(future, float("-inf"))
            y = F.dropout(att.softmax(-1), self.dropout, self.training) @ v
        else:  # evaluation and inference: the fused kernel, a third of the forward's time
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout * self.training,
                                               is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (also the Vision Transformer's, with causal=False)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, causal: bool = True,
                 mlp_ratio: float = 4.0):
        super().__init__()
        hidden = round(mlp_ratio * n_embd)
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout, causal)
        self.mlp = nn.Sequential(nn.Linear(n_embd, hidden), nn.GELU(),
                                 nn.Linear(hidden, n_embd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, n_embd: int = 128,
                 n_layer: int = 4, n_head: int = 4, block_size: int | None = None,
                 dropout: float = 0.0, name: str = "gpt"):
        super().__init__()
        if n_embd % n_head:
            raise ConfigError(f"model.n_embd={n_embd} is invalid: allowed a multiple of "
                              f"model.n_head={n_head}")
        self.block_size = block_size or input_shape[0]  # context: the windows' length
        if input_shape[0] > self.block_size:
            raise ConfigError(f"dataset.seq_len={input_shape[0]} is longer than "
                              f"model.block_size={self.block_size}")
        self.wte = nn.Embedding(num_classes, n_embd)  # num_classes: the vocabulary size
        self.wpe = nn.Embedding(self.block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.apply(self._init)
        for name_, p in self.named_parameters():  # GPT-2's scaled init of residual outputs
            if name_.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / (2 * n_layer) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # the head tied to the token embedding
