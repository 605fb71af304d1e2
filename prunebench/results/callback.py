"""Hydra callback registered in conf/config.yaml: tables and plots at a sweep's end.

It writes the same files as `prunebench-report SWEEP_DIR --plot` (comparison.md/csv/json and
the PNGs) into the sweep folder.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ComparisonCallback(Callback):
    def __init__(self, baseline: str | None = "l1", plot: bool = True):
        self.baseline, self.plot = baseline, plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from prunebench.results import report  # torch and scipy load here, not for every run

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = report.build(sweep_dir, sweep_dir, baseline=self.baseline, plot=self.plot,
                                 title=f"comparison: {sweep_dir}")
            log.info("wrote %s", ", ".join(str(p) for p in paths))
        except FileNotFoundError:
            log.warning("no results.json found under %s", sweep_dir)
        failed, total = failed_jobs(sweep_dir)
        if failed:  # the table is written; the exit status says the sweep is not whole
            sys.exit(f"prunebench: error: {failed} of {total} jobs failed "
                     f"(see {sweep_dir / 'comparison.md'})")


def failed_jobs(sweep_dir: Path) -> tuple[int, int]:
    """(jobs without a finished results.json, jobs) among the sweep's job folders."""
    jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()] \
        if sweep_dir.is_dir() else []
    failed = 0
    for job in jobs:
        try:
            status = json.loads((job / "results.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        failed += status not in ("ok", "diverged")
    return failed, len(jobs)
