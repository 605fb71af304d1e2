"""Your own model class, the Hydra way: `prunebench model._target_=mypkg.nets.Net +model.width=64`.

The class's own constructor arguments come from the config; prunebench passes `input_shape`
and `num_classes` (and `name`, the label tables show) only to constructors that take them.
Overriding `model._target_` alone replaces the default option's model: its keys (mlp's
`hidden`) are dropped, and the run is named after the class unless `model.name` says otherwise.
Modules in the current working directory import without PYTHONPATH.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys

from hydra.utils import get_object
from omegaconf import DictConfig, open_dict

from prunebench.config.checks import ConfigError

log = logging.getLogger(__name__)


def replace_default_model(cfg: DictConfig, overrides: list[str]) -> None:
    """After `model._target_=X` (and no `model=` choice), keep only the model keys typed."""
    if any(re.match(r"\+{0,2}model=", o) for o in overrides):
        return
    typed = [m.group(1) for o in overrides if (m := re.match(r"\+{0,2}model\.(\w+)", o))]
    if "_target_" not in typed:
        return
    with open_dict(cfg):
        for key in [k for k in cfg.model if k not in typed and k != "name"]:
            del cfg.model[key]
        if "name" not in typed:
            cfg.model.name = cfg.model._target_.rsplit(".", 1)[-1]


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
    try:
        obj = get_object(target)
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(f"model._target_={target}: cannot import it "
                          f"({type(cause).__name__}: {str(cause).splitlines()[0]})") from None
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
