"""Iterative pruning (Han et al. 2015): `rounds` prune/fine-tune cycles on a geometric path.

Each round keeps the same fraction (1 - target)^(1/rounds) of the weights still there, so
round r reaches sparsity 1 - (1 - target)^(r/rounds) and the last round lands on the target.
With `rewind` the surviving weights go back to their values at initialization (`init`,
the lottery ticket of Frankle & Carbin 2019) or after dense epoch k (`epoch_<k>`, Frankle et
al. 2020) after every pruning step, and the fine-tuning that follows retrains them.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset
from prunebench.schedules.base import Schedule, Session, require_amount


def geometric_path(target: float, rounds: int) -> list[float]:
    """Sparsity after each round; the last is the target exactly."""
    keep = 1.0 - target
    return [1.0 - keep ** (r / rounds) for r in range(1, rounds)] + [target]


def rewind_epoch(cfg: DictConfig) -> int:
    """k of `schedule.rewind=epoch_<k>` (lottery-ticket rewinding to epoch k), else 0."""
    match = re.fullmatch(r"epoch_(\d+)", str(OmegaConf.select(cfg, "schedule.rewind",
                                                                default=None)))
    return int(match.group(1)) if match else 0


class Iterative(Schedule):
    def __init__(self, name: str, rounds: int = 3, rewind: str = "none",
                 epochs_per_round: int | None = None):
        super().__init__(name)
        self.rounds, self.rewind, self.epochs_per_round = rounds, str(rewind), epochs_per_round

    def check(self, cfg: DictConfig, data: Dataset) -> None:
        require_amount(cfg.strategy.amount, self.name)
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"schedule.rounds={self.rounds} is invalid: allowed an integer >= 1")
        k = rewind_epoch(cfg)
        if self.rewind not in ("none", "init") and not 1 <= k <= cfg.train.epochs:
            raise ConfigError(f"schedule.rewind={self.rewind} is invalid: allowed none, init "
                              f"or epoch_<k> with 1 <= k <= train.epochs")

    def run(self, session: Session) -> None:
        target = require_amount(session.selection.amount, self.name)
        epochs = self.epochs_per_round
        if epochs is None:
            epochs = session.settings.finetune_epochs
        for r, sparsity in enumerate(geometric_path(target, self.rounds), start=1):
            session.prune(sparsity)
            if self.rewind != "none":
                rewind(session, self.rewind)
            if r == self.rounds:  # 'pruned': at the target, before the last fine-tuning
                session.record("pruned")
            session.finetune(epochs)


def rewind(session: Session, key: str) -> None:
    """Reset every parameter to its saved value, keeping the pruned weights at zero."""
    state = session.rewind_states[key]
    session.model.load_state_dict(state)  # copies into the parameters, masks stay bound
    session.masks.apply()
