"""Controls a criterion must beat, each trained next to the run with the same budget.

    baseline.random_same_density  the dense weights with, in every layer, as many weights kept
                                  as the run's final model has non-zero, chosen at random
    baseline.shuffled_mask        the run's own mask permuted at random within each layer
                                  (Frankle et al. 2021's layer-wise shuffle), on the dense
                                  weights, fine-tuned with the run's fine-tuning budget
    baseline.reinit               the run's mask kept, the surviving weights drawn again from
                                  the model's own initializer and trained from scratch (Liu et
                                  al. 2019): Scratch-E trains the run's epochs (dense training
                                  plus fine-tuning) at the full learning rate;
                                  baseline.reinit_budget=matched_flops (Scratch-B) scales that
                                  by dense / pruned effective FLOPs per image

What each control does best is what the layer-wise allocation alone is worth (random,
shuffled) or what the pruned architecture is worth without the trained weights (reinit).
The random twin goes to results.json `baseline` (out_dir/baseline/), the others to
`controls.<kind>` (out_dir/controls/<kind>/).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from prunebench import build
from prunebench.data import Dataset
from prunebench.pruning.session import Session
from prunebench.training.loop import headline

log = logging.getLogger(__name__)
KINDS = ("shuffled_mask", "reinit")
REINIT_BUDGETS = ("epochs", "matched_flops")


def run_all(cfg: DictConfig, data: Dataset, dense_state: dict, run: Session,
            out_dir: Path) -> dict:
    """The controls the config asks for, as results.json entries."""
    out: dict = {}
    if cfg.baseline.random_same_density:
        out["baseline"] = random_same_density(cfg, data, dense_state, run, out_dir)
    controls = {}
    if cfg.baseline.shuffled_mask:
        controls["shuffled_mask"] = shuffled_mask(cfg, data, dense_state, run, out_dir)
    if cfg.baseline.reinit:
        controls["reinit"] = reinit(cfg, data, run, out_dir)
    if controls:
        out["controls"] = controls
    return out


def random_same_density(cfg: DictConfig, data: Dataset, dense_state: dict, run: Session,
                        out_dir: Path) -> dict:
    """The random twin of `run`; its checkpoints go to out_dir/baseline/."""
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    keep_counts = {layer["name"]: layer["nonzero"] for layer in run.phases["final"]["layers"]}
    masks = {}
    for name, mask in run.masks.masks.items():
        flat = torch.zeros(mask.numel(), dtype=mask.dtype)
        flat[torch.randperm(mask.numel(), generator=generator)[:keep_counts[name]]] = 1
        masks[name] = flat.view_as(mask)
    return train_twin("random_same_density", cfg, data, run, dense_state, masks,
                      run.journal.budget["finetune_epochs"], cfg.finetune.lr_scale,
                      out_dir / "baseline")


def shuffle_masks(masks: dict[str, torch.Tensor], generator: torch.Generator
                  ) -> dict[str, torch.Tensor]:
    """Each layer's mask with its entries permuted at random: same count, other positions."""
    return {n: m.flatten()[torch.randperm(m.numel(), generator=generator).to(m.device)]
            .view_as(m).clone() for n, m in masks.items()}


def shuffled_mask(cfg: DictConfig, data: Dataset, dense_state: dict, run: Session,
                  out_dir: Path) -> dict:
    masks = shuffle_masks({n: m.cpu() for n, m in run.masks.masks.items()},
                          torch.Generator().manual_seed(cfg.seed + 3))
    return train_twin("shuffled_mask", cfg, data, run, dense_state, masks,
                      run.journal.budget["finetune_epochs"], cfg.finetune.lr_scale,
                      out_dir / "controls" / "shuffled_mask")


def reinit_state(cfg: DictConfig, data: Dataset) -> dict:
    """Fresh weights from the model's own initializer, on a seed the run did not use."""
    torch.manual_seed(cfg.seed + 4)
    return build.model(cfg, data).state_dict()


def reinit(cfg: DictConfig, data: Dataset, run: Session, out_dir: Path) -> dict:
    epochs = cfg.train.epochs + run.journal.budget["finetune_epochs"]  # Scratch-E: the run's epochs
    budget = cfg.baseline.reinit_budget
    if budget == "matched_flops":  # Scratch-B: as many multiply-accumulates as the run
        final = run.phases["final"]
        epochs = math.ceil(epochs * final["flops"] / max(final["effective_flops"], 1))
    masks = {n: m.cpu() for n, m in run.masks.masks.items()}
    result = train_twin("reinit", cfg, data, run, reinit_state(cfg, data), masks, epochs, 1.0,
                        out_dir / "controls" / "reinit")
    result["reinit_budget"] = budget
    return result


def train_twin(kind: str, cfg: DictConfig, data: Dataset, run: Session, state: dict,
               masks: dict[str, torch.Tensor], epochs: int, lr_scale: float,
               out_dir: Path) -> dict:
    """Load `state`, hold `masks`, train `epochs` at lr * lr_scale, record pruned and final
    (with the run's fine-tuning loss: distillation too, when the run distills)."""
    torch.manual_seed(cfg.seed)
    model = build.model(cfg, data).to(data.train.y.device)
    model.load_state_dict(state)
    twin = Session(build.session_settings(cfg, lr_scale), model, data,
                   run.selection, out_dir, loss_fn=run.loss_fn)  # the run's layers
    twin.change_masks(lambda: {n: m.to(data.train.y.device) for n, m in masks.items()})
    twin.record("pruned")
    twin.finetune(epochs, phase=f"{kind}_train")
    final = twin.record("final")
    log.info("control %s: %s after %d epochs", kind, headline(final), epochs)
    return {"kind": kind, "pruned": twin.phases["pruned"], "final": final,
            "budget": twin.journal.budget, "timing": twin.journal.timing}
