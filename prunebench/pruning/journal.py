"""What a Session records: its part of results.json, kept in one place.

phases (the metrics of dense / pruned / final ...), events (one per mask change), history
(per-epoch fine-tuning numbers), timing, cost (peak memory of the pruning steps), budget
(fine-tuning epochs and steps) and how data-driven criteria calibrate. `results()` is that
part of results.json; `state_dict()` is what a resumed run restores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Journal:
    calibration: dict = field(default_factory=dict)
    phases: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    history: dict[str, list] = field(default_factory=dict)
    timing: dict = field(default_factory=lambda: {"prune_s": 0.0, "finetune_s": 0.0})
    cost: dict = field(default_factory=lambda: {"prune_peak_mb": 0.0})  # highest over events
    budget: dict = field(default_factory=lambda: {"finetune_epochs": 0, "finetune_steps": 0})

    def event(self, step: int, amount: float | None, sparsity: float, pruned: int,
              recovered: int) -> None:
        """One mask change (with the amount asked for, if any)."""
        self.events.append({"step": step, "amount": amount, "sparsity": sparsity,
                            "pruned": pruned, "recovered": recovered})
        log.info("mask update at step %d: sparsity %.4f (+%d pruned, %d recovered)",
                 step, sparsity, pruned, recovered)

    def peak_memory(self, used: dict) -> None:
        """memory.peak's reading of one pruning step; the highest is kept."""
        self.cost = {"prune_peak_mb": max(self.cost["prune_peak_mb"], used["peak_mb"]),
                     "memory_method": used["method"]}

    def fine_tuning(self, epochs: int, steps: int) -> None:
        self.budget["finetune_epochs"] += epochs
        self.budget["finetune_steps"] += steps

    def results(self) -> dict:
        """The Session's part of results.json."""
        return {**self.phases, "events": self.events, "history": self.history,
                "timing": self.timing, "cost": self.cost, "budget": self.budget,
                "calibration": self.calibration}

    def state_dict(self) -> dict:
        return {"events": self.events, "history": self.history, "phases": self.phases,
                "timing": self.timing}

    def load_state_dict(self, saved: dict) -> None:
        """The records of a saved point (events are replayed to it already)."""
        self.history, self.phases, self.timing = saved["history"], saved["phases"], saved["timing"]
