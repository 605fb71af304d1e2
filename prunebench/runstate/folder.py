"""A run folder belongs to one run: one process at a time, one config for its whole life.

- `Lock`: a file lock (filelock, as the dense cache uses) held on the folder for the whole run;
  a second process into the same folder gets one line naming the folder and the holder.
- `check_owner`: a folder that already holds a run of another config (finished, or unfinished
  with a `checkpoints/state.pt`) is refused unless `resume=false`, before anything is written,
  so a bad or different command never replaces a finished run's results. A config that
  differs only in the keys of the steps after training (AFTER_TRAINING) is the same run:
  those steps run again from its checkpoints.
- `clean_orphans`: temporary files of an atomic write cut short by SIGKILL are removed by the
  next run that holds the lock: only names with prunebench's own prefix
  (`.prunebench-tmp.NAME.*.tmp`, runstate/files.py), never a user's own `.*.tmp`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from prunebench.config.errors import ConfigError
from prunebench.runstate.files import TMP_PREFIX, is_temporary

log = logging.getLogger(__name__)
LOCK_NAME = ".prunebench.lock"
HOLDER_NAME = ".prunebench.holder"
FINISHED = ("ok", "diverged")  # the statuses of a run that needs no resuming
START_OVER = "resume=false runs this command there anyway, or pick a new hydra.run.dir"
# keys of the steps after training (exports, latency, trackers, a sweeper's objective): a
# command that changes only these continues a folder's run from its checkpoints
AFTER_TRAINING = ("export", "inference", "logger", "objective")


class FolderBusy(ConfigError):
    """Another process holds the run folder."""


class Lock:
    """The run folder's lock; `acquire` raises FolderBusy at once if another process has it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.lock = FileLock(str(self.folder / LOCK_NAME), thread_local=False)

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise FolderBusy(f"{self.folder} is in use by another run ({holder(self.folder)}): "
                             f"wait for it, or pick another hydra.run.dir") from None
        (self.folder / HOLDER_NAME).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")

    def release(self) -> None:
        if self.lock.is_locked:
            (self.folder / HOLDER_NAME).unlink(missing_ok=True)
            self.lock.release(force=True)


def holder(folder: Path) -> str:
    try:
        info = json.loads((folder / HOLDER_NAME).read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def clean_orphans(folder: str | Path) -> list[Path]:
    """Remove what an atomic write killed midway left behind (call only holding the lock)."""
    folder = Path(folder)
    orphans = [p for d in (folder, folder / "checkpoints") if d.is_dir()
               for p in d.glob(f"{TMP_PREFIX}*") if is_temporary(p)]
    for path in orphans:  # files, and folders (export.hf writes one whole, then renames it)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if orphans:
        log.info("removed %d temporary file(s) left by an interrupted write in %s",
                 len(orphans), folder)
    return orphans


def recorded_config(folder: Path) -> tuple[str, dict] | None:
    """('finished' | 'unfinished', config) of the run this folder holds, else None.

    A results.json that says ok or diverged is a finished run; a checkpoints/state.pt is an
    unfinished one (its config is compared by runstate.resume when it is loaded).
    """
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        results = None
    if isinstance(results, dict) and results.get("status") in FINISHED:
        config = results.get("config")
        return "finished", dict(config) if isinstance(config, dict) else {}
    return None


def check_owner(folder: str | Path, config: dict, resume) -> None:
    """Refuse a folder holding a finished run of another config (unless resume=false).

    `config` is the command's resolved config without `resume` (resume.comparable).
    """
    if resume is False:
        return
    recorded = recorded_config(Path(folder))
    if recorded is None:
        return
    kind, saved = recorded
    saved, config = training_config(saved), training_config(config)
    if saved != config:
        raise ConfigError(f"{folder} holds a {kind} run of another config "
                          f"({first_difference(saved, config)}): {START_OVER}")


def training_config(config) -> dict:
    """What a run's training depends on: its config without `resume` and AFTER_TRAINING."""
    if not isinstance(config, dict):
        return {}
    return {k: v for k, v in config.items() if k not in ("resume", *AFTER_TRAINING)}


def first_difference(a, b, key: str = "") -> str:
    """The first key (dotted) where the folder's config `a` and the command's `b` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    return f"{key}: {a!r} there, {b!r} in the command"
