"""The contract every experiment tracker follows, and the no-op default.

A tracker is built from its `conf/logger/<name>.yaml` (`_target_`) and called in this order:
`start(run)` once per process, `params(flat config)` when its tracker run is new,
`metrics(values, step)` once per finished epoch,
`finish(summary, artifacts, checkpoints, status)` once; a sweep's callback calls
`start_sweep` and `end_sweep` around its jobs. `state()` returns what a resumed run needs to
continue the same tracker run (its id); the runner keeps it in the run folder. Nothing here
may stop a run: prunebench.results.trackers turns a tracker's exception into one log line and
drops that tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    out_dir: Path            # the run folder
    name: str                # a readable run name (the folder's path below outputs/)
    saved: dict = field(default_factory=dict)  # this tracker's state() from an earlier process
    sweep: dict = field(default_factory=dict)  # what the sweep's callback left (parent run)


class Tracker:
    """Records nothing; subclasses override what their backend keeps."""

    name = "none"

    def start(self, run: RunInfo) -> None:
        """Open (or, with run.saved, reopen) this run's record in the backend."""

    def params(self, params: dict[str, Any]) -> None:
        """The resolved config, flattened to dotted keys."""

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Scalars at a global step (optimizer steps since the run started)."""

    def finish(self, summary: dict[str, float], artifacts: list[Path],
               checkpoints: dict[str, str], status: str) -> None:
        """Final numbers, the files to keep with the run (results.json, the config, plots),
        the checkpoints' paths by phase (kept as paths: they can be large), how it ended."""

    def start_sweep(self, sweep_dir: Path, name: str) -> dict:
        """A sweep begins (its callback calls this): what its jobs need to join it."""
        return {}

    def end_sweep(self, sweep: dict, artifacts: list[Path]) -> None:
        """The sweep ended: keep its comparison files with what start_sweep opened."""

    def state(self) -> dict:
        return {}
