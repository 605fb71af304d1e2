"""Before any work: the output and cache folders must be writable and not full.

A Hydra callback (registered in conf/config.yaml) checks them when a run or sweep starts, so a
read-only or full disk is one clear line and a non-zero exit, not an error after training.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# a run writes a few checkpoints; less free space than this means the disk is (nearly) full
MIN_FREE_BYTES = 64 * 2**20


def problem(folder: Path) -> str | None:
    """Why `folder` cannot take a run's files, or None if it can (creates it if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(folder).free
    except OSError as err:
        return f"cannot write to {folder}: {err.strerror or err}"
    if free < MIN_FREE_BYTES:
        return f"{folder} has only {free / 2**20:.1f} MiB free (a run needs at least " \
               f"{MIN_FREE_BYTES // 2**20} MiB)"
    return None


def check(config: DictConfig, output_key: str) -> None:
    folders = [Path(str(OmegaConf.select(config, output_key)))]
    if OmegaConf.select(config, "cache.enabled", default=False):
        folders.append(Path(str(config.cache.dir)))
    for folder in folders:
        message = problem(folder)
        if message:
            sys.exit(f"prunebench: error: {message}")


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(config, "hydra.sweep.dir")
