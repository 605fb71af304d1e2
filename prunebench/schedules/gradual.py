"""Gradual pruning (Zhu & Gupta 2017, AGP): sparsity rises along a cubic during fine-tuning.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,   t = t0, t0 + dt, ..., t0 + n*dt

from `initial` (s_i) to the strategy's target (s_f), pruning every `frequency` (dt) steps
between epochs `start` and `end` of the fine-tuning phase, which starts from the dense model:
fast at first, while there are redundant weights, slow near the target.
"""

from __future__ import annotations

from omegaconf import DictConfig

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset, steps_per_epoch
from prunebench.schedules.base import Schedule, Session, require_amount


def cubic_sparsity(step: int, initial: float, final: float, start: int, frequency: int,
                   n: int) -> float:
    """The AGP target at `step`, clamped to `initial` before start and `final` after end."""
    remaining = (1.0 - min(max((step - start) / (n * frequency), 0.0), 1.0)) ** 3
    # s_f + (s_i - s_f) r written as a mix, so the ends are s_i and s_f exactly
    return initial * remaining + final * (1.0 - remaining)


class Gradual(Schedule):
    def __init__(self, name: str, initial: float = 0.0, start: float = 0.0, end: float = 5.0,
                 frequency: int = 50):
        super().__init__(name)
        self.initial, self.start, self.end, self.frequency = initial, start, end, frequency

    def check(self, cfg: DictConfig, data: Dataset) -> None:
        self.plan(require_amount(cfg.strategy.amount, self.name), cfg.finetune.epochs,
                  steps_per_epoch(data.train, cfg.train.batch_size))

    def run(self, session: Session) -> None:
        target = require_amount(session.selection.amount, self.name)
        t0, n = self.plan(target, session.settings.finetune_epochs, session.steps_per_epoch())
        first = session.step

        def on_step(step: int) -> None:
            t = step - first
            if t < t0 or (t - t0) % self.frequency or (t - t0) // self.frequency > n:
                return
            prune_to(session, cubic_sparsity(t, self.initial, target, t0, self.frequency, n))
            if t == t0 + n * self.frequency:  # 'pruned': at the target, before the recovery
                session.record("pruned")
                session.model.train()

        if t0 == 0:
            prune_to(session, self.initial)
        session.finetune(session.settings.finetune_epochs, on_step=on_step)

    def plan(self, target: float, epochs: int, steps: int) -> tuple[int, int]:
        """(first pruning step t0, number of increments n) of `epochs` fine-tuning epochs of
        `steps` steps, checked against the phase."""
        if not 0 <= self.initial <= target:
            raise ConfigError(f"schedule.initial={self.initial} is invalid: allowed "
                              f"0 <= initial <= strategy.amount ({target})")
        if not 0 <= self.start < self.end <= epochs:
            raise ConfigError(f"schedule.start={self.start}, schedule.end={self.end} are "
                              f"invalid: allowed 0 <= start < end <= finetune.epochs ({epochs})")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ConfigError(f"schedule.frequency={self.frequency} is invalid: allowed an "
                              f"integer number of steps >= 1")
        t0, t_end = round(self.start * steps), round(self.end * steps)
        n = (t_end - t0) // self.frequency
        if n < 1:
            raise ConfigError(f"schedule.frequency={self.frequency} is invalid: allowed at most "
                              f"{t_end - t0} steps (start to end)")
        return t0, n


def prune_to(session: Session, sparsity: float) -> None:
    """Prune to `sparsity` unless the model is there already (the cubic starts flat at 0).

    "There" is the last amount asked for: with granularity=neuron amount counts units, and
    the weight sparsity it leaves is higher.
    """
    done = session.events[-1]["amount"] if session.events else 0.0
    if sparsity > done:
        session.prune(sparsity)
