"""One-shot: prune once to the target after dense training, then fine-tune."""

from __future__ import annotations

from prunebench.schedules.base import Schedule, Session


class OneShot(Schedule):
    def run(self, session: Session) -> None:
        session.prune(session.selection.amount)
        session.record("pruned")
        session.finetune(session.settings.finetune_epochs)
