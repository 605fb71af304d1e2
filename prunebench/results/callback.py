"""Hydra callback registered in conf/config.yaml: tables and plots at a sweep's end.

It writes the same files as `prunebench-report SWEEP_DIR --plot` (comparison.md/csv/json and
the PNGs) into the sweep folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunebench.results import report

log = logging.getLogger(__name__)


class ComparisonCallback(Callback):
    def __init__(self, baseline: str | None = "l1", plot: bool = True):
        self.baseline, self.plot = baseline, plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = report.build(sweep_dir, sweep_dir, baseline=self.baseline, plot=self.plot,
                                 title=f"comparison: {sweep_dir}")
        except FileNotFoundError:
            log.warning("no results.json found under %s", sweep_dir)
            return
        log.info("wrote %s", ", ".join(str(p) for p in paths))
