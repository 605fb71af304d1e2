"""Dense checkpoints cached by what determines them, so a sweep trains each dense model once.

The key hashes the model, dataset, optimizer and training settings, the seed and the device
type. A file lock serializes jobs racing on one entry: the first trains and saves (atomically),
the others wait and then load. An entry is loaded only if its bytes match the SHA-256 written
next to it; a truncated, corrupt or unverified file is rebuilt with a warning, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from io import BytesIO
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from prunebench import distributed
from prunebench.runstate import files
from prunebench.schedules.iterative import rewind_epoch

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: fused optimizer kernels by default (same update, other rounding)
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
    if cfg.get("deterministic"):  # other kernels, other rounding (off: the keys stay as they were)
        identity["deterministic"] = True
    if rewind_epoch(cfg):  # only such entries hold the epoch-k snapshot
        identity["rewind_epoch"] = rewind_epoch(cfg)
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def load_or_train(directory: str | Path, entry_key: str,
                  train: Callable[[], dict]) -> tuple[dict, bool]:
    """Return (entry, hit). `train()` builds the entry dict (state_dict and metadata).

    In a run of several ranks, rank 0 holds the lock and decides hit or miss for all; on a
    miss every rank trains (DDP) and rank 0 saves, so no rank waits on a lock its peers need.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dense-{entry_key}.pt"
    digest_path = path.with_suffix(".sha256")
    main = distributed.is_main()
    with FileLock(str(path) + ".lock") if main else nullcontext():
        entry = load_usable(path, digest_path) if main else None
        if distributed.broadcast_object(entry is not None):
            return (entry if main else load_verified(path, digest_path)), True
        entry = train()
        if main:
            files.save_torch(path, entry)
            # written second: an entry without its digest (a crash in between) is rebuilt
            files.write_text(digest_path, hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
        return entry, False


def load_usable(path: Path, digest_path: Path) -> dict | None:
    """The entry at `path`, or None when there is none or it is truncated or corrupt (then
    it is rebuilt, never trusted)."""
    if not path.exists():
        return None
    try:
        return load_verified(path, digest_path)
    except Exception as err:
        log.warning("dense cache %s is unusable (%s); retraining", path,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        path.unlink()
        return None


def load_verified(path: Path, digest_path: Path) -> dict:
    """Load an entry whose bytes match the digest written with it.

    torch.load does not check the zip's CRCs, so flipped or zeroed bytes inside a tensor load
    silently as wrong weights; the digest catches those as well as truncation.
    """
    blob = path.read_bytes()
    if not digest_path.exists():
        raise ValueError("no checksum file next to it")
    if hashlib.sha256(blob).hexdigest() != digest_path.read_text().strip():
        raise ValueError(f"checksum mismatch ({len(blob)} bytes)")
    return torch.load(BytesIO(blob), map_location="cpu", weights_only=True)
