"""The one place that calls hydra.utils.instantiate: configs in, objects out."""

from __future__ import annotations

import functools
import importlib
from contextlib import contextmanager

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunebench.config import checks
from prunebench.config.errors import ConfigError
from prunebench.data import Dataset
from prunebench.models import own
from prunebench.pruning.recovery import Recalibration
from prunebench.pruning.session import SessionSettings
from prunebench.strategies.base import Strategy
from prunebench.strategies.selection import SELECTION_KEYS, Selection
from prunebench.training import optimizers, zero_shot
from prunebench.training.loop import FitSettings


def check(cfg: DictConfig) -> None:
    """Every value check before any work: the keys every run has (config/checks.py), then
    the strategy built once, so its constructor checks its own keys."""
    checks.check(cfg, lambda: strategy_class(cfg).own_threshold is not None)
    selection(cfg)


@contextmanager
def rejected_as_config_error(group: str):
    """A value the target itself rejects (torch's optimizers check theirs) is the user's to
    fix: one line naming the group, not a traceback."""
    try:
        yield
    except (InstantiationException, ValueError) as err:
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):  # already one line naming the key (missing data)
            raise cause from None
        line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{group}: {line}") from err


def dataset(cfg: DictConfig) -> Dataset:
    with rejected_as_config_error("dataset"):
        return instantiate(cfg.dataset)


def model(cfg: DictConfig, data: Dataset) -> nn.Module:
    # input_shape / num_classes only where the constructor takes them (models/own.py)
    node, offered = own.arguments(cfg.model, {"input_shape": data.input_shape,
                                              "num_classes": data.num_classes})
    with rejected_as_config_error("model"):
        return own.checked_module(str(node._target_), instantiate(node, **offered))


def criterion(cfg: DictConfig) -> Strategy:
    """The criterion `strategy._target_` names, built from its own keys: cfg.strategy less
    `name` and the selection's keys."""
    node = OmegaConf.to_container(cfg.strategy, resolve=True)
    own = {k: v for k, v in node.items() if k not in ("name", *SELECTION_KEYS)}
    with rejected_as_config_error("strategy"):
        return instantiate(own)


def selection(cfg: DictConfig) -> Selection:
    """The run's selection (amount or threshold, allocation, granularity, pattern, exclude,
    ...) around its criterion."""
    node = OmegaConf.to_container(cfg.strategy, resolve=True)
    keys = {k: v for k, v in node.items() if k in SELECTION_KEYS}
    scorer = criterion(cfg)
    with rejected_as_config_error("strategy"):
        return Selection(scorer, **keys)


def strategy_class(cfg: DictConfig) -> type:
    """The class `strategy._target_` names, imported but not built."""
    return target_of(cfg, "strategy")


def target_of(cfg: DictConfig, group: str):
    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{group}._target_={target} cannot be imported: {err}") from None


def schedule(cfg: DictConfig):
    with rejected_as_config_error("schedule"):
        return instantiate(cfg.schedule)


def optimizer(cfg: DictConfig, model: nn.Module, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    with rejected_as_config_error("optimizer"):
        make = instantiate(cfg.optimizer, lr=cfg.optimizer.lr * lr_scale)
        return optimizers.fused_if_offered(make, list(model.parameters()), cfg.optimizer)


def lr_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int):
    """Per-epoch learning-rate schedule named by train.lr_schedule (none | cosine | step)."""
    kind = cfg.train.lr_schedule
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.train.lr_step_size,
                                               cfg.train.lr_gamma)
    return None


def device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fit_settings(cfg: DictConfig, epochs: int) -> FitSettings:
    return FitSettings(epochs=epochs, batch_size=cfg.train.batch_size,
                       max_norm=cfg.train.grad_clip.max_norm,
                       max_value=cfg.train.grad_clip.max_value,
                       l1=cfg.train.regularization.l1, l2=cfg.train.regularization.l2,
                       amp=cfg.train.amp, compile=cfg.train.compile)


def session_settings(cfg: DictConfig, lr_scale: float | None = None) -> SessionSettings:
    """What a Session reads of the config; `lr_scale` replaces finetune.lr_scale (a control
    trained from scratch runs at the full learning rate)."""
    finetune = cfg.finetune
    return SessionSettings(
        seed=cfg.seed, batch_size=cfg.train.batch_size, finetune_epochs=finetune.epochs,
        lr_scale=finetune.lr_scale if lr_scale is None else lr_scale,
        recalibration=Recalibration(finetune.bn_recalibrate, finetune.bn_batches, cfg.seed + 5),
        optimizer=functools.partial(optimizer, cfg),
        lr_scheduler=functools.partial(lr_scheduler, cfg),
        fit=functools.partial(fit_settings, cfg),
        zero_shot=functools.partial(zero_shot.run, cfg),
        dataset_name=cfg.dataset.name, calibration_seed=cfg.calibration.seed,
        calibration_samples=cfg.calibration.samples)
