"""logger=tensorboard: event files in the run folder, via torch.utils.tensorboard.

    tensorboard --logdir outputs/

Scalars per epoch under `<phase>/<metric>` on the global step; the config as text and, at
the end, as HParams (so TensorBoard's HParams tab puts a sweep's runs side by side with their
final numbers, under `summary/...`). A resumed run appends a new event file to the same
folder, which TensorBoard reads as the same run.
"""

from __future__ import annotations

import json

from prunebench.results.trackers.base import RunInfo, Tracker


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, subdir: str = "tensorboard"):
        self.subdir = subdir
        self.params_seen: dict = {}
        self.last_step = 0

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = run.out_dir / self.subdir
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.params_seen = run.saved.get("params", {})
        self.last_step = run.saved.get("last_step", 0)

    def params(self, params: dict) -> None:
        # HParams take bool, int, float, str; lists and nulls go in as their text
        self.params_seen = {k: v if isinstance(v, bool | int | float | str) else json.dumps(v)
                            for k, v in params.items()}
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(self.params_seen.items()))
        self.writer.add_text("config", text, 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)
        self.writer.flush()  # once per epoch: a live `tensorboard` sees each epoch

    def finish(self, summary, artifacts, checkpoints, status) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"summary/{k}": v for k, v in summary.items()}
        for summary_pb in hparams(self.params_seen, metrics):
            self.writer.file_writer.add_summary(summary_pb)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.last_step)
        files = [str(p) for p in artifacts] + [f"{k}: {v}" for k, v in checkpoints.items()]
        self.writer.add_text("artifacts", "\n".join(f"    {f}" for f in files), self.last_step)
        self.writer.add_text("status", str(status), self.last_step)
        self.writer.close()

    def state(self) -> dict:
        return {"logdir": str(self.logdir), "params": self.params_seen,
                "last_step": self.last_step}
