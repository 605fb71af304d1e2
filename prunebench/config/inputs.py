"""Checks on what a user typed that need no list of keys: run before any work.

- every number in the composed config is finite (nan and inf are refused by key);
- a key the user adds or sets must exist: keys of a `_target_` node (a model, a criterion,
  an optimizer) are those its constructor's signature accepts, so users' own models and
  criteria stay open to their own keys; everywhere else, the keys the config already has;
- `device` is any device string torch accepts that this machine has;
- `cache.dir` is a folder name.
Each failure is a ConfigError: one line naming the key (with a "did you mean" for typos).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

from prunebench.config import schema
from prunebench.config.errors import ConfigError

# keys instantiate reads itself, and `name`, which prunebench passes only to targets taking it
INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_", "name")


def check(cfg: DictConfig, overrides: list[str] | None = None,
          recompose: Callable[[list[str]], DictConfig] | None = None, groups=None) -> None:
    """All checks of this module on a job's config (no `hydra` node); `overrides` are the
    command's (hydra.overrides.task), `groups` Hydra's runtime.choices."""
    check_required(cfg)
    check_finite(cfg)
    if overrides:
        check_keys(cfg, overrides, recompose, groups)
    check_device(OmegaConf.select(cfg, "device", default="auto"))
    cache_dir = OmegaConf.select(cfg, "cache.dir", default=None)
    if OmegaConf.select(cfg, "cache.enabled", default=False) and not str(cache_dir or "").strip():
        raise ConfigError(f"cache.dir={cache_dir!r} is invalid: a folder name "
                          f"(or cache.enabled=false)")


# ---- numbers ------------------------------------------------------------------------------

def leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def check_required(cfg: DictConfig) -> None:
    """A key an option leaves to the user (`???`: model=hf's model.name) must be given."""
    raw = OmegaConf.to_container(cfg, resolve=False)  # `???` stays a string, nothing resolved
    missing = [key for key, value in leaves(raw) if value == "???"]
    if missing:
        raise ConfigError(f"{missing[0]} has no value: set {missing[0]}=... (the option chosen "
                          f"for {missing[0].split('.')[0]} needs it)")


def check_finite(cfg: DictConfig) -> None:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation only the running job can resolve: checked there
        config = OmegaConf.to_container(cfg, resolve=False)
    for key, value in leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} is invalid: a finite number is required")


# ---- keys -----------------------------------------------------------------------------------

def signature_keys(target: str) -> tuple[set[str], bool] | None:
    """(the keyword names `target` accepts, open to any), or None if it cannot be imported.

    A class's **kwargs passed on to its base (`super().__init__(**kwargs)`) adds the base's
    names; a chain that ends in **kwargs is open.
    """
    module, _, name = target.rpartition(".")
    cwd_added = os.getcwd() not in sys.path  # own modules import from the working directory
    if cwd_added:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module), name)
    except Exception:  # not importable here (or broken): its own build will say so
        return None
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())
    # object.__init__ takes no keyword, whatever its signature says
    chain = [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c) and c is not object] \
        if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for function in chain:
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return names, True
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, bool(chain)  # a class without an __init__ of its own takes no keyword


def suggestion(key: str, candidates) -> str:
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, sorted(map(str, candidates)), n=1, cutoff=0.6)
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""


def target_owner(cfg: DictConfig, parts: list[str]) -> int | None:
    """Index in `parts` of the nearest enclosing node with a `_target_`, else None."""
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]), default=None)
        if isinstance(node, DictConfig) and "_target_" in node:
            return i
    return None


def check_keys(cfg: DictConfig, overrides: list[str],
               recompose: Callable[[list[str]], DictConfig] | None = None,
               groups=None) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = set(groups or {})
    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group
        if key in groups or key.startswith("hydra.") or key == "hydra" or override.is_delete():
            continue
        parts = key.split(".")
        owner = target_owner(cfg, parts)
        if owner is not None:
            check_target_key(cfg, parts, owner, override, parsed, recompose)
        elif override.is_add() or override.is_force_add():
            if override.is_force_add() and existed(key, override, parsed, recompose):
                continue
            parent = ".".join(parts[:-1])
            siblings = OmegaConf.select(cfg, parent, default=None) if parent else cfg
            known = [k for k in (siblings or {}) if k != parts[-1] and k != "hydra"]
            hint = suggestion(key, known)
            if not hint and parent and known:
                hint = f" ({parent} has {', '.join(map(str, known))})"
            raise ConfigError(f"{key} is not a prunebench setting{hint}")


def check_target_key(cfg, parts, owner, override, parsed, recompose) -> None:
    node_key = ".".join(parts[:owner])
    name = parts[owner]
    if name in INSTANTIATE_KEYS:
        return
    accepted = signature_keys(str(OmegaConf.select(cfg, f"{node_key}._target_")))
    shared = schema_keys(node_key)  # a strategy's selection keys: not its criterion's
    if accepted is None or accepted[1] or name in accepted[0] | shared:
        return
    if not override.is_add() and existed(".".join(parts), override, parsed, recompose):
        return  # a key the option's own YAML sets (l0's strategy.lambda, read via **kwargs)
    choices = sorted(accepted[0] - {"self", "input_shape", "num_classes", "params"} | shared
                     - set(INSTANTIATE_KEYS))
    target = OmegaConf.select(cfg, f"{node_key}._target_")
    raise ConfigError(f"{'.'.join(parts)} is not a setting of {node_key} ({target})"
                      f"{suggestion('.'.join(parts), choices)}: it takes "
                      f"{', '.join(choices) or 'no settings'}")


def schema_keys(group: str) -> set[str]:
    """The keys the schema types for every option of `group` (config/schema.py)."""
    if group not in schema.GROUPS:
        return set()
    return {str(k) for k in OmegaConf.structured(schema.Config)[group]}


def existed(key: str, override, parsed, recompose) -> bool:
    """Whether `key` is in the config composed without this override (asks Hydra again)."""
    if recompose is None:
        return True  # cannot tell: let the target's own call decide
    others = [o.input_line for o in parsed if o is not override]
    try:
        return OmegaConf.select(recompose(others), key, default=None) is not None
    except Exception:
        return True


def check_device(name) -> None:
    """`auto`, or a device string torch accepts (cpu, cuda, cuda:1, mps) this machine has."""
    if name == "auto" or name == "cpu":
        return
    import torch

    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name} is invalid: allowed auto, cpu, cuda, cuda:N, mps"
                          ) from None
    have = {"cpu": True, "meta": False}.get(device.type)
    if have is None:
        # torch.cuda / torch.xpu answer is_available(); torch.backends.cuda has no such
        # function (only torch.backends.mps does), so the device module is asked first
        have = any(getattr(module, "is_available", lambda: False)()
                   for module in (getattr(torch, device.type, None),
                                  getattr(torch.backends, device.type, None))
                   if module is not None)
    if have and device.type == "cuda" and device.index is not None:
        have = device.index < torch.cuda.device_count()
    if not have:
        raise ConfigError(f"device={name} is not available on this machine "
                          f"(device=auto picks what there is)")



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
