"""Experiment trackers (the `logger` config group) and the fan-out the runner drives.

    logger=none | csv | tensorboard | mlflow | wandb, or several: logger=[csv,tensorboard]

The runner opens one `Tracking` per run. It observes every epoch of every training phase
through training.loop's epoch observers, with what the epoch already computed (loss,
accuracy, lr, gradient-norm statistics: no host synchronization added), and at the end logs
results.json's numbers as the summary and its files as artifacts. `tracking.json` in the run
folder keeps each tracker's run id and the last step logged per phase, so a resumed run
continues the same tracker run and logs no epoch twice. A tracker that fails (a locked or
unreachable store, a missing package) costs one warning line and an entry in results.json's
`failed_steps`; the run goes on without it.

The global step is the number of optimizer steps since the run started: dense training's
steps, then fine-tuning's (all its rounds), so every phase lies on one axis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunebench.results.trackers.base import RunInfo, Tracker
from prunebench.runstate import files

log = logging.getLogger(__name__)
STATE_FILE = "tracking.json"  # in the run folder: tracker run ids, last step logged per phase
SWEEP_FILE = "tracking_sweep.json"  # in the sweep folder: the parent runs children join
SKIPPED = ("config", "history", "events", "traceback", "error", "layers")


def specs(logger_cfg) -> dict[str, DictConfig]:
    """The trackers a `logger` node asks for: its children that name a `_target_`."""
    if not isinstance(logger_cfg, DictConfig):
        return {}
    return {key: value for key, value in logger_cfg.items()
            if isinstance(value, DictConfig) and "_target_" in value}


def build(logger_cfg, failed: list[dict] | None = None) -> list[tuple[str, Tracker]]:
    """The trackers built; one that cannot be is warned about (and added to `failed`)."""
    from hydra.utils import instantiate

    built = []
    for key, spec in specs(logger_cfg).items():
        try:
            built.append((key, instantiate(spec)))
        except Exception as err:
            failure(failed, key, err)
    return built


def failure(failed: list[dict] | None, key: str, err: BaseException) -> None:
    reason = warn(key, err)
    if failed is not None:
        failed.append({"step": f"logger.{key}", "error": reason})


def warn(key: str, err: BaseException) -> str:
    """One warning line for a tracker that failed; returns its reason."""
    cause = err.__cause__ or err
    line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    log.warning("logger %s: %s; the run goes on without it", key, line)
    return line


def start(cfg: DictConfig, out_dir: Path, resuming: bool) -> Tracking:
    """Open the run's trackers; `resuming` continues the tracker runs tracking.json names."""
    failed: list[dict] = []
    trackers = build(cfg.get("logger"), failed)
    if not trackers:
        tracking = Tracking()
        tracking.failed = failed
        return tracking
    out_dir = Path(out_dir)
    saved = read(out_dir / STATE_FILE) if resuming else {}
    sweep = find_sweep(out_dir)
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    tracking = Tracking(out_dir, cfg.train.epochs, saved.get("logged", {}))
    tracking.failed = failed
    for key, tracker in trackers:
        mine = saved.get("trackers", {}).get(key, {})
        try:
            tracker.start(RunInfo(out_dir, run_name(out_dir), mine, sweep.get(key, {})))
            if not mine:
                tracker.params(params)
        except Exception as err:
            failure(failed, key, err)
            continue
        tracking.trackers.append((key, tracker))
    tracking.save()
    return tracking


class Tracking:
    """The trackers of one run; every call reaches each of them, and none can fail the run."""

    def __init__(self, out_dir: Path | None = None, dense_epochs: int = 0,
                 logged: dict[str, int] | None = None):
        self.out_dir, self.dense_epochs = out_dir, dense_epochs
        self.trackers: list[tuple[str, Tracker]] = []
        self.logged: dict[str, int] = dict(logged or {})  # phase -> last global step logged
        self.failed: list[dict] = []  # trackers that failed mid-run: results.json's failed_steps

    @contextmanager
    def observing(self) -> Iterator[None]:
        """Log every epoch that training.loop.fit finishes inside the block."""
        if not self.trackers:
            yield
            return
        from prunebench.training import loop

        loop.epoch_observers.append(self.epoch)
        try:
            yield
        finally:
            loop.epoch_observers.remove(self.epoch)

    def epoch(self, phase: str, step: int, epoch_steps: int, record: dict,
              gradients: dict) -> None:
        """fit's observer: `step` counts this phase's optimizer steps (fine-tuning continues
        its count across rounds); dense training's steps come first on the global axis."""
        offset = 0 if phase == "train" else self.dense_epochs * epoch_steps
        self.log_epoch(phase, offset + step, record, gradients)

    def log_epoch(self, phase: str, step: int, record: dict, gradients: dict) -> None:
        if step <= self.logged.get(phase, -1):  # logged before an interruption
            return
        values = {f"{phase}/{k}": v for k, v in record.items() if is_number(v)}
        values |= {f"{phase}/grad_{k}": v for k, v in gradients.items()
                   if k not in ("epoch", "steps") and is_number(v)}
        self.call("metrics", values, step)
        self.logged[phase] = step
        self.save()

    def finish(self, results: dict) -> None:
        """Summary numbers, files and status of the finished (or stopped) run."""
        if not self.trackers:
            return
        self.fill_dense(results)
        out = self.out_dir
        artifacts = [p for p in [out / "results.json", out / ".hydra" / "config.yaml",
                                 *sorted(out.glob("*.png"))] if p.is_file()]
        checkpoints = {p.stem: str(p.resolve()) for p in sorted((out / "checkpoints").glob("*"))
                       if p.is_file() and p.name != "state.pt"}
        status = results.get("status")
        numbers = summary(results) if status != "interrupted" else {}  # a resumed run's come
        self.call("finish", numbers, artifacts, checkpoints, status)
        self.save()

    def fill_dense(self, results: dict) -> None:
        """Dense epochs that no fit here observed (a dense model from the cache): log them
        from the recorded history, on the same steps as if trained here."""
        history = results.get("history", {}).get("train") or []
        grads = (results.get("gradients", {}).get("train") or {}).get("epochs") or []
        step = 0
        for i, record in enumerate(history):
            stats = grads[i] if i < len(grads) else {}
            step += stats.get("steps") or 0
            self.log_epoch("train", step if stats else record["epoch"], record, stats)

    def call(self, method: str, *args: Any) -> None:
        for key, tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # once: the tracker is dropped for the rest of the run
                failure(self.failed, key, err)
                self.trackers.remove((key, tracker))

    def save(self) -> None:
        if self.out_dir is None:
            return
        files.write_json(self.out_dir / STATE_FILE, {
            "trackers": {key: tracker.state() for key, tracker in self.trackers},
            "logged": self.logged})


def read(path: Path) -> dict:
    try:
        return files.read_json(path)
    except (OSError, ValueError):
        return {}


def find_sweep(out_dir: Path, levels: int = 3) -> dict:
    """What the sweep's callback left in the sweep folder (a job folder lies below it)."""
    for folder in list(out_dir.resolve().parents)[:levels]:
        if (folder / SWEEP_FILE).is_file():
            return read(folder / SWEEP_FILE)
    return {}


def run_name(out_dir: Path) -> str:
    """The sweep's overrides of this job (`strategy=l1,strategy.amount=0.9`), else the folder."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().job.override_dirname:
            return HydraConfig.get().job.override_dirname
    except Exception:  # outside a Hydra app: the folder is as good a name
        pass
    return "/".join(Path(out_dir).resolve().parts[-2:])


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole (as their text)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def summary(results: dict, prefix: str = "") -> dict[str, float]:
    """Every number results.json records outside the config and the per-epoch histories:
    each phase's accuracy (or perplexity), sparsity, MACs; latency speedups; timing."""
    numbers = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if key in SKIPPED:
            continue
        if isinstance(value, dict):
            numbers |= summary(value, name)
        elif is_number(value) and math.isfinite(value):
            numbers[name] = value
    return numbers
