"""Which weights are prunable, holding masks through training, and sparsity accounting."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# optimizers whose update of a weight with zero gradient and zero state is exactly zero
ZERO_PRESERVING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                   torch.optim.Adagrad, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The `weight` of every Linear and Conv layer, keyed by parameter name, in model order.

    Layers left dense are skipped: those matching a pattern of `exclude` (strategy.exclude)
    or of the model's own `dense_by_default` (a class attribute, e.g. `("lm_head.*",)`).
    A weight tensor shared by several layers (tied weights) is one entry, under its first
    layer's name, counted and pruned once; it stays dense if any of its layers is left dense.
    """
    dense = dense_patterns(model, exclude)
    return {names[0]: weight for names, weight in shared_layers(model)
            if not any(is_dense(name, dense) for name in names)}


def shared_layers(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """([weight names], weight) of each distinct prunable weight tensor, by identity: a tensor
    that several layers share has all their names, the first one first."""
    by_tensor: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, PRUNABLE):
            weight = f"{name}.weight" if name else "weight"
            names, _ = by_tensor.setdefault(id(module.weight), ([], module.weight))
            if weight not in names:
                names.append(weight)
    return list(by_tensor.values())


def check_exclude(model: nn.Module, exclude: Iterable[str]) -> None:
    """Raise ConfigError on a `strategy.exclude` pattern that matches no Linear or Conv layer:
    a typo there would leave every layer pruned while the config says one was kept dense."""
    names = [name for names, _ in shared_layers(model) for name in names]
    for pattern in exclude:
        if not any(is_dense(name, [re.compile(pattern)]) for name in names):
            shown = ", ".join(n.removesuffix(".weight") for n in names[:8])
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            raise ConfigError(f"strategy.exclude: {pattern!r} matches no Linear or Conv layer "
                              f"of the model (its layers: {shown}{more})")


def check_prunable(model: nn.Module, exclude: Iterable[str], target: str) -> None:
    """ConfigError (one line naming the key) when nothing in the model can be pruned: it has
    no Linear or Conv layer (`model._target_`), or `strategy.exclude` leaves every one dense."""
    if not _layers(model):
        raise ConfigError(f"model._target_={target} has no Linear or Conv layer "
                          f"(nn.Linear, nn.Conv1d/2d/3d): nothing to prune")
    if not prunable_weights(model, exclude):
        by = f"strategy.exclude={list(exclude)}" if exclude else \
            f"the model's dense_by_default {list(getattr(model, 'dense_by_default', ()))}"
        layers = [name.removesuffix(".weight") for name in _layers(model)]
        raise ConfigError(f"{by} matches every Linear and Conv layer of the model "
                          f"({', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''}): "
                          f"nothing is left to prune")


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{name}.weight" if name else "weight": module
            for name, module in model.named_modules() if isinstance(module, PRUNABLE)}


def dense_patterns(model: nn.Module, exclude: Iterable[str] = ()) -> list[re.Pattern]:
    """Compiled patterns of layers left dense: the run's `exclude` and the model's own."""
    return [re.compile(p) for p in (*exclude, *getattr(model, "dense_by_default", ()))]


def is_dense(weight: str, patterns: list[re.Pattern]) -> bool:
    """A pattern matches the whole layer name (`fc.0`) or its weight's name (`fc.0.weight`)."""
    layer = weight.removesuffix(".weight")
    return any(p.fullmatch(layer) or p.fullmatch(weight) for p in patterns)


class Masks:
    """Binary masks over the prunable weights, held by masking gradients and weights.

    Masking the gradient before the step keeps momentum and Adam moments at zero for pruned
    weights; masking the weight after the step (`after_step`) makes them exact zeros whatever
    an unknown optimizer does. Each is one fused `_foreach_mul_` over all layers, which is
    what keeps the overhead to a few percent.
    """

    def __init__(self, model: nn.Module, exclude: Iterable[str] = ()):
        self.weights = prunable_weights(model, exclude)
        self.masks = {n: torch.ones_like(w) for n, w in self.weights.items()}
        # masks of other parameters that go with removed units (biases, norm scales and
        # shifts; granularity=neuron): held the same way, not counted as prunable weights
        self._params = dict(model.named_parameters())
        self.coupled: dict[str, Tensor] = {}
        self._refresh()

    def _refresh(self) -> None:
        self._w = list(self.weights.values()) + [self._params[n] for n in self.coupled]
        self._m = [self.masks[n] for n in self.weights] + list(self.coupled.values())

    def update(self, new: dict[str, Tensor]) -> tuple[int, int]:
        """Install new masks; returns (newly pruned, recovered) prunable-weight counts.

        Names that are not prunable weights (a removed unit's bias, say) become coupled masks.
        """
        pruned = recovered = 0
        for name, mask in new.items():
            if name not in self.weights:
                self.coupled[name] = mask.to(self._params[name].dtype)
                continue
            old = self.masks[name]
            mask = mask.to(old.dtype)
            pruned += int(((old > 0) & (mask == 0)).sum())
            recovered += int(((old == 0) & (mask > 0)).sum())
            self.masks[name] = mask
        self._refresh()
        return pruned, recovered

    @torch.no_grad()
    def apply(self) -> None:
        torch._foreach_mul_(self._w, self._m)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-zero pruned weights after a step, unless the optimizer provably kept them zero.

        With masked gradients and optimizer state cleared at pruning, the optimizers in
        ZERO_PRESERVING move a zero weight by exactly zero (momentum 0, moments 0, decay of 0),
        so the second foreach pass is skipped for them: it is half the masking cost.
        """
        if type(optimizer) not in ZERO_PRESERVING:  # a subclass may do anything
            self.apply()

    @torch.no_grad()
    def mask_grads(self) -> None:
        pairs = [(w.grad, m) for w, m in zip(self._w, self._m, strict=False) if w.grad is not None]
        if pairs:
            grads, masks = zip(*pairs, strict=False)
            torch._foreach_mul_(list(grads), list(masks))

    @torch.no_grad()
    def clear_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero per-weight optimizer state (momentum, Adam moments) at pruned positions."""
        for param, mask in zip(self._w, self._m, strict=True):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)

    def state_dict(self) -> dict[str, Tensor]:
        return {n: m.bool() for n, m in (self.masks | self.coupled).items()}


def mask_sparsity(masks: dict[str, Tensor]) -> float:
    """The fraction of zeros over `masks` (what is pruned, whatever the weights hold)."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.count_nonzero()) for m in masks.values()) / total


def sparsity_report(model: nn.Module, exclude: Iterable[str] = ()) -> dict:
    """Counts read off the weights themselves (not the masks), so they are the truth. Each
    tensor is counted once, however many layers share it.

    Three denominators (docs/results.md):
    - `params` / `nonzero` / `sparsity`: the weights this run may prune, i.e. the prunable
      weights less the layers `exclude` leaves dense; `strategy.amount` is a fraction of these;
    - `all_prunable`: {params, nonzero, sparsity} over every prunable weight, `exclude` or not,
      so runs with and without `strategy.exclude` compare on it (equal to the above without it);
    - `total_params` / `total_nonzero`: every parameter (biases, norms, embeddings too).
    `layers` lists the weights this run may prune (`shared_with`: the other layers using it).
    """
    shared = {names[0]: names[1:] for names, _ in shared_layers(model) if len(names) > 1}
    layers = [{"name": name, "params": w.numel(), "nonzero": int(torch.count_nonzero(w)),
               **({"shared_with": shared[name]} if name in shared else {})}
              for name, w in prunable_weights(model, exclude).items()]
    every = prunable_weights(model)
    all_params = list(model.parameters())  # named_parameters counts a shared tensor once
    return {
        **_counts([layer["params"] for layer in layers], [layer["nonzero"] for layer in layers]),
        "all_prunable": _counts([w.numel() for w in every.values()],
                                [int(torch.count_nonzero(w)) for w in every.values()]),
        "total_params": sum(p.numel() for p in all_params),
        "total_nonzero": sum(int(torch.count_nonzero(p)) for p in all_params),
        "layers": layers,
    }


def _counts(params: list[int], nonzero: list[int]) -> dict:
    total, kept = sum(params), sum(nonzero)
    return {"params": total, "nonzero": kept, "sparsity": 1.0 - kept / total if total else 0.0}
