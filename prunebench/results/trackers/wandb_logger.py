"""logger=wandb: a Weights & Biases run per prunebench run, grouped by sweep.

    WANDB_MODE=offline prunebench logger=wandb     # nothing sent; `wandb sync` uploads later

Run files go under the run folder (`wandb/`). Metrics carry `global_step` as their x-axis
(wandb's define_metric), so epochs logged out of order (a cached dense history) still plot
right. A resumed run reopens the same run id.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunebench.results.trackers.base import RunInfo, Tracker


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, project: str = "prunebench", entity: str | None = None,
                 mode: str | None = None):
        self.project, self.entity, self.mode = project, entity, mode
        self.run = None
        self.last_step = 0

    def start(self, run: RunInfo) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        saved_id = run.saved.get("id")
        self.last_step = run.saved.get("last_step", 0)
        self.run = wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(run.out_dir),
            name=run.name, group=run.sweep.get("group"), id=saved_id,
            resume="allow" if saved_id else None, reinit="create_new")
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def params(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "global_step": step})
        self.last_step = max(self.last_step, step)

    def finish(self, summary, artifacts, checkpoints, status) -> None:
        for key, value in summary.items():
            self.run.summary[f"summary/{key}"] = value
        self.run.summary["checkpoints"] = checkpoints
        self.run.summary["status"] = status
        for path in artifacts:
            self.run.save(str(path), base_path=str(Path(path).parent), policy="now")
        self.run.finish(exit_code=0 if status == "ok" else 1)

    def state(self) -> dict:
        return {"id": self.run.id if self.run is not None else None,
                "last_step": self.last_step}

    def start_sweep(self, sweep_dir: Path, name: str) -> dict:
        return {"group": name}  # the sweep's runs share a W&B group
