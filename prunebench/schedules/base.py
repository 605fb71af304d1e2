"""A schedule's base class and the helpers schedules share; the Session they drive lives in
prunebench/pruning/session.py."""

from __future__ import annotations

from omegaconf import DictConfig

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset
from prunebench.pruning.session import Session


class Schedule:
    """Base class of a schedule: *when* masks change; the strategy decides *which* weights.

    A schedule is built from its `conf/schedule/<name>.yaml` (`_target_`), its own keys
    arriving as constructor arguments (checked there). The runner hands it the Session after
    dense training; `run` drives it: `session.prune(amount)` changes the masks (and logs the
    event), `session.record("pruned")` records the phase before recovery, and
    `session.finetune(epochs)` trains with the masks held. One-shot pruning is exactly that.
    """

    def __init__(self, name: str):
        self.name = name

    def check(self, cfg: DictConfig, data: Dataset) -> None:
        """Raise ConfigError on settings this schedule cannot run, before any training."""

    def run(self, session: Session) -> None:
        """Prune and fine-tune `session`'s model; record the `pruned` phase once, right
        before the recovery fine-tuning."""
        raise NotImplementedError


def require_amount(amount: float | None, schedule: str) -> float:
    """The target sparsity (strategy.amount); schedules that move toward a target need it."""
    if amount is None:
        raise ConfigError(f"schedule={schedule} needs strategy.amount (a target sparsity), "
                          f"not strategy.threshold")
    return amount
