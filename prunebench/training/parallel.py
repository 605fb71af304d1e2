"""Training steps on several ranks: DistributedDataParallel and BatchNorm over the global batch.

An N-rank step equals the one-process step on the same global batch: each rank takes its part
of the batch (data.batches with shard=True), scales its loss by its share of the batch so that
DDP's gradient average becomes the global batch's mean, and BatchNorm normalizes with the
statistics of the whole global batch (torch's SyncBatchNorm on CUDA; on CPU, where
SyncBatchNorm refuses to run, `GlobalBatchNorm` below does the same with two differentiable
all-reduces). BatchNorm layers are swapped only for the duration of a training call, sharing
their parameters and buffers, so the rest of the pipeline (pruning, tracing, exports) sees the
model as built. Evaluation and BN recalibration use running statistics and plain BatchNorm.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from prunebench import distributed

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = dist_fn.all_reduce(local)  # sums, and their gradient, over the ranks
        count = total[-1]
        mean = total[:-1] / count
        centered = x - mean.view(shape)
        var = dist_fn.all_reduce(centered.pow(2).sum(dims)) / count  # two passes: exact
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count.item())
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                    else self.momentum)
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


@contextmanager
def global_batchnorm(model: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm of `model` normalizes over the global batch."""
    swapped = []
    if distributed.active():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) in BATCH_NORMS:
                    parent._modules[name] = synced(child)
                    swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            child.train(parent._modules[name].training)
            parent._modules[name] = child


def synced(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A synchronized twin of `bn` sharing its parameters and buffers."""
    cls = nn.SyncBatchNorm if bn.weight is not None and bn.weight.is_cuda else GlobalBatchNorm
    if bn.running_mean is not None and bn.running_mean.is_cuda:
        cls = nn.SyncBatchNorm
    twin = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for key in ("weight", "bias"):
        setattr(twin, key, getattr(bn, key))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        twin._buffers[key] = bn._buffers.get(key)
    twin.train(bn.training)
    return twin


def wrap(model: nn.Module) -> nn.Module:
    """`model` under DistributedDataParallel when the run has several ranks; else itself.

    Buffers are not broadcast each step: every rank computes the same global BatchNorm
    statistics, and rank 0 could not be told apart from its peers anyway.
    """
    if not distributed.active():
        return model
    device = next(model.parameters()).device
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   **no_sync)


def loss_share(local: int, global_: int) -> float:
    """Factor on a rank's mean loss over its `local` samples so that DDP's average over the
    ranks of the gradients is the gradient of the mean over the `global_` batch."""
    return local * distributed.world() / global_


def reduce_epoch(loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
    """An epoch's training loss and accuracy, summed over the ranks' shards (in place)."""
    if distributed.active():
        both = torch.stack([loss_sum.double(), correct.double()]).cpu()
        dist.all_reduce(both)
        loss_sum.copy_(both[0])
        correct.copy_(both[1].round().long())


def reduce_sums(loss_sum: float, correct: int) -> tuple[float, int]:
    """An evaluation's loss sum (float64) and exact count of correct answers over the ranks."""
    if not distributed.active():
        return loss_sum, correct
    both = torch.tensor([loss_sum, float(correct)], dtype=torch.float64)
    dist.all_reduce(both)
    return both[0].item(), int(both[1].round().item())


def all_finite(total: torch.Tensor) -> bool:
    """Whether a step's loss + gradient norm is finite on every rank (one host sync, as alone;
    an all-reduce under DDP, so that every rank stops at the same step)."""
    if not distributed.active():
        return bool(torch.isfinite(total))
    flag = torch.isfinite(total).to(torch.float64).reshape(1).cpu()
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
