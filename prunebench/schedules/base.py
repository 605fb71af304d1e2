"""A schedule's base class and the helpers schedules share; the Session they drive lives in
prunebench/pruning/session.py."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from prunebench.config.checks import ConfigError
from prunebench.data import Dataset
from prunebench.pruning.session import Session


class Schedule:
    def __init__(self, name: str):
        self.name = name

    def check(self, cfg: DictConfig, data: Dataset) -> None:
        """Raise ConfigError on settings this schedule cannot run, before any training."""

    def run(self, session: Session) -> None:
        raise NotImplementedError


def steps_per_epoch(cfg: DictConfig, data: Dataset) -> int:
    return math.ceil(len(data.train) / cfg.train.batch_size)


def require_amount(cfg: DictConfig, schedule: str) -> float:
    """The target sparsity; schedules that move toward a target need strategy.amount."""
    amount = cfg.strategy.amount
    if amount is None:
        raise ConfigError(f"schedule={schedule} needs strategy.amount (a target sparsity), "
                          f"not strategy.threshold")
    return amount
