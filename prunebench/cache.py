"""Dense checkpoints cached by what determines them, so a sweep trains each dense model once.

The key hashes the model, dataset, optimizer and training settings, the seed and the device
type. A file lock serializes jobs racing on one entry: the first trains and saves (atomically),
the others wait and then load. A file that fails to load is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from prunebench import io

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# settings that do not change the trained weights
_IGNORED_TRAIN_KEYS = ("threads",)


def key(cfg: DictConfig, device: torch.device) -> str:
    train = OmegaConf.to_container(cfg.train, resolve=True)
    for k in _IGNORED_TRAIN_KEYS:
        train.pop(k, None)
    identity = {
        "version": CACHE_VERSION,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "train": train,
        "seed": cfg.seed,
        "device": device.type,
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def load_or_train(directory: str | Path, entry_key: str,
                  train: Callable[[], dict]) -> tuple[dict, bool]:
    """Return (entry, hit). `train()` builds the entry dict (state_dict and metadata)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dense-{entry_key}.pt"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True), True
            except Exception as err:  # truncated or corrupt: rebuild, never trust it
                log.warning("dense cache %s is unreadable (%s); retraining", path,
                            str(err).splitlines()[0] if str(err) else type(err).__name__)
                path.unlink()
        entry = train()
        io.save_torch(path, entry)
        return entry, False
