"""A flat epoch loop you can read top to bottom, and evaluation.

`fit` trains for a number of epochs with optional masks held, gradient clipping and
regularization, and calls `on_step` after every optimizer step (schedules prune from there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from prunebench import distributed
from prunebench.console import progress
from prunebench.data import Dataset, Split, batches
from prunebench.pruning.masks import Masks, prunable_weights
from prunebench.runstate.signals import stop_if_requested
from prunebench.training import parallel, precision
from prunebench.training.telemetry import GradientStats, clip, grad_norm

log = logging.getLogger(__name__)
# called after every epoch of every fit as observer(phase, step, epoch_steps, record,
# gradient stats): experiment trackers (prunebench.results.trackers) log from here
epoch_observers: list[Callable[[str, int, int, dict, dict], None]] = []


class Diverged(RuntimeError):
    """A non-finite loss or gradient stopped training; carries where it happened.

    `epoch` counts from 1 like the history; `step` is the number of optimizer steps taken.
    """

    def __init__(self, phase: str, epoch: int, step: int, what: str = "loss"):
        super().__init__(f"non-finite {what} in {phase} at epoch {epoch}, step {step}")
        self.phase, self.epoch, self.step, self.what = phase, epoch, step, what


@dataclass
class FitSettings:
    epochs: int
    batch_size: int
    max_norm: float | None = None
    max_value: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    amp: str | None = None  # bf16 | fp16: autocast on CUDA (precision.py)
    compile: bool = False  # torch.compile the model for the training steps


def fit(model: nn.Module, data: Dataset, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, settings: FitSettings,
        generator: torch.Generator, phase: str, masks: Masks | None = None,
        on_step: Callable[[int], None] | None = None, first_step: int = 0,
        gradients: GradientStats | None = None, start_epoch: int = 0,
        on_epoch: Callable[[int, list], None] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        ) -> list[dict]:
    """Train `settings.epochs` epochs; returns one {epoch, loss, accuracy, lr} per epoch.

    `gradients` collects the per-step gradient norm (before clipping) and clip flags.
    `on_epoch(epoch, history)` runs at each epoch start (the resume checkpoint); a stop signal
    ends training after the current step, and a resumed run starts at `start_epoch`.
    `loss_fn(logits, x, y)` replaces cross-entropy (distillation reads the inputs).
    """
    history, step = [], first_step
    weights = leaf_weights(model)
    params = [p for p in model.parameters() if p.requires_grad]
    gradients = gradients if gradients is not None else GradientStats()
    use_amp = precision.amp_enabled(settings.amp, data.train.y.device)
    scaler = precision.grad_scaler(settings.amp, use_amp)
    step_model = precision.compiled(parallel.wrap(model), settings.compile)
    n_train = len(data.train)
    with progress() as bar, parallel.global_batchnorm(model):
        task = bar.add_task(phase, total=settings.epochs, completed=start_epoch, status="")
        for epoch in range(start_epoch, settings.epochs):
            if on_epoch is not None:
                on_epoch(epoch, history)
            epoch_start = step
            model.train()
            loss_sum = torch.zeros((), device=data.train.y.device)
            correct = torch.zeros((), dtype=torch.long, device=data.train.y.device)
            for start, (x, y) in zip(range(0, n_train, settings.batch_size),
                                     batches(data, data.train, settings.batch_size,
                                             shuffle=True, generator=generator, train=True,
                                             shard=True), strict=True):
                with precision.autocast(settings.amp, use_amp):
                    logits = step_model(x)
                    data_loss = (logits.sum() * 0.0 if len(y) == 0  # a rank with no part
                                 else cross_entropy(logits, y) if loss_fn is None
                                 else loss_fn(logits, x, y))
                loss_sum += data_loss.detach() * len(y)
                correct += (logits.argmax(-1) == y).sum()
                # this rank's share of the global batch's mean (parallel.py)
                loss = data_loss * parallel.loss_share(
                    len(y), min(settings.batch_size, n_train - start))
                if settings.l2:
                    loss = loss + 0.5 * settings.l2 * sum(w.pow(2).sum() for w in weights)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if masks is not None:
                    masks.mask_grads()
                scaler.unscale_(optimizer)  # the norm and clipping see true gradients
                grads = [p.grad for p in params if p.grad is not None]
                norm = grad_norm(grads)
                check_finite(data_loss, norm, grads, scaler.is_enabled(), gradients,
                             (phase, epoch + 1, step))
                gradients.step(norm, clip(params, norm, settings.max_norm, settings.max_value))
                scaler.step(optimizer)
                scaler.update()
                if settings.l1:
                    soft_threshold(weights, settings.l1 * optimizer.param_groups[0]["lr"])
                if masks is not None:
                    masks.after_step(optimizer)
                step += 1
                if on_step is not None:
                    on_step(step)
                stop_if_requested(agree=distributed.max_int)
            parallel.reduce_epoch(loss_sum, correct)
            distributed.check_same(params + (list(masks.masks.values()) if masks else []),
                                   "weights or masks")
            record = {"epoch": epoch + 1, "loss": loss_sum.item() / len(data.train),
                      "accuracy": correct.item() / data.train.y.numel(),  # per token for LMs
                      "lr": optimizer.param_groups[0]["lr"]}
            history.append(record)
            grad_record = gradients.end_epoch()
            for observe in epoch_observers:
                observe(phase, step, step - epoch_start, record, grad_record)
            if scheduler is not None:
                scheduler.step()
            bar.update(task, advance=1,
                       status=f"loss {record['loss']:.4f}  acc {record['accuracy']:.4f}")
            log.debug("%s epoch %d: loss %.4f acc %.4f", phase, epoch + 1, record["loss"],
                      record["accuracy"])
    return history


def check_finite(data_loss: torch.Tensor, norm: torch.Tensor, grads: list[torch.Tensor],
                 scaled: bool, gradients: GradientStats, where: tuple[str, int, int]) -> None:
    """Raise Diverged, before the optimizer step, on a non-finite loss or gradient.

    One host synchronization per step: a NaN or inf anywhere in the gradients makes their
    global norm non-finite, and adding the loss folds its check into the same scalar. Only
    when that fails are the gradients looked at one by one, since a norm beyond float32's
    range (about 1.8e19) can overflow from finite gradients; that step is recorded as a
    non-finite norm, and norm clipping zeroes it. Under fp16 loss scaling an overflowing
    gradient is the scaler's to skip, so only the loss is checked.
    """
    total = data_loss.detach() if scaled else data_loss.detach() + norm
    if parallel.all_finite(total):
        return
    if not torch.isfinite(data_loss):
        gradients.nonfinite_loss()
        raise Diverged(*where, "loss")
    if not scaled and not all(torch.isfinite(g).all() for g in grads):
        raise Diverged(*where, "gradient")


def leaf_weights(model: nn.Module) -> list[torch.Tensor]:
    """The trained tensors behind the prunable weights: under a forward-pass mask
    (torch.nn.utils.parametrize, dynamic network surgery) that is the dense original."""
    leaves = []
    for name in prunable_weights(model):
        module = model.get_submodule(name.rpartition(".")[0])
        if parametrize.is_parametrized(module, "weight"):
            leaves.append(module.parametrizations.weight.original)
        else:
            leaves.append(module.weight)
    return leaves


@torch.no_grad()
def soft_threshold(weights: list[torch.Tensor], amount: float) -> None:
    """Proximal step of an L1 penalty: shrink toward zero, landing on exact zeros."""
    for w in weights:
        w.copy_(w.sign() * (w.abs() - amount).clamp_min(0))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class logits [B, C] against labels [B], or of next-token logits
    [B, T, V] against targets [B, T] (every token counts once)."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction=reduction)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: Split, batch_size: int = 1024) -> dict:
    """Mean cross-entropy and accuracy over a whole split; for a language model, the mean
    token cross-entropy and perplexity = exp(mean token cross-entropy), over all windows."""
    model.eval()
    if data.task == "lm":  # windows are long: fewer per batch keeps the logits small
        batch_size = max(1, batch_size // split.x.shape[1])
    loss_sum, correct = 0.0, 0
    for x, y in batches(data, split, batch_size, shard=True):  # this rank's part of each
        logits = model(x)
        loss_sum += cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
    loss_sum, correct = parallel.reduce_sums(loss_sum, correct)  # exact count, float64 sum
    loss = loss_sum / split.y.numel()
    if data.task == "lm":
        return {"perplexity": math.exp(loss), "loss": loss}
    return {"accuracy": correct / len(split), "loss": loss}


def headline(metrics: dict) -> str:
    """`accuracy 0.9123` or `perplexity 5.43`: the number a phase is judged by."""
    if "perplexity" in metrics:
        return f"perplexity {metrics['perplexity']:.3f}"
    return f"accuracy {metrics['accuracy']:.4f}"
