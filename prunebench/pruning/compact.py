"""Physically smaller models from neuron-pruned ones: build, save, rebuild, measure.

A unit is removed when every parameter slice of its output (weight row or filter, bias, the
norm layer's scale and shift) is zero, so its output is exactly zero and removing it, with
the next layer's input columns, leaves the model's outputs unchanged. Torch-Pruning's
DependencyGraph does the surgery and records it as a pruning history (module name, output or
input, indices): checkpoints/compact.pt holds the state_dict, that history and the model's
config, all plain data (loads with weights_only=True); `load` rebuilds the dense model from
the config, replays the history on it and loads the weights.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch_pruning as tp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from prunebench.data import Dataset, batches
from prunebench.models import own
from prunebench.pruning.units import example_input, find_units
from prunebench.runstate import files

log = logging.getLogger(__name__)
LATENCY_BATCHES = (1, 64)


@torch.no_grad()
def compact(model: nn.Module, example: Tensor) -> tuple[nn.Module, dict]:
    """A smaller copy of `model` without its dead units, and what was done to get it."""
    small = copy.deepcopy(model).cpu()
    units = find_units(small, example.cpu())
    params = dict(small.named_parameters())
    widths, collapsed = {}, []
    dead = {w: torch.nonzero(units.zero_units(w, params)).flatten().tolist()
            for w in units.layers}
    for weight, layer in units.layers.items():
        size = layer.weight.shape[0]
        if len(dead[weight]) == size:  # a collapsed layer keeps one all-zero unit
            collapsed.append(weight)
            dead[weight] = dead[weight][1:]
        if dead[weight] and units.graph is not None:
            units.group(weight, dead[weight]).prune()
        widths[weight] = [size - len(dead[weight]), size]
    if units.graph is None:  # a model that declares its units: [weight, removed units]
        history = [[w, d] for w, d in dead.items() if d]
        remove_declared(small, units.declared, history)
        return small, {"widths": widths, "fixed": units.fixed, "collapsed": collapsed,
                       "pruning_history": history, "declared": True}
    history = [[name, bool(out), [int(i) for i in idxs]]
               for name, out, idxs in units.graph.pruning_history()]
    return small, {"widths": widths, "fixed": units.fixed, "collapsed": collapsed,
                   "pruning_history": history}


def remove_declared(model: nn.Module, declared: dict[str, list[tuple[str, int]]],
                    history: list) -> None:
    """Remove the units in `history` ([weight, indices]) with every slice declared for them;
    a Linear's in/out_features follow its new weight."""
    for weight, removed in history:
        for param, dim in declared[weight]:
            module = model.get_submodule(param.rpartition(".")[0])
            old = module.get_parameter(param.rpartition(".")[2])
            kept = torch.ones(old.shape[dim], dtype=torch.bool)
            kept[removed] = False
            new = nn.Parameter(old.detach()[(slice(None),) * dim + (kept,)].clone(),
                               requires_grad=old.requires_grad)
            setattr(module, param.rpartition(".")[2], new)
            if isinstance(module, nn.Linear):
                module.out_features, module.in_features = module.weight.shape


def save(path: Path, small: nn.Module, recipe: dict, model_cfg: dict,
         input_shape: tuple[int, ...], num_classes: int, tokens: bool = False) -> None:
    """`tokens`: the model takes integer token ids (a language model), not float inputs."""
    state = {k: v.detach().cpu() for k, v in small.state_dict().items()}
    files.save_torch(path, {"state_dict": state, "pruning_history": recipe["pruning_history"],
                         "declared": recipe.get("declared", False), "model": model_cfg,
                         "input_shape": list(input_shape),
                         "num_classes": num_classes, "tokens": tokens})


def load(path: str | Path) -> nn.Module:
    """Rebuild a compacted model from compact.pt (no pickled code: weights_only=True)."""
    saved = torch.load(path, weights_only=True)
    shape = tuple(saved["input_shape"])
    node, offered = own.arguments(OmegaConf.create(saved["model"]),
                                  {"input_shape": shape, "num_classes": saved["num_classes"]})
    model = instantiate(node, **offered)
    model.eval()
    if saved.get("declared"):
        remove_declared(model, model.declared_units(), saved["pruning_history"])
        model.load_state_dict(saved["state_dict"])
        return model
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(2, *shape, dtype=torch.long if saved.get(
                "tokens") else torch.float), verbose=False)
    graph.load_pruning_history(saved["pruning_history"])
    model.load_state_dict(saved["state_dict"])
    return model


@torch.no_grad()
def latency_ms(model: nn.Module, x: Tensor) -> float:
    """Median CPU time of one forward pass (torch.utils.benchmark, one thread)."""
    from prunebench.pruning.sparse import torch_benchmark

    timer = torch_benchmark().Timer("model(x)", globals={"model": model, "x": x},
                                    num_threads=1)
    return timer.blocked_autorange(min_run_time=0.2).median * 1e3


@torch.no_grad()
def measure(dense: nn.Module, small: nn.Module, x: Tensor, timed: bool = True) -> dict:
    """Params, MACs and (when `timed`) CPU latency of the compact model against the dense
    one."""
    dense, small = copy.deepcopy(dense).cpu().eval(), small.cpu().eval()
    x = x.cpu()
    out: dict = {}
    for name, model in (("dense", dense), ("compact", small)):
        macs, params = tp.utils.count_ops_and_params(model, x[:1])
        out[name] = {"params": int(params), "macs": int(macs)}
    latency = {}
    for batch in LATENCY_BATCHES if timed else ():
        xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
        d, c = latency_ms(dense, xb), latency_ms(small, xb)
        latency[f"batch_{batch}"] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
    y = dense(x)
    diff = float((small(x) - y).abs().max())
    return {**out["compact"], "dense_params": out["dense"]["params"],
            "dense_macs": out["dense"]["macs"], **({"latency": latency} if timed else {}),
            "max_abs_diff": diff, "max_rel_diff": diff / max(float(y.abs().max()), 1e-12)}


def run(cfg: DictConfig, model: nn.Module, data: Dataset, out_dir: Path) -> dict:
    """Compact the final model, save checkpoints/compact.pt, return results.json's `compact`."""
    x = next(batches(data, data.test, max(LATENCY_BATCHES)))[0]
    small, recipe = compact(model, example_input(model, x))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    save(out_dir / "checkpoints" / "compact.pt", small, recipe, model_cfg, data.input_shape,
         data.num_classes, tokens=not x.is_floating_point())
    result = measure(model, small, x, timed=cfg.inference.measure) | {
        k: recipe[k] for k in ("widths", "fixed", "collapsed")}
    result["path"] = "checkpoints/compact.pt"
    if result["max_rel_diff"] > 1e-5:  # float32 sums in another order differ by less
        log.warning("compact model differs from the masked one by %.3g (relative %.3g)",
                    result["max_abs_diff"], result["max_rel_diff"])
    if recipe["collapsed"]:
        log.warning("layer collapse: no units left in %s", ", ".join(recipe["collapsed"]))
    speed = {b: s["speedup"] for b, s in result.get("latency", {}).items()}
    log.info("compact: %d -> %d params, %s", result["dense_params"], result["params"],
             f"latency x{speed['batch_1']:.2f} at batch 1, x{speed['batch_64']:.2f} at batch 64"
             if speed else "not timed (inference.measure=false)")
    return result
