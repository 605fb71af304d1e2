"""Hydra callback registered in conf/config.yaml: a sweep's parent run in each tracker.

At a sweep's start each tracker may open a parent (MLflow: a parent run; W&B: a group) and
what its jobs need to join it goes to tracking_sweep.json in the sweep folder, where each
job finds it (prunebench.results.trackers.find_sweep). At the end the comparison files the
ComparisonCallback wrote (listed after this callback, so it ends first) go to the parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

COMPARISON = ("comparison.md", "comparison.csv", "comparison.json")


class SweepTracking(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from prunebench.results import trackers  # torch and the trackers load only when used
        from prunebench.runstate import files

        if not trackers.specs(config.get("logger")):
            return
        built = trackers.build(config.get("logger"))
        if not built:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        opened = {}
        for key, tracker in built:
            try:
                opened[key] = tracker.start_sweep(sweep_dir, sweep_dir.name)
            except Exception as err:
                trackers.warn(key, err)
        files.write_json(sweep_dir / trackers.SWEEP_FILE, opened)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from prunebench.results import trackers

        sweep_dir = Path(config.hydra.sweep.dir)
        opened = trackers.read(sweep_dir / trackers.SWEEP_FILE)
        if not opened:
            return
        artifacts = [sweep_dir / name for name in COMPARISON if (sweep_dir / name).is_file()]
        artifacts += sorted(sweep_dir.glob("*.png"))
        for key, tracker in trackers.build(config.get("logger")):
            if opened.get(key):
                try:
                    tracker.end_sweep(opened[key], artifacts)
                except Exception as err:
                    trackers.warn(key, err)
