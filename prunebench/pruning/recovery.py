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

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from prunebench.data import batches
from prunebench.pruning.masks import sparsity_report
from prunebench.training import parallel
from prunebench.training.loop import cross_entropy, evaluate

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


def enabled(cfg) -> bool:
    return bool(OmegaConf.select(cfg, "finetune.bn_recalibrate", default=True))


def after_mask_change(session) -> None:
    """Recalibrate the session's BatchNorm statistics (if any, and asked for), keeping the
    stale ones so the `pruned` record can show both."""
    layers = norms(session.model)
    if not layers or not enabled(session.cfg):
        return
    session.stale_bn = {id(m): (m.running_mean.clone(), m.running_var.clone(),
                                m.num_batches_tracked.clone()) for m in layers}
    # a generator of its own: recalibrating leaves the fine-tuning data order unchanged
    generator = torch.Generator().manual_seed(session.cfg.seed + 5)
    data = session.data
    # on several ranks: each its part of every batch, statistics over the global batch
    with parallel.global_batchnorm(session.model):
        recalibrate(session.model, batches(data, data.train, session.cfg.train.batch_size,
                                           shuffle=True, generator=generator, shard=True),
                    OmegaConf.select(session.cfg, "finetune.bn_batches", default=100))


def record_before(session) -> None:
    """phases[BEFORE]: the test metrics with the statistics from before the last
    recalibration (then the recalibrated ones are put back)."""
    stale, session.stale_bn = session.stale_bn, None
    if not stale:
        return
    layers = norms(session.model)
    fresh = {id(m): (m.running_mean.clone(), m.running_var.clone(),
                     m.num_batches_tracked.clone()) for m in layers}
    with torch.no_grad():
        for state in (stale, fresh):
            for m in layers:
                m.running_mean.copy_(state[id(m)][0])
                m.running_var.copy_(state[id(m)][1])
                m.num_batches_tracked.copy_(state[id(m)][2])
            if state is stale:
                session.phases[BEFORE] = evaluate(session.model, session.data,
                                                  session.data.test) | sparsity_report(
                                                      session.model, session.strategy.exclude)


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


def teacher_loss(cfg, model: nn.Module):
    """The fine-tuning loss: None (cross-entropy) unless finetune.distill.alpha > 0, then
    distillation from a frozen copy of `model` as it is now (the dense model)."""
    alpha = OmegaConf.select(cfg, "finetune.distill.alpha", default=0.0) or 0.0
    if alpha == 0:
        return None
    temperature = OmegaConf.select(cfg, "finetune.distill.temperature", default=4.0)
    return distill_loss(copy.deepcopy(model), float(alpha), float(temperature))
