"""The sanity baseline: a random mask with the same per-layer densities as the run's result.

With `baseline.random_same_density=true`, each run also takes its dense weights, keeps in every
layer exactly as many weights as its final model has non-zero (chosen uniformly at random),
and fine-tunes that with the same budget (epochs) the run's fine-tuning got. A criterion is then
credited only for what it beats: the layer-wise allocation alone is worth what this gets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from prunebench import build
from prunebench.data import Dataset
from prunebench.pruning.session import Session
from prunebench.training.loop import headline

log = logging.getLogger(__name__)


def random_same_density(cfg: DictConfig, data: Dataset, dense_state: dict, run: Session,
                        out_dir: Path) -> dict:
    """Evaluate the random twin of `run`; its checkpoints go to out_dir/baseline/."""
    torch.manual_seed(cfg.seed)
    model = build.model(cfg, data).to(data.train.x.device)
    model.load_state_dict(dense_state)
    # the run's strategy only for its layers left dense (strategy.exclude): the twin never scores
    twin = Session(cfg, model, data, run.strategy, out_dir / "baseline")
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    keep_counts = {layer["name"]: layer["nonzero"] for layer in run.phases["final"]["layers"]}
    masks = {}
    for name, mask in twin.masks.masks.items():
        flat = torch.zeros(mask.numel(), dtype=mask.dtype)
        flat[torch.randperm(mask.numel(), generator=generator)[:keep_counts[name]]] = 1
        masks[name] = flat.view_as(mask).to(mask.device)
    twin.masks.update(masks)
    twin.masks.apply()
    twin.record("pruned")
    twin.finetune(run.budget["finetune_epochs"], phase="baseline_finetune")
    final = twin.record("final")
    log.info("random mask with the same layer densities: %s after %d epochs",
             headline(final), run.budget["finetune_epochs"])
    return {"kind": "random_same_density", "pruned": twin.phases["pruned"], "final": final,
            "budget": twin.budget, "timing": twin.timing}
