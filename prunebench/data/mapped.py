"""Uint8 image caches as files on disk, opened memory-mapped: data bigger than memory.

A cache is a folder `<root>/<stem>/` holding, per split, `<split>_x.u8` (the images, raw
[N, C, H, W] uint8) and `<split>_y.npy` (the labels), and `meta.json` (shapes and extras),
written last, so a folder without it is unfinished and is built again. Images are mapped
copy-on-write (numpy.memmap mode "c"): a batch is still one index_select, pages are read
from disk when a batch touches them, and what is resident is page cache the kernel can drop,
not the process's own memory (tests/test_image_cache.py measures it).

One process builds a cache, under the cache's file lock; the others (ranks of a distributed
run, jobs of a sweep) wait on the lock and then map the same files. `build` fills the image
files in parallel worker processes, each writing its rows of the memory-mapped file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from prunebench.console import steps

log = logging.getLogger(__name__)
VERSION = 1
CHUNK = 256  # images per worker task


def open_or_build(folder: Path, build: Callable[[Path], dict]) -> dict:
    """The cache at `folder` as tensors {<split>_x (mapped), <split>_y, **extras}; `build`
    writes it (into the folder it is given) first if it is missing or unfinished."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "meta.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished build: start over
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            meta = build(partial)
            (partial / "meta.json").write_text(json.dumps({"version": VERSION, **meta}))
            partial.rename(folder)
    return load(folder)


def load(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    tensors = {key: value for key, value in meta.items() if key != "shapes"}
    for split, shape in meta["shapes"].items():
        tensors[f"{split}_x"] = mapped(folder / f"{split}_x.u8", tuple(shape))
        tensors[f"{split}_y"] = torch.from_numpy(np.load(folder / f"{split}_y.npy"))
    return tensors


def mapped(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The uint8 file as a tensor backed by its pages (copy-on-write: never written back)."""
    if not shape[0]:
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=shape))


def write_split(folder: Path, split: str, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """Write a split held in memory (datasets decoded by torchvision); returns its shape."""
    out = np.memmap(folder / f"{split}_x.u8", dtype=np.uint8, mode="w+", shape=tuple(x.shape))
    out[:] = x.numpy()
    out.flush()
    del out
    np.save(folder / f"{split}_y.npy", y.numpy().astype(np.int64))
    return list(x.shape)


def decode_split(folder: Path, split: str, items: Sequence[tuple[str, int]],
                 image_shape: tuple[int, int, int], decode_one: Callable, workers: int
                 ) -> list[int]:
    """Decode `items` (path, label) into `<split>_x.u8` with `decode_one(path, shape) ->
    [C, H, W] uint8 array`, in `workers` processes, with a progress bar; returns the shape."""
    shape = (len(items), *image_shape)
    path = folder / f"{split}_x.u8"
    if shape[0]:
        np.memmap(path, dtype=np.uint8, mode="w+", shape=shape).flush()  # sized, zeros
    chunks = [(str(path), shape, start, [p for p, _ in items[start:start + CHUNK]], decode_one)
              for start in range(0, len(items), CHUNK)]
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with steps(f"decoding {split}", len(items)) as advance, \
            ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        for done in as_completed([pool.submit(decode_rows, *chunk) for chunk in chunks]):
            advance(done.result())
    np.save(folder / f"{split}_y.npy", np.array([label for _, label in items], dtype=np.int64))
    return list(shape)


def decode_rows(path: str, shape: tuple[int, ...], start: int, paths: list[str],
                decode_one: Callable) -> int:
    """A worker's task: decode `paths` into rows start.. of the mapped file."""
    out = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    for i, p in enumerate(paths):
        out[start + i] = decode_one(p, shape[1:])
    out.flush()
    return len(paths)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))
