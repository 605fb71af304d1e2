"""Hydra callback registered in conf/config.yaml: the comparison table at a sweep's end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunebench.results import table

log = logging.getLogger(__name__)


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = table.collect(sweep_dir)
        if not rows:
            log.warning("no results.json found under %s", sweep_dir)
            return
        paths = table.write(rows, sweep_dir)
        table.show(rows, title=f"comparison: {sweep_dir}")
        log.info("wrote %s", ", ".join(str(p) for p in paths))
