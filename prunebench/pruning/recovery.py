"""Recovering accuracy after pruning: batch-norm recalibration and distillation.

    finetune.bn_recalibrate  after every mask change, reset the BatchNorm running statistics
                             and re-estimate them as plain averages over finetune.bn_batches
                             training batches (train-mode forwards, no gradient steps). A
                             pruned network's stale statistics, not its weights, are most of
                             why it reads near chance before fine-tuning. results.json keeps
                             `pruned` (after) and `pruned_before_bn_recalibration` (before).
    finetune.distill         Hinton et al. 2015: the dense model teaches the pruned one,
                             loss = alpha * T^2 * KL(teacher_T || student_T)
                                    + (1 - alpha) * cross-entropy
                             alpha=0 (default) is plain fine-tuning: no teacher is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.data import Dataset, batches
from prunebench.training import parallel
from prunebench.training.loop import cross_entropy

BEFORE = "pruned_before_bn_recalibration"


def norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, data_batches, count: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the cumulative
    average over `count` batches (momentum=None), without gradients; returns batches used."""
    layers = norms(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    used = 0
    try:
        for x, _ in data_batches:
            if used == count:
                break
            model(x)
            used += 1
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return used


@dataclass(frozen=True)
class Recalibration:
    """finetune.bn_recalibrate and finetune.bn_batches, and the seed of the batches."""

    enabled: bool
    batches: int
    seed: int  # the run's seed + 5: recalibrating leaves the fine-tuning data order alone


def statistics(layers: list[nn.modules.batchnorm._BatchNorm]) -> dict:
    return {id(m): (m.running_mean.clone(), m.running_var.clone(),
                    m.num_batches_tracked.clone()) for m in layers}


def after_mask_change(model: nn.Module, data: Dataset, batch_size: int,
                      settings: Recalibration) -> dict | None:
    """Recalibrate the model's BatchNorm statistics (if any, and asked for); returns the
    stale ones, so the `pruned` record can show both (None: nothing recalibrated)."""
    layers = norms(model)
    if not layers or not settings.enabled:
        return None
    stale = statistics(layers)
    # a generator of its own: recalibrating leaves the fine-tuning data order unchanged
    generator = torch.Generator().manual_seed(settings.seed)
    # on several ranks: each its part of every batch, statistics over the global batch
    with parallel.global_batchnorm(model):
        recalibrate(model, batches(data, data.train, batch_size, shuffle=True,
                                   generator=generator, shard=True), settings.batches)
    return stale


def with_statistics(model: nn.Module, stale: dict, measure: Callable[[], dict]) -> dict:
    """`measure()` with the BatchNorm statistics `stale` (from before the last
    recalibration); the recalibrated ones are put back."""
    layers = norms(model)
    fresh = statistics(layers)
    measured = {}
    with torch.no_grad():
        for state in (stale, fresh):
            for m in layers:
                m.running_mean.copy_(state[id(m)][0])
                m.running_var.copy_(state[id(m)][1])
                m.num_batches_tracked.copy_(state[id(m)][2])
            if state is stale:
                measured = measure()
    return measured


def distill_loss(teacher: nn.Module, alpha: float, temperature: float
                 ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """loss(student_logits, x, y) of Hinton et al.: alpha * T^2 * KL(p_t || p_s) at
    temperature T, plus (1 - alpha) * cross-entropy with the labels."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():  # classes (or a language model's vocabulary) in the last dim
            target = F.log_softmax(teacher(x).float().flatten(0, -2) / temperature, dim=-1)
        student = F.log_softmax(logits.float().flatten(0, -2) / temperature, dim=-1)
        kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
        return alpha * temperature ** 2 * kl + (1 - alpha) * cross_entropy(logits, y)

    return loss


def teacher_loss(alpha: float | None, temperature: float, model: nn.Module):
    """The fine-tuning loss: None (cross-entropy) unless finetune.distill.alpha > 0, then
    distillation from a frozen copy of `model` as it is now (the dense model)."""
    if not alpha:
        return None
    return distill_loss(copy.deepcopy(model), float(alpha), float(temperature))
