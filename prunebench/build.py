"""The one place that calls hydra.utils.instantiate: configs in, objects out."""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from prunebench.data import Dataset
from prunebench.schema import ConfigError


def dataset(cfg: DictConfig) -> Dataset:
    try:
        return instantiate(cfg.dataset)
    except InstantiationException as err:  # a user's error (missing data) stays one line
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def model(cfg: DictConfig, data: Dataset) -> nn.Module:
    return instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)


def strategy(cfg: DictConfig):
    return instantiate(cfg.strategy)


def schedule(cfg: DictConfig):
    return instantiate(cfg.schedule)


def optimizer(cfg: DictConfig, model: nn.Module, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    return instantiate(cfg.optimizer, lr=cfg.optimizer.lr * lr_scale)(model.parameters())


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
