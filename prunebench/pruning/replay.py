"""Replay: a resumed run's schedule fast-forwarded to its saved point.

A schedule is Python code, so its progress is restored by replaying it: the schedule runs from
the top, and until the session reaches the saved fine-tuning call and epoch, a mask change
only re-appends the recorded event, `record` returns the recorded numbers and finished
fine-tuning is skipped, calling `on_step` for each of its steps. A schedule therefore resumes
correctly if its decisions depend on its config, the step, `session.events` and what `record`
returns (not on the weights themselves); the replay checks that it reaches the saved point
with the same events, and refuses to continue otherwise.

The Replay only answers the Session's questions (`event`, `phase`, `fit_call`, `reached`) and
saves what the Session hands it (`save`); the Session edits its own records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunebench import distributed
from prunebench.runstate.signals import stop_if_requested

if TYPE_CHECKING:
    from prunebench.runstate.progress import Progress
    from prunebench.runstate.resume import RunState


class Replay:
    """A session's progress through its schedule, and the saved point it fast-forwards to.

    Without a run state (a twin session, a test) it is never active and saves nothing.
    """

    def __init__(self, state: RunState | None = None, progress: Progress | None = None):
        self.state, self.progress = state, progress
        self.saved = state.take("session") if state is not None else None
        self.fits = 0  # fine-tuning calls started

    @property
    def active(self) -> bool:
        return self.saved is not None

    def event(self, count: int) -> dict:
        """Instead of a mask change: the event recorded after `count` earlier ones."""
        events = self.saved["events"]
        if count >= len(events):
            raise RuntimeError("cannot resume: the schedule prunes differently than before "
                               "the interruption (resume=false starts over)")
        return events[count]

    def phase(self, name: str) -> dict:
        """Instead of evaluating: the numbers recorded for phase `name`."""
        return self.saved["phases"][name]

    def fit_call(self, epochs: int) -> tuple[int, dict | None]:
        """At the start of a fine-tuning call of `epochs`: (epochs to fast-forward, saved
        state to continue from). (0, None): run it; (epochs, None): skip it, it finished
        before the interruption; (k, saved): the interrupted call, continued at epoch k."""
        index, self.fits = self.fits, self.fits + 1
        if not self.active or index > self.saved["fit_index"]:
            return 0, None
        if index < self.saved["fit_index"]:
            return epochs, None
        return self.saved["epoch"], self.saved

    def reached(self, events: list[dict], step: int) -> None:
        """The session is at the saved point: check it got there the same way, then stop
        replaying."""
        if events != self.saved["events"] or step != self.saved["step"]:
            raise RuntimeError("cannot resume: the schedule did not replay to the saved point "
                               "(resume=false starts over)")
        self.saved = None

    def save(self, fit_state: dict) -> None:
        """A fine-tuning epoch start (the session's state and its training state): saved with
        this call's index, then a safe point for a stop request."""
        if self.state is not None:
            self.state.save_session(self.progress, {"fit_index": self.fits - 1, **fit_state})
        stop_if_requested(agree=distributed.max_int)

    @property
    def saving(self) -> bool:
        return self.state is not None

    def check_done(self) -> None:
        if self.active:
            raise RuntimeError("cannot resume: the schedule ended before the saved point "
                               "(resume=false starts over)")
