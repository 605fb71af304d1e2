"""Gradient-health telemetry: is training exploding, vanishing, or being held by clipping?

Every optimizer step contributes one global gradient norm (one fused `_foreach_norm` over all
gradients, taken before clipping) and one clipped flag. Both stay on the device as 0-dim
tensors until the epoch ends, so recording adds no host synchronization (loop.fit reads the
norm once per step, as its divergence check); the statistics are computed once per epoch on
the stacked buffer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def grad_norm(grads: list[Tensor]) -> Tensor:
    """Global L2 norm of all gradients (the norm clip_grad_norm_ compares with max_norm)."""
    if not grads:
        return torch.zeros(())
    # One call over all tensors (fused kernels on CUDA, a C++ loop on CPU). get_total_norm
    # takes a Python loop of norms on CPU instead, at twice the cost per step.
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]))


def clip(params: list[Tensor], norm: Tensor, max_norm: float | None,
         max_value: float | None) -> Tensor:
    """Clip gradients in place; returns a 0-dim bool tensor: did clipping change them?

    `norm` is the global norm before clipping. Value clipping runs first (as in loop.fit's
    documented order), then norm clipping on what is left.
    """
    clipped = torch.zeros((), dtype=torch.bool, device=norm.device)
    if max_value is None and max_norm is None:  # the common case: no list built per step
        return clipped
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return clipped
    if max_value is not None:
        clipped = clipped | (nn.utils.get_total_norm(grads, math.inf) > max_value)
        nn.utils.clip_grad_value_(params, max_value)
        if max_norm is not None:
            norm = nn.utils.get_total_norm(grads)
    if max_norm is not None:
        clipped = clipped | (norm > max_norm)
        nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return clipped


def summarize(norms: Tensor, clipped: Tensor, nonfinite_losses: int) -> dict:
    """Mean, max and 99th percentile of the finite norms; clipped fraction; non-finite counts."""
    norms = norms.double().cpu()
    finite = norms[torch.isfinite(norms)]
    stats = {"steps": len(norms), "norm_mean": None, "norm_max": None, "norm_p99": None}
    if len(finite):
        stats |= {"norm_mean": finite.mean().item(), "norm_max": finite.max().item(),
                  "norm_p99": torch.quantile(finite, 0.99).item()}
    return stats | {
        "clipped_fraction": clipped.double().mean().item() if len(clipped) else 0.0,
        "nonfinite_grads": len(norms) - len(finite),
        "nonfinite_losses": nonfinite_losses,
    }


class GradientStats:
    """Collects one phase's per-step norms; `summary()` is what results.json records."""

    def __init__(self):
        self.epochs: list[dict] = []
        self._norms: list[Tensor] = []
        self._clipped: list[Tensor] = []
        self._nonfinite_losses = 0
        self._past_norms: list[Tensor] = []
        self._past_clipped: list[Tensor] = []
        self._past_nonfinite = 0

    def step(self, norm: Tensor, clipped: Tensor) -> None:
        self._norms.append(norm.detach())
        self._clipped.append(clipped)

    def nonfinite_loss(self) -> None:
        self._nonfinite_losses += 1

    def end_epoch(self) -> dict:
        norms, clipped = self._stacked(self._norms, self._clipped)
        record = {"epoch": len(self.epochs) + 1,
                  **summarize(norms, clipped, self._nonfinite_losses)}
        self.epochs.append(record)
        self._past_norms.append(norms)
        self._past_clipped.append(clipped)
        self._past_nonfinite += self._nonfinite_losses
        self._norms, self._clipped, self._nonfinite_losses = [], [], 0
        return record

    def summary(self) -> dict:
        """Whole-phase statistics (including an unfinished epoch) and the per-epoch list."""
        norms, clipped = self._stacked(self._past_norms + self._norms,
                                       self._past_clipped + self._clipped)
        total = summarize(norms, clipped, self._past_nonfinite + self._nonfinite_losses)
        return total | {"epochs": list(self.epochs)}

    def state_dict(self) -> dict:
        """Everything recorded so far, for checkpoints/state.pt (tensors stay tensors)."""
        return {"epochs": list(self.epochs), "norms": list(self._norms),
                "clipped": list(self._clipped), "nonfinite_losses": self._nonfinite_losses,
                "past_norms": list(self._past_norms), "past_clipped": list(self._past_clipped),
                "past_nonfinite": self._past_nonfinite}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])
        self._norms, self._clipped = list(state["norms"]), list(state["clipped"])
        self._nonfinite_losses = state["nonfinite_losses"]
        self._past_norms = list(state["past_norms"])
        self._past_clipped = list(state["past_clipped"])
        self._past_nonfinite = state["past_nonfinite"]

    @staticmethod
    def _stacked(norms: list[Tensor], clipped: list[Tensor]) -> tuple[Tensor, Tensor]:
        if not norms:
            return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
        flat = [t.cpu().reshape(-1) for t in norms]
        flags = [t.cpu().reshape(-1) for t in clipped]
        return torch.cat(flat), torch.cat(flags)
