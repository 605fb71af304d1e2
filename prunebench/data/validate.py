"""Data files checked before they are copied or decoded, so a bad one is named, never kept.

IDX (MNIST, Fashion-MNIST), gzipped or not: the magic number (0x801 labels, 0x803 images), the
item count and sizes in the header against the bytes that follow, a gzip stream that opens and
ends where it should, and images and labels of a split that agree in count. CIFAR-10: the
archive opens and lists its members; each python batch unpickles to data and labels of equal
length.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

from prunebench.config.errors import ConfigError

MAGIC = {"labels": 0x801, "images": 0x803}


class BadDataFile(ConfigError):
    """A data file that is corrupt, truncated or not what its name says; names the file."""


def _read_all(f, chunk: int = 1 << 20) -> int:
    total = 0
    while block := f.read(chunk):
        total += len(block)
    return total


def idx_header(path: Path) -> tuple[int, tuple[int, ...]]:
    """(magic, dims) of an IDX file, after checking that exactly prod(dims) bytes follow."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise BadDataFile(f"{path}: empty or truncated (no IDX header)")
            magic = struct.unpack(">I", head)[0]
            ndim = head[3]
            if head[:2] != b"\0\0" or head[2] != 0x08 or not 1 <= ndim <= 4:
                raise BadDataFile(f"{path}: not an IDX file of bytes (magic number "
                                  f"0x{magic:08x})")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise BadDataFile(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw)
            size = _read_all(f)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as err:
        what = "corrupt or truncated gzip" if opener is gzip.open else "unreadable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadDataFile(f"{path}: {what} ({reason})") from None
    if size != math.prod(dims):
        raise BadDataFile(f"{path}: header says {' x '.join(map(str, dims))} = "
                          f"{math.prod(dims)} bytes, the file holds {size} (truncated or corrupt)")
    return magic, dims


def check_idx_pair(images: Path, labels: Path) -> None:
    """An images file and its labels file: right kinds, and as many labels as images."""
    found = {}
    for kind, path in (("images", images), ("labels", labels)):
        magic, dims = idx_header(path)
        if magic != MAGIC[kind]:
            raise BadDataFile(f"{path}: magic number 0x{magic:08x} is not that of IDX {kind} "
                              f"(0x{MAGIC[kind]:08x})")
        found[kind] = dims
    if found["images"][0] != found["labels"][0]:
        raise BadDataFile(f"{labels}: {found['labels'][0]} labels for {found['images'][0]} "
                          f"images in {images.name}")


def check_idx_files(found: dict[str, Path]) -> None:
    """`found` maps IDX names (train-images-idx3-ubyte, ...) to the files standing for them."""
    for prefix in ("train", "t10k"):
        check_idx_pair(found[f"{prefix}-images-idx3-ubyte"], found[f"{prefix}-labels-idx1-ubyte"])


def check_archive(path: Path) -> None:
    try:
        with tarfile.open(path) as tar:
            tar.getmembers()  # reads the whole archive: truncation and bad blocks show here
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise BadDataFile(f"{path}: corrupt or truncated archive "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                          ) from None


def check_cifar_batch(path: Path) -> None:
    if path.name == "batches.meta":
        return
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        n = len(entry["data"])
        ok = n == len(entry.get("labels", entry.get("fine_labels", [])))
    except Exception as err:  # unpicklable, truncated, not a dict
        raise BadDataFile(f"{path}: not a CIFAR python batch ({type(err).__name__})") from None
    if not ok:
        raise BadDataFile(f"{path}: data and labels differ in length")
