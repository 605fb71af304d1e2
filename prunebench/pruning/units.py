"""Which output units can be removed whole, and every parameter slice that goes with each.

Torch-Pruning's DependencyGraph traces the model once and, for an output unit (a Linear
row or a Conv filter), lists what removing it touches: the layer's bias, the norm layer
after it, the next layer's input columns (through flatten), and any layer whose outputs are
added to it (residual connections). A unit is removable here only when that list is plain:

- its own layer, norm layers and input columns of later Linear/Conv layers, nothing else;
- no other prunable layer's outputs are tied to it (a residual sum), since removing a
  channel there means removing it from a whole stage: those layers keep all their units,
  as Li et al. (2017) keep the outputs of residual blocks;
- it is not an output of the classifier (the last prunable layer);
- its outputs are not unbound into parts (an attention's q, k, v out of one qkv layer, whose
  split into heads one removed unit would break);
- removing one of its units from a copy of the model leaves a forward that runs (a trial, for
  what the trace cannot see: `qkv.chunk(3)` then a reshape into heads, a hard-coded view).

Masking every slice in the list makes the unit's output exactly zero, so the masked model
computes what the physically smaller one does (compact.py removes the same slices).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.pruning.masks import PRUNABLE, dense_patterns, is_dense, shared_layers

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Slice:
    param: str  # parameter name, e.g. "features.0.weight"
    dim: int  # 0: output units, 1: input columns
    index: list[int]


@dataclass
class Units:
    """The removable units of a model: layers keyed by their weight's name."""

    graph: tp.DependencyGraph | None  # None for a model that declares its units
    prunable: dict[str, nn.Module]  # weight name -> every Linear/Conv layer, in model order
    layers: dict[str, nn.Module]  # weight name -> layer whose units may be removed
    fixed: dict[str, str] = field(default_factory=dict)  # weight name -> why kept whole
    names: dict[nn.Module, str] = field(default_factory=dict)  # module -> its name
    model: nn.Module | None = None
    # a model's own declaration (its `declared_units()`): weight name -> the (parameter, dim)
    # slices indexed like that layer's units, all removed together
    declared: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def group(self, weight: str, units: list[int]) -> tp.Group:
        layer = self.layers[weight]
        return self.graph.get_pruning_group(
            layer, self.graph.get_pruner_of_module(layer).prune_out_channels, units)

    def activation_site(self, layer: nn.Module) -> tuple[nn.Module, bool]:
        """Where a layer's units come out: the norm layer right after it, if any, else the
        layer itself; and whether a ReLU follows there (ReLU modules or F.relu alike)."""
        if self.graph is None:
            raise ConfigError("strategy=activation reads traced units; this model declares its "
                              "own (a gated MLP): use a weight-based criterion")
        node = self.graph.module2node[layer]
        if len(node.outputs) == 1 and isinstance(node.outputs[0].module, NORMS):
            node = node.outputs[0]
        relu = any(out.grad_fn is not None and out.grad_fn.name().startswith("Relu")
                   for out in node.outputs)
        return node.module, relu

    def slices(self, weight: str, units: list[int]) -> list[Slice]:
        """Every parameter slice removed with these units of `weight`'s layer."""
        if self.graph is None:
            return [Slice(param, dim, list(units)) for param, dim in self.declared[weight]]
        out = []
        for item in self.group(weight, units).items:
            module = item.dep.target.module
            if not has_params(module):
                continue
            prefix = self.names[module] + "." if self.names[module] else ""
            is_out = self.graph.is_out_channel_pruning_fn(item.dep.handler)
            dim = 0 if is_out or isinstance(module, NORMS) else 1
            index = [int(i) for i in item.idxs]
            for pname, _ in module.named_parameters(recurse=False):
                if dim == 0 or pname == "weight":  # input columns live in the weight only
                    out.append(Slice(prefix + pname, dim, index))
        return out

    def zero_units(self, weight: str, params: dict[str, Tensor]) -> Tensor:
        """Which units of `weight`'s layer output exactly zero: weight row, bias and norm
        scale and shift all zero (for a removable layer these are indexed like its units)."""
        size = self.layers[weight].weight.shape[0]
        zero = torch.ones(size, dtype=torch.bool)
        for s in self.slices(weight, list(range(size))):
            if s.dim == 0:
                index = torch.tensor(s.index)
                rows = params[s.param].detach().cpu().index_select(0, index).reshape(len(index), -1)
                zero[index] &= (rows == 0).all(1)
        return zero


def has_params(module) -> bool:
    return isinstance(module, nn.Module) and next(module.parameters(False), None) is not None


def example_input(model: nn.Module, x: Tensor) -> Tensor:
    """Two samples of a batch: enough to trace, and BatchNorm in train mode accepts it."""
    return x[:2].to(next(model.parameters()).device)


def find_units(model: nn.Module, example: Tensor, exclude: Sequence[str] = ()) -> Units:
    """Trace `model` (in eval mode, so norm statistics are untouched) and classify layers.

    Layers left dense (strategy.exclude, the model's dense_by_default) are fixed. A model
    with a `declared_units()` that returns its units (models/hf.py: a Llama-family gated MLP,
    which Torch-Pruning's trace of the whole residual stream cannot follow in reasonable time)
    is taken at its word instead of traced. A model whose layers share a weight tensor is
    refused: masking a unit's input columns in a tied weight would cut them from the other
    layer too.
    """
    tied = [names for names, _ in shared_layers(model) if len(names) > 1]
    if tied:
        raise ConfigError(f"strategy.granularity=neuron: layers {' and '.join(tied[0])} share "
                          f"one weight tensor, whose units cannot be removed for one layer "
                          f"alone; use strategy.granularity=weight")
    declared = getattr(model, "declared_units", lambda: None)()
    if declared is not None:
        return _declared_units(model, declared, exclude)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                          verbose=False)
    except Exception as error:  # an op Torch-Pruning cannot map (shufflenet's channel shuffle)
        first = (str(error).splitlines() or [""])[0][:100]
        raise ConfigError(f"strategy.granularity=neuron: Torch-Pruning cannot trace this "
                          f"model's units ({type(error).__name__}: {first}); use "
                          f"strategy.granularity=weight") from None
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    layers = {f"{n}.weight" if n else "weight": m
              for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    units = Units(graph, layers, {}, {}, names, model)
    classifier = list(layers.values())[-1]
    dense = dense_patterns(model, exclude)
    for weight, layer in layers.items():
        units.layers[weight] = layer
        reason = "left dense" if is_dense(weight, dense) else _why_fixed(
            units, weight, layer, classifier)
        if reason:
            del units.layers[weight]
            units.fixed[weight] = reason
    _fix_units_that_break_the_forward(units, model, example)
    return units


def _declared_units(model: nn.Module, declared: dict[str, list[tuple[str, int]]],
                    exclude: Sequence[str]) -> Units:
    """Units a model declares: removable unless left dense; every other layer fixed."""
    layers = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    dense = dense_patterns(model, exclude)
    units = Units(None, layers, {}, {}, {m: n for n, m in model.named_modules()}, model,
                  declared)
    coupled = {p: w for w, slices in declared.items() for p, _ in slices if p != w}
    for weight, layer in layers.items():
        if weight in declared and not is_dense(weight, dense):
            units.layers[weight] = layer
        elif weight in coupled:
            units.fixed[weight] = f"its rows or columns go with the units of {coupled[weight]}"
        else:
            units.fixed[weight] = ("left dense" if is_dense(weight, dense) else
                                   "not among the units the model declares removable")
    return units


def _fix_units_that_break_the_forward(units: Units, model: nn.Module, example: Tensor) -> None:
    """Trial removals: all candidate layers at once (one trace), then, only if that fails,
    each layer alone, fixing those whose removal breaks the forward."""
    trial = [w for w, layer in units.layers.items() if layer.weight.shape[0] > 1]
    if not trial or not _removal_error(model, example, trial):
        return
    for weight in trial:
        error = _removal_error(model, example, [weight])
        if error:
            del units.layers[weight]
            units.fixed[weight] = f"removing a unit breaks the forward ({error})"


def _removal_error(model: nn.Module, example: Tensor, weights: list[str]) -> str:
    """'' when a copy of `model` without the first unit of each of `weights` (and all that
    goes with it) still runs on `example`; else the error, in one short line."""
    trial = copy.deepcopy(model).eval()
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example,
                                                      verbose=False)
    for weight in weights:
        layer = trial.get_submodule(weight.rpartition(".")[0])
        graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels,
                                [0]).prune()
    try:
        with torch.no_grad():
            trial(example)
    except Exception as error:  # any failure of the smaller model means: not removable
        return f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    return ""


def _why_fixed(units: Units, weight: str, layer: nn.Module, classifier: nn.Module) -> str:
    if layer is classifier:
        return "classifier outputs"
    if getattr(layer, "groups", 1) != 1:
        return "grouped convolution"
    for item in units.group(weight, [0]).items[1:]:
        module = item.dep.target.module
        is_out = units.graph.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(module, Tensor):
            return "coupled to a parameter outside any layer"
        if isinstance(module, tp.ops._UnbindOp):  # q, k, v = qkv.unbind(): the head split
            return "outputs unbound into parts (attention's q, k, v)"
        if module is classifier and is_out:
            return "tied to the classifier outputs"
        if isinstance(module, PRUNABLE) and is_out:
            return f"outputs tied to {units.names[module]} (residual sum)"
        if has_params(module) and not isinstance(module, PRUNABLE + NORMS):
            return f"coupled to unsupported {type(module).__name__}"
        if isinstance(module, PRUNABLE) and getattr(module, "groups", 1) != 1:
            return f"feeds grouped convolution {units.names[module]}"
    return ""


def unit_masks(units: Units, keep: dict[str, Tensor], params: dict[str, Tensor]
               ) -> dict[str, Tensor]:
    """Masks (ones where kept) for every parameter touched by removing the units not kept."""
    masks: dict[str, Tensor] = {}
    for weight, kept in keep.items():
        removed = torch.nonzero(~kept.bool()).flatten().tolist()
        if not removed:
            continue
        for s in units.slices(weight, removed):
            mask = masks.setdefault(s.param, torch.ones_like(params[s.param]))
            mask.index_fill_(s.dim, torch.tensor(s.index, device=mask.device), 0)
    return masks
