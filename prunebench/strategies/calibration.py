"""Layer-wise calibration for the criteria of the LLM-pruning papers (Wanda, SparseGPT).

Both read statistics of each prunable layer's inputs over calibration batches and prune layer
by layer with the inputs propagated through the layers pruned before (as both papers' code
does): the inputs of group k are captured after groups < k were pruned. A group is one block
of the model's first nn.ModuleList that holds prunable layers (a transformer's blocks: its
attention and MLP Linears share one pass, as in SparseGPT's code) or, outside such a list,
one layer. Each group costs one forward pass over the calibration batches, stopped right after
the group's last layer, so only one batch's activations and the group's statistics are ever
held: a model whose per-layer Hessians do not fit in memory together still prunes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from prunebench.console import steps
from prunebench.strategies.autodiff import forward_hooks
from prunebench.strategies.obs import layer_inputs

log = logging.getLogger(__name__)
Accumulate = Callable[[str, Tensor], None]  # (weight name, inputs [samples, width])


class _GroupDone(Exception):
    """Raised by the hook of a group's last layer: the rest of the forward is not needed."""


def module_of(model: nn.Module, weight_name: str) -> nn.Module:
    return model.get_submodule(weight_name.rpartition(".")[0])


def forward_order(model: nn.Module, names: Iterable[str], x: Tensor) -> list[str]:
    """The weight names in the order their layers first run on `x` (unused layers last)."""
    names = list(names)
    seen: list[str] = []
    with forward_hooks((module_of(model, n), lambda *_, n=n: seen.append(n)
                        if n not in seen else None) for n in names), torch.no_grad():
        model(x)
    return seen + [n for n in names if n not in seen]


def block_of(model: nn.Module, name: str) -> str:
    """The block holding a weight: `blocks.3` for `blocks.3.mlp.fc.weight` when `blocks` is
    the model's first ModuleList with prunable layers; the weight's own name otherwise."""
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.startswith(f"{prefix}."):
            return f"{prefix}.{name[len(prefix) + 1:].split('.')[0]}"
    return name


def layer_groups(model: nn.Module, order: list[str]) -> list[list[str]]:
    """Consecutive layers (in forward order) of one block form a group."""
    groups: list[list[str]] = []
    last = None
    for name in order:
        block = block_of(model, name)
        if groups and block == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = block
    return groups


def split_to_fit(groups: list[list[str]], cost: Callable[[str], int],
                 budget: float) -> list[list[str]]:
    """Groups cut into consecutive pieces whose summed `cost` stays within `budget`."""
    out = []
    for group in groups:
        piece, used = [], 0
        for name in group:
            if piece and used + cost(name) > budget:
                out.append(piece)
                piece, used = [], 0
            piece.append(name)
            used += cost(name)
        out.append(piece)
    return out


@torch.no_grad()
def collect(model: nn.Module, names: list[str], batches, accumulate: Accumulate,
            stop_early: bool = True) -> None:
    """Run the calibration batches; each named layer's inputs go to `accumulate`.

    The inputs are laid out as rows matching weight.flatten(1)'s columns (obs.layer_inputs:
    a Linear's features, a convolution's unfolded patches). With `stop_early` the forward
    stops after the last named layer has seen a batch.
    """
    last = names[-1] if stop_early else None

    def hook(name: str):
        def capture(module, inputs, _output):
            accumulate(name, layer_inputs(module, inputs[0].detach().float()))
            if name == last:
                raise _GroupDone
        return capture

    with forward_hooks((module_of(model, n), hook(n)) for n in names):
        for x, _ in batches:
            try:
                model(x)
            except _GroupDone:
                pass


def sequential(model: nn.Module, weights: dict[str, Tensor], batches,
               start: Callable[[list[str]], Accumulate],
               prune_group: Callable[[list[str]], None],
               cost: Callable[[str], int] | None = None, budget: float | None = None,
               label: str = "calibration") -> None:
    """Prune group by group: gather each group's input statistics through the layers pruned
    so far (`start(group)` gives the accumulator), then `prune_group(group)`, which must
    write the pruned weights into the model before the next group runs."""
    order = forward_order(model, weights, batches[0][0])
    groups = layer_groups(model, order)
    if cost is not None and budget is not None:
        groups = split_to_fit(groups, cost, budget)
    log.info("%s: %d layers in %d sequential groups, %d calibration batches", label,
             len(order), len(groups), len(batches))
    with steps(label, len(groups)) as advance:  # a bar, and a safe point after each group
        for group in groups:
            collect(model, group, batches, start(group))
            prune_group(group)
            advance(1)
