"""Plumbing shared by the data-driven criteria: batches, gradients and memory estimates."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from prunebench.strategies.context import PruneContext

Batch = tuple[Tensor, Tensor]


def take_batches(ctx: PruneContext, count: int) -> list[Batch]:
    """The first `count` batches of a fresh pass over the training split (fewer if it ends);
    no batch past them is drawn (the run records what calibration drew)."""
    return list(itertools.islice(ctx.batches(), count))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Score in eval mode (no dropout, batch norm running stats left alone), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Each (module, hook) registered as a forward hook for the block, removed after."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def batch_gradients(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                    ctx: PruneContext) -> Iterator[dict[str, Tensor]]:
    """d loss / d weight on each batch in turn (mean loss over the batch)."""
    names, params = list(weights), list(weights.values())
    for x, y in batches:
        grads = torch.autograd.grad(ctx.loss(model(x), y), params)
        yield dict(zip(names, grads, strict=True))


def mean_gradient(model: nn.Module, weights: dict[str, Tensor], batches: list[Batch],
                  ctx: PruneContext) -> dict[str, Tensor]:
    """Gradient of the loss averaged over `batches`."""
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for grads in batch_gradients(model, weights, batches, ctx):
        for n, g in grads.items():
            total[n].add_(g, alpha=1.0 / len(batches))
    return total


def activations_per_sample(model: nn.Module, x: Tensor) -> int:
    """Number of values every leaf module outputs for one sample (a memory estimate)."""
    count = 0

    def hook(_module, _inputs, output):
        nonlocal count
        if torch.is_tensor(output):
            count += output[:1].numel()

    with forward_hooks((m, hook) for m in model.modules() if not list(m.children())), \
            torch.no_grad():
        model(x[:1])
    return count


def chunk_fitting(budget_gb: float, bytes_per_item: int, total: int) -> int:
    """How many items of `bytes_per_item` fit in the budget at once (at least 1)."""
    return int(max(1, min(total, budget_gb * 2**30 // max(bytes_per_item, 1))))
