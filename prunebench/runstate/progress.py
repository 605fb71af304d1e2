"""What a run has finished so far, owned by the runner and handed to the run state when it saves.

The runner fills one `Progress` as the pipeline advances (the dense entry and whether the cache
held it, the live gradient telemetry of dense training, then the Session). Whatever stops the
run, results.json is built from it; the session's saves in checkpoints/state.pt carry its dense
entry, so a resumed run does not train the dense model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunebench.training.telemetry import GradientStats

if TYPE_CHECKING:
    from prunebench.pruning.session import Session


@dataclass
class Progress:
    # the dense entry: state_dict, history, gradients (summary), snapshots, train_s
    dense: dict | None = None
    cache_hit: bool = False
    train_gradients: GradientStats | None = None  # dense training's, while it runs
    session: Session | None = None

    def results(self) -> dict:
        """The results.json entries of what finished (for a run that did not)."""
        if self.session is None:
            started = self.dense is not None or self.train_gradients is not None
            return {"gradients": self.gradients()} if started else {}
        journal = self.session.journal
        return {**journal.phases, "events": journal.events, "history": journal.history,
                "gradients": self.gradients()}

    def gradients(self) -> dict:
        """Gradient telemetry per phase: dense training, then the session's phases."""
        if self.dense is not None:
            train = self.dense["gradients"]
        else:
            train = self.train_gradients.summary() if self.train_gradients else None
        session = {p: g.summary() for p, g in self.session.gradients.items()} \
            if self.session else {}
        return {"train": train, **session}
