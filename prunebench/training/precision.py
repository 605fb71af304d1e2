"""Mixed precision (`train.amp`) and compilation (`train.compile`) for the training loop.

Autocast runs on CUDA only: bf16 needs nothing else, fp16 adds a gradient scaler. On other
devices both are no-ops, said once in the log, so one config runs everywhere.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_enabled(amp: str | None, device: torch.device) -> bool:
    if not amp:
        return False
    if device.type != "cuda":
        log.info("train.amp=%s ignored on %s: autocast is used on CUDA only", amp, device.type)
        return False
    return True


def autocast(amp: str | None, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str | None, enabled: bool) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
    A disabled scaler passes everything through unchanged."""
    return torch.amp.GradScaler("cuda", enabled=enabled and amp == "fp16")


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile shares the module's parameters, so masks applied to `model` hold."""
    return torch.compile(model) if enabled else model
