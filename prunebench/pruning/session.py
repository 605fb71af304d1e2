"""The Session a schedule drives: prune to a target, fine-tune with masks held, record.

A schedule decides *when* masks change and calls `session.prune(amount)` (or, to choose the
masks itself, `session.change_masks(choose)`: DNS and RigL) and
`session.finetune(epochs, on_step=...)`; the selection (its criterion's scores) decides
*which* weights. Every mask
change takes the one path of `change_masks`. A Session is built from `SessionSettings`
(build.session_settings) and keeps its part of results.json in one `Journal`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunebench import distributed
from prunebench.data import Dataset, batches, steps_per_epoch
from prunebench.data.calibration import DEFAULT_SAMPLES
from prunebench.pruning import macs, memory, recovery
from prunebench.pruning.journal import Journal
from prunebench.pruning.masks import Masks, mask_sparsity, sparsity_report
from prunebench.pruning.replay import Replay
from prunebench.runstate import files
from prunebench.runstate.resume import restore_training, training_state
from prunebench.strategies.context import PruneContext
from prunebench.strategies.offload import BlockStore
from prunebench.strategies.selection import Report, Selection
from prunebench.training.loop import FitSettings, cross_entropy, evaluate, fit
from prunebench.training.telemetry import GradientStats


@dataclass(frozen=True)
class SessionSettings:
    """What a Session needs of the config (build.session_settings makes it): its seed and
    batch size, fine-tuning's epochs and learning-rate scale, BatchNorm recalibration, and
    how fine-tuning's optimizer, lr schedule and loop settings are made, and the zero-shot
    tasks every record evaluates (eval.tasks)."""

    seed: int
    batch_size: int
    finetune_epochs: int
    lr_scale: float
    recalibration: recovery.Recalibration
    optimizer: Callable[[nn.Module, float], torch.optim.Optimizer]  # (model, lr_scale)
    lr_scheduler: Callable[[torch.optim.Optimizer, int], object]  # (optimizer, epochs)
    fit: Callable[[int], FitSettings]  # (epochs)
    zero_shot: Callable[[nn.Module], dict]  # eval.tasks' metrics of a model (zero_shot.run)
    dataset_name: str = ""  # what calibration batches come from, for results.json
    calibration_seed: int | None = None  # calibration.seed; None: the session's seed + 1
    calibration_samples: int | None = None  # calibration.samples; None: what a draw takes


class Session:
    """One run's pruning: the model and its masks, the step, and what has been recorded.

    `rewind_states` are weights a schedule may rewind to (lottery tickets): "init", and
    "epoch_<k>" when dense training kept that snapshot. `replay` fast-forwards a resumed run's
    schedule to its saved point (inactive by default). `loss_fn(logits, x, y)` replaces
    cross-entropy in fine-tuning (distillation, pruning/recovery.py).
    """

    def __init__(self, settings: SessionSettings, model: nn.Module, data: Dataset,
                 selection: Selection | None, out_dir: Path,
                 rewind_states: dict[str, dict[str, torch.Tensor]] | None = None,
                 replay: Replay | None = None, loss_fn: Callable | None = None):
        self.settings, self.model, self.data = settings, model, data
        self.selection, self.out_dir = selection, out_dir
        self.report: Report | None = None  # what the last `prune` chose (selection.py)
        self.masks = Masks(model, selection.exclude)
        self.step = 0
        self.gradients: dict[str, GradientStats] = {}
        self.rewind_states = rewind_states or {}
        self.generator = torch.Generator().manual_seed(settings.seed + 1)
        # what data-driven criteria calibrate on: shuffled training batches drawn from their
        # own generator, seeded by calibration.seed (default seed + 1, the session's, so a
        # one-shot prune draws the first batches of this seed), at most calibration.samples
        # samples per draw; results.json records what was drawn (calibration_record)
        seed = settings.calibration_seed
        self.calibration_seed = settings.seed + 1 if seed is None else int(seed)
        self.calibration_samples = settings.calibration_samples
        self.calibration_generator = (self.generator if seed is None else
                                      torch.Generator().manual_seed(self.calibration_seed))
        text = data.calibration  # dataset.calibration (data/calibration.py), or the train split
        self.journal = Journal(calibration={
            "source": f"{settings.dataset_name}:train" if text is None else text.name,
            "text": None if text is None else text.source, "seed": self.calibration_seed,
            "samples_limit": self.calibration_samples, "batch_size": settings.batch_size,
            "windows": 0, "seq_len": None, "sha256": None})
        self._calibration_hash = hashlib.sha256()
        self.optimizer: torch.optim.Optimizer | None = None
        self.replay = replay if replay is not None else Replay()
        # fine-tuning loss: None is cross-entropy; distillation sets one (recovery.py)
        self.loss_fn = loss_fn
        self.stale_bn: dict | None = None  # BN statistics from before the last recalibration

    # what schedules read of the records
    @property
    def events(self) -> list[dict]:
        return self.journal.events

    @property
    def phases(self) -> dict[str, dict]:
        return self.journal.phases

    def state_dict(self) -> dict:
        """What the session has done so far, for checkpoints/state.pt."""
        return {"step": self.step, "masks": self.masks.state_dict(),
                **self.journal.state_dict(),
                "gradients": {p: g.state_dict() for p, g in self.gradients.items()}}

    def restore(self, saved: dict, hold_masks: bool = True) -> None:
        """Continue from `saved` (a state_dict): masks, records and gradient telemetry. The
        replay has brought the step and events to the saved point already. `hold_masks`
        as in `finetune`: False keeps the dense weights that masks in the forward pass hide."""
        self.masks.update({n: m.to(self.masks.masks[n].device)
                           for n, m in saved["masks"].items()})
        if hold_masks:
            self.masks.apply()
        self.journal.load_state_dict(saved)
        self.gradients = {}
        for phase, stats in saved["gradients"].items():  # telemetry of the steps so far
            self.gradients[phase] = GradientStats()
            self.gradients[phase].load_state_dict(stats)

    def context(self) -> PruneContext:
        def train_batches():
            if self.data.calibration is not None:  # calibration.samples fresh windows
                return self.recorded(self.calibration_windows())
            drawn = batches(self.data, self.data.train, self.settings.batch_size, shuffle=True,
                            generator=self.calibration_generator)
            return self.recorded(limited(drawn, self.calibration_samples))
        device = self.data.train.y.device
        # model.offload: blocks kept off the device, checkpointed in the run folder
        store = (BlockStore(self.out_dir / "offload", device)
                 if getattr(self.model, "offload", False) else None)
        return PruneContext(train_batches, cross_entropy, device, self.calibration_generator,
                            offload=store)

    def calibration_windows(self):
        """Batches of windows drawn from the dataset's calibration text (dataset.calibration)."""
        samples = self.calibration_samples or DEFAULT_SAMPLES
        windows = self.data.calibration.draw(samples, self.data.input_shape[0],
                                             self.calibration_generator)
        yield from batches(self.data, windows.to(self.data.train.y.device),
                           self.settings.batch_size, shuffle=False)

    def recorded(self, drawn):
        """The calibration batches, counted and hashed (the SHA-256 of the input ids or
        values, in the order drawn) as the criterion takes them."""
        for x, y in drawn:
            self._calibration_hash.update(x.detach().cpu().contiguous().numpy().tobytes())
            record = self.journal.calibration
            record["windows"] += len(x)
            record["seq_len"] = int(x.shape[1]) if self.data.task == "lm" else None
            record["sha256"] = self._calibration_hash.hexdigest()
            yield x, y

    def prune(self, amount: float | None) -> None:
        """Prune to `amount` of prunable weights (None: the selection's threshold)."""
        def choose() -> dict[str, torch.Tensor]:
            self.report = self.selection.prune(self.model, self.masks.weights,
                                               self.masks.masks, self.context(), amount)
            return self.report.masks

        self.change_masks(choose, amount=amount)

    def change_masks(self, choose: Callable[[], dict[str, torch.Tensor]],
                     amount: float | None = None, *, zero_pruned: bool = True,
                     count_masks: bool = False) -> None:
        """The one path of every mask change: `choose()` returns the new masks.

        Replayed (a resumed run before its saved point), the recorded event is taken instead.
        Otherwise: the peak memory of choosing, the masks installed, BatchNorm statistics
        recalibrated (finetune.bn_recalibrate), the optimizer state of pruned weights cleared,
        the time and the event kept. `zero_pruned=False` leaves the weights dense and their
        optimizer state alone, for masks held in the forward pass (DNS); `count_masks` reads
        the event's sparsity off the masks rather than the weights (a regrown weight is
        active although still zero).
        """
        if self.replay.active:
            self.journal.events.append(self.replay.event(len(self.journal.events)))
            return
        start = time.perf_counter()
        with memory.peak(self.data.train.y.device) as used:
            new = choose()
        self.journal.peak_memory(used)
        # every rank scored alike; rank 0's masks and weights (OBS, SparseGPT and L0 change
        # weights too) are the run's, bit for bit
        distributed.broadcast_tensors(list(new.values()))
        distributed.agree_on_model(self.model)
        pruned, recovered = self.masks.update(new)
        if zero_pruned:
            self.masks.apply()
        stale = recovery.after_mask_change(self.model, self.data, self.settings.batch_size,
                                           self.settings.recalibration)
        self.stale_bn = stale if stale is not None else self.stale_bn
        if zero_pruned and self.optimizer is not None:
            self.masks.clear_optimizer_state(self.optimizer)
        self.journal.timing["prune_s"] += time.perf_counter() - start
        sparsity = (mask_sparsity(self.masks.masks) if count_masks else
                    sparsity_report(self.model, self.selection.exclude)["sparsity"])
        self.journal.event(self.step, amount, sparsity, pruned, recovered)

    def finetune(self, epochs: int, on_step: Callable[[int], None] | None = None,
                 phase: str = "finetune", hold_masks: bool = True) -> None:
        """Train the pruned model for `epochs` with masks held (lr scaled by lr_scale).

        `hold_masks=False` leaves weights and gradients unmasked: for schedules that mask in
        the forward pass instead (dynamic network surgery).
        """
        start = time.perf_counter()
        self.optimizer = self.settings.optimizer(self.model, self.settings.lr_scale)
        scheduler = self.settings.lr_scheduler(self.optimizer, epochs)

        def step_hook(step: int) -> None:
            self.step = step
            if on_step is not None:
                on_step(step)

        self.journal.fine_tuning(epochs, epochs * self.steps_per_epoch())
        start_epoch, saved = self.replay.fit_call(epochs)
        for _ in range(start_epoch * self.steps_per_epoch()):  # replayed: on_step only
            step_hook(self.step + 1)
        if start_epoch and saved is None:  # finished before the interruption
            return
        prefix = []
        if saved is not None:  # the interrupted call: continue at its saved epoch
            self.replay.reached(self.journal.events, self.step)
            restore_training(saved, self.model, self.optimizer, scheduler, self.generator)
            self.restore(saved, hold_masks)
            prefix = saved["fit_history"]
        history = prefix + fit(
            self.model, self.data, self.optimizer, scheduler, self.settings.fit(epochs),
            self.generator, phase, self.masks if hold_masks else None, step_hook,
            first_step=self.step, gradients=self.gradients.setdefault(phase, GradientStats()),
            start_epoch=start_epoch,
            on_epoch=self.saver(phase, self.optimizer, scheduler, prefix),
            loss_fn=self.loss_fn)
        self.journal.history.setdefault(phase, []).extend(history)
        self.journal.timing["finetune_s"] += time.perf_counter() - start

    def saver(self, phase: str, optimizer, scheduler,
              prefix: list) -> Callable[[int, list], None] | None:
        """fit's on_epoch: the session and its training state, handed to the replay to save
        (None when nothing is saved: a twin session)."""
        if not self.replay.saving:
            return None

        def save(epoch: int, history: list) -> None:
            self.replay.save({"phase": phase, "epoch": epoch, "fit_history": prefix + history,
                              **self.state_dict(),
                              **training_state(self.model, optimizer, scheduler,
                                               self.generator)})

        return save

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.train, self.settings.batch_size)

    def record(self, phase: str) -> dict:
        """Evaluate on the test split (and under `validation` on the validation split, what
        searches select on), save checkpoints/<phase>.pt, keep the numbers."""
        phases = self.journal.phases
        if self.replay.active:
            phases[phase] = self.replay.phase(phase)
            return phases[phase]
        if phase == "pruned" and self.stale_bn is not None:
            phases[recovery.BEFORE] = recovery.with_statistics(
                self.model, self.stale_bn, lambda: self.evaluate())
            self.stale_bn = None
        metrics = self.evaluate()
        if self.data.val is not None and len(self.data.val):
            metrics["validation"] = evaluate(self.model, self.data, self.data.val)
        phases[phase] = (metrics | macs.count(  # MACs per image or window
            self.model, self.data.input_shape, self.data.input_dtype)
            | self.settings.zero_shot(self.model))  # eval.tasks (lm-evaluation-harness)
        save_checkpoint(self.model, self.out_dir, phase)
        return phases[phase]

    def evaluate(self) -> dict:
        """Test metrics and sparsity of the model as it is."""
        return (evaluate(self.model, self.data, self.data.test)
                | sparsity_report(self.model, self.selection.exclude))


def limited(drawn, samples: int | None):
    """The batches of `drawn`, cut after `samples` samples in all (None: all of them)."""
    left = samples
    for x, y in drawn:
        if left is not None and left <= 0:
            return
        if left is not None and len(x) > left:
            x, y = x[:left], y[:left]
        if left is not None:
            left -= len(x)
        yield x, y


def save_checkpoint(model: nn.Module, out_dir: Path, phase: str) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    files.save_torch(out_dir / "checkpoints" / f"{phase}.pt", state)
