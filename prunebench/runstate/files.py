"""Atomic file writes: write to a temporary name in the same folder, then rename.

The temporary names start with TMP_PREFIX, which nothing but prunebench uses, so the cleanup of
what a killed write left behind (runstate/folder.py) never touches a user's own files.
In a run of several ranks only rank 0 writes (the others skip every write silently).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prunebench.ranks import env_rank

TMP_PREFIX = ".prunebench-tmp."  # + the target's name + mkstemp's random part + ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it: put it straight back


def temporary(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file beside `path`, named as only prunebench names them."""
    return tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of our temporary files (a user's `.notes.tmp` is not)."""
    return path.name.startswith(TMP_PREFIX) and path.name.endswith(".tmp")


def safe_name(text: object, limit: int = 80) -> str:
    """`text` (a name read from data: a model's or dataset's name in a results.json) as one
    file-name part that cannot leave its folder: letters, digits and `_.+-` only, no leading
    dot, at most `limit` characters. A name that had to change ends with 8 hex digits of the
    original's SHA-256, so two different names never share a file."""
    text = str(text)
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).lstrip(".")[:limit] or "_"
    if name == text:
        return name
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def inside(folder: str | Path, name: str) -> Path:
    """folder/name, refused (ValueError) if it would resolve outside `folder`."""
    folder = Path(folder)
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"{name!r} is not a file name inside {folder}")
    return path


def _atomic(path: Path, write, any_rank: bool = False) -> None:
    if not (any_rank or env_rank() == 0):  # rank 0 writes a distributed run's files
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary(path)
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


def write_text(path: str | Path, text: str, any_rank: bool = False) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()), any_rank)


def write_json(path: str | Path, obj: Any, any_rank: bool = False) -> None:
    """`any_rank`: written by whichever rank calls (a failing rank's own report)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n", any_rank)


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """rows as CSV, the first row's keys as the header (the benchmark tables of scripts/)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def save_torch(path: str | Path, obj: Any) -> None:
    import torch  # here, so that runstate/folder.py can use this module without torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


def copy_file(src: str | Path, dst: str | Path, *, gunzip: bool = False) -> None:
    """Copy `src` to `dst` atomically, decompressing it when `gunzip`."""
    opener = gzip.open if gunzip else open
    with opener(src, "rb") as source:
        _atomic(Path(dst), lambda f: shutil.copyfileobj(source, f, 1 << 20))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
