"""logger=csv: metrics.csv in the run folder, one row per (step, metric), then the summary.

Long format (step, name, value) so that phases with different metrics share one file:
`pandas.read_csv(run/"metrics.csv").pivot(index="step", columns="name", values="value")`.
The flattened config goes to params.csv; summary rows have an empty step.
"""

from __future__ import annotations

import csv
from pathlib import Path

from prunebench.results.trackers.base import RunInfo, Tracker


class CSVTracker(Tracker):
    name = "csv"

    def start(self, run: RunInfo) -> None:
        self.path = run.out_dir / "metrics.csv"
        self.params_path = run.out_dir / "params.csv"
        if not run.saved:  # a new run: a fresh file (a resumed one appends)
            self._write(self.path, "w", [("step", "name", "value")])

    def params(self, params: dict) -> None:
        self._write(self.params_path, "w", [("name", "value"), *sorted(params.items())])

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._write(self.path, "a", [(step, k, v) for k, v in values.items()])

    def finish(self, summary, artifacts, checkpoints, status) -> None:
        self._write(self.path, "a", [("", f"summary/{k}", v) for k, v in summary.items()])

    def state(self) -> dict:
        return {"path": str(self.path)}

    @staticmethod
    def _write(path: Path, mode: str, rows) -> None:
        with open(path, mode, newline="") as f:
            csv.writer(f).writerows(rows)
