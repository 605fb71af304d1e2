"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it: put it straight back


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for others to read
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def copy_file(src: str | Path, dst: str | Path, *, gunzip: bool = False) -> None:
    """Copy `src` to `dst` atomically, decompressing it when `gunzip`."""
    opener = gzip.open if gunzip else open
    with opener(src, "rb") as source:
        _atomic(Path(dst), lambda f: shutil.copyfileobj(source, f, 1 << 20))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
