"""Your own model class, the Hydra way: `prunebench model._target_=mypkg.nets.Net +model.width=64`.

The class's own constructor arguments come from the config; prunebench passes `input_shape`
and `num_classes` (and `name`, the label tables show) only to constructors that take them.
Overriding `model._target_` alone replaces the default option's model: its keys (mlp's
`hidden`) are dropped, and the run is named after the class unless `model.name` says otherwise
(config.inputs.replace_default_model, applied before the run folder's owner is checked too).
Modules in the current working directory import without PYTHONPATH.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset

log = logging.getLogger(__name__)


def arguments(node: DictConfig, offered: dict) -> tuple[DictConfig, dict]:
    """(config to instantiate, extra keyword arguments): what the constructor accepts of
    `offered` and of the `name` key, as inspect.signature reads it."""
    target = str(node._target_)
    params = signature_of(target)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in offered.items() if takes_any or k in params}
    if not takes_any and "name" not in params and "name" in node:
        node = node.copy()
        with open_dict(node):
            del node["name"]
    return node, extra


def signature_of(target: str) -> dict[str, inspect.Parameter]:
    cwd_importable()
    hydra_log = logging.getLogger("hydra.utils")  # it logs the error we raise as one line
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        obj = get_object(target)
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(f"model._target_={target}: cannot import it "
                          f"({type(cause).__name__}: {str(cause).splitlines()[0]})") from None
    finally:
        hydra_log.setLevel(level)
    try:
        return dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):  # a builtin without a readable signature: offer all
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def cwd_importable() -> None:
    """A console script's sys.path lacks the working directory that `python -m` would add;
    it goes last, so it never shadows an installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def checked_module(target: str, built) -> nn.Module:
    """What `model._target_` built, if it is a module (a function may build one)."""
    if not isinstance(built, nn.Module):
        raise ConfigError(f"model._target_={target} returned {type(built).__name__} "
                          f"({str(built)[:40]}), not a torch.nn.Module: name a model class, or a "
                          f"function that returns a model")
    return built


def check_output(target: str, model: nn.Module, x: Tensor, data: Dataset) -> None:
    """One forward pass on two training inputs, before any training: the model must return
    the logits, [batch, classes] (a language model [batch, tokens, vocabulary]). A tuple whose
    first element is them, or an output with `.logits` (Hugging Face style), is accepted: a
    hook then hands the logits on, so every part of the pipeline sees a tensor."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(training)
    expected = [len(x), *([data.input_shape[0]] if data.task == "lm" else []), data.num_classes]
    what = "[batch, tokens, vocabulary]" if data.task == "lm" else "[batch, classes]"
    logits = logits_of(out)
    if logits is None:
        raise ConfigError(f"model._target_={target}: forward returned {describe(out)}; expected "
                          f"the logits tensor {what}, a tuple whose first element is it, or an "
                          f"output with .logits")
    # a language model's vocabulary may be larger than its tokenizer's (Qwen2's embedding is
    # padded past it, as are the tests' tiny models): tokens beyond the data's never occur
    wider = data.task == "lm" and list(logits.shape[:-1]) == expected[:-1] and \
        logits.shape[-1] >= data.num_classes
    if list(logits.shape) != expected and not wider:
        raise ConfigError(f"model._target_={target}: forward returned logits of shape "
                          f"{list(logits.shape)} for {len(x)} inputs; expected {expected} "
                          f"{what} ({data.num_classes} classes of dataset {data.name})")
    if logits is not out:
        model.register_forward_hook(logits_hook)


def logits_of(out) -> Tensor | None:
    """The logits in what a forward returned, or None when it is not clear which they are."""
    if torch.is_tensor(out):
        return out
    found = getattr(out, "logits", None)
    if found is None and isinstance(out, dict):
        found = out.get("logits")
    if found is None and isinstance(out, tuple | list) and out:
        found = out[0]
    return found if torch.is_tensor(found) else None


def logits_hook(module: nn.Module, args, out) -> Tensor:
    return logits_of(out)


def describe(out) -> str:
    if isinstance(out, dict):
        return f"a {type(out).__name__} with keys {list(out)[:5]} and no 'logits'"
    if isinstance(out, tuple | list):
        first = type(out[0]).__name__ if out else "nothing"
        return f"a {type(out).__name__} whose first element is {first}, not a tensor"
    return f"{type(out).__name__}"
