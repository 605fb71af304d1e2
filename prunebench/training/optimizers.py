"""Optimizers as prunebench builds and resumes them: torch's fused kernels where they are safe.

A fused kernel updates each tensor in one pass: on CPU an SGD step takes half the time and an
Adam step a third, with the same update (rounded differently). `+optimizer.fused=false`, or
setting `foreach`, keeps torch's default implementation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

IMPLEMENTATION = ("fused", "foreach")


def fused_if_offered(make: Callable[..., torch.optim.Optimizer], params: list[nn.Parameter],
                     settings) -> torch.optim.Optimizer:
    """`make(params)`, fused where the optimizer offers it and the config leaves the
    implementation alone; a torch, device or dtype without the kernels gets the default."""
    offered = "fused" in inspect.signature(make.func).parameters
    # torch checks dtypes and devices only at the first step, so they are checked here
    eligible = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if not (offered and eligible) or any(key in settings for key in IMPLEMENTATION):
        return make(params)
    try:
        optimizer = make(params, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return make(params)  # a bad value raises here again, as the user's error
    if isinstance(optimizer, torch.optim.SGD):
        if any(group["dampening"] for group in optimizer.param_groups):
            return make(params)  # zero-started momentum (below) is exact only without dampening
        start_momentum(optimizer)
    return optimizer


@torch.no_grad()
def start_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give fused SGD a zero momentum buffer for every parameter that has none.

    Fused SGD fills missing buffers with uninitialized memory at its first step and keeps them
    when an fp16 overflow skips that step; it also fails on a parameter whose first gradient
    comes after the others'. A zero buffer avoids both and changes nothing: the first update
    is momentum * 0 + gradient, the gradient itself, exactly what a fresh buffer holds.
    """
    if not (isinstance(optimizer, torch.optim.SGD) and optimizer.defaults.get("fused")):
        return
    for group in optimizer.param_groups:
        if group["momentum"]:
            for param in group["params"]:
                state = optimizer.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(param,
                                                                memory_format=torch.preserve_format)


def load_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a checkpoint into the optimizer as built now. The implementation flags stay the
    built ones (a checkpoint may come from a build that chose differently), so state is cast
    for them, and fused SGD gets its zero buffers back where the checkpoint had none."""
    built = [{k: group[k] for k in IMPLEMENTATION if k in group}
             for group in optimizer.param_groups]
    groups = [saved_group | flags
              for saved_group, flags in zip(saved["param_groups"], built, strict=True)]
    optimizer.load_state_dict(saved | {"param_groups": groups})
    start_momentum(optimizer)
