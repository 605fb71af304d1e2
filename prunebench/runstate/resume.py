"""Interruption and resume: a run killed mid-phase continues where it stopped, exactly.

Every training phase saves its full state to `checkpoints/state.pt` (atomically) at the start
of each epoch: model, masks, optimizer and lr scheduler, the shuffling generator and torch's
global RNG, the step, and what the run has recorded so far. SIGTERM, SIGINT and SIGUSR1 only
set a flag (runstate/signals.py); training stops at the end of the current step and the run
exits with 128+signum (SIGINT: KeyboardInterrupt). Re-running the same command in the same
run folder resumes from the last epoch start and replays the interrupted epoch, so the results
equal those of an uninterrupted run bit for bit on CPU.

This module is what is saved and where (RunState, the training state of a phase); stop
requests are runstate/signals.py's, and fast-forwarding a resumed schedule to its saved point
is pruning/replay.py's, beside the Session it drives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from prunebench import distributed
from prunebench.config.errors import ConfigError
from prunebench.runstate import files
from prunebench.runstate.folder import AFTER_TRAINING, FINISHED, first_difference, training_config
from prunebench.runstate.signals import stop_if_requested
from prunebench.training import optimizers

if TYPE_CHECKING:
    from prunebench.runstate.progress import Progress

log = logging.getLogger(__name__)


def comparable(cfg: DictConfig) -> dict:
    """The config that must match for a folder's run to be resumed or reused."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("resume", None)
    return config


class RunState:
    """A run folder's `checkpoints/state.pt`: what to resume from, and where to save."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        self.path = Path(out_dir) / "checkpoints" / "state.pt"
        self.config = comparable(cfg)
        self.saved: dict | None = None  # the state to resume from, until it is consumed

    def open(self, mode, results_path: Path) -> dict | None:
        """Decide fresh / resume / reuse by `resume` (auto | true | false); returns the
        recorded results when the folder already holds this run, finished."""
        if mode is False:
            self.path.unlink(missing_ok=True)
            return None
        finished = self._finished(results_path)
        if finished is not None and self.after_training_changed(finished):
            log.info("%s holds this run, finished (%s), with other settings of the steps "
                     "after training (%s): they run again from its checkpoints",
                     results_path.parent, finished["status"], ", ".join(AFTER_TRAINING))
            return finished
        if finished is not None:
            log.info("%s already holds this run, finished (%s); resume=false runs it again",
                     results_path.parent, finished["status"])
            return finished
        if not self.path.exists():
            if mode is True:
                log.warning("nothing to resume in %s; starting from the beginning",
                            self.path.parent.parent)
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # unreadable: start over rather than trust it
            log.warning("cannot resume from %s (%s); starting from the beginning", self.path,
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
            return None
        there, here = training_config(saved.get("config")), training_config(self.config)
        if there != here:  # the keys of the steps after training may differ
            raise ConfigError(f"{self.path.parent.parent} holds an unfinished run of another "
                              f"config ({first_difference(there, here)})"
                              f": resume=false starts this one over there")
        log.info("resuming from %s: %s, epoch %d", self.path, saved["phase"],
                 saved["epoch"] + 1)
        self.saved = saved
        return None

    def _finished(self, results_path: Path) -> dict | None:
        try:
            results = files.read_json(results_path)
        except (OSError, ValueError):
            return None
        if not isinstance(results, dict) or results.get("status") not in FINISHED:
            return None
        same = training_config(results.get("config")) == training_config(self.config)
        return results if same else None

    def after_training_changed(self, results: dict) -> bool:
        """True when the finished `results` were made with other keys of the steps after
        training than this command's (their steps run again from the checkpoints)."""
        recorded = results.get("config") or {}
        return any(recorded.get(k) != self.config.get(k) for k in AFTER_TRAINING)

    def take(self, kind: str) -> dict | None:
        """The saved state if it is of this kind ('train' or 'session')."""
        return self.saved if self.saved is not None and self.saved["kind"] == kind else None

    def resumed_dense(self) -> tuple[dict, bool] | None:
        """(dense entry, cache hit) when the run stopped after dense training."""
        saved = self.take("session")
        return (saved["dense"], saved["cache_hit"]) if saved is not None else None

    def save_training(self, state: dict) -> None:
        """Dense training's state at an epoch start."""
        self._save({"kind": "train", **state})

    def save_session(self, progress: Progress, state: dict) -> None:
        """A fine-tuning call's state at an epoch start, with the dense entry it started from."""
        self._save({"kind": "session", "dense": progress.dense, "cache_hit": progress.cache_hit,
                    **state})

    def _save(self, state: dict) -> None:
        files.save_torch(self.path, {"config": self.config, **state})

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def cpu(state: dict) -> dict:
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}


def training_state(model, optimizer, scheduler, generator: torch.Generator) -> dict:
    return {"model": cpu(model.state_dict()), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}


def restore_training(saved: dict, model, optimizer, scheduler, generator) -> None:
    model.load_state_dict(saved["model"])
    optimizers.load_state(optimizer, saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])


def dense_saver(state: RunState, model, optimizer, scheduler, generator, prefix: list,
                gradients, snapshots: dict) -> Callable[[int, list], None]:
    """fit's on_epoch for dense training: save, then stop here if asked to."""

    def save(epoch: int, history: list) -> None:
        state.save_training({"phase": "train", "epoch": epoch, "history": prefix + history,
                             "gradients": gradients.state_dict(), "snapshots": snapshots,
                             **training_state(model, optimizer, scheduler, generator)})
        stop_if_requested(agree=distributed.max_int)

    return save
