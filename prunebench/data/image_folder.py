"""Your own images: `dataset=image_folder dataset.path=DIR`, torchvision's ImageFolder layout.

    DIR/train/<class>/*.png|jpg|...      DIR/test/<class>/... (or DIR/val/<class>/...)

Class names are the folder names (sorted, as ImageFolder does); both splits must have the
same. Images are resized to `image_size` and decoded once, by `workers` processes, into a
uint8 cache under `root` that runs open memory-mapped (data/mapped.py: a folder bigger than
memory trains with memory bounded by the batch); the cache's name carries a digest of the
folder's file names, sizes and modification times, so a changed folder is read again. Normalization
comes from the training split. Every problem is one line naming the path.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from prunebench.config.errors import ConfigError
from prunebench.config.values import number
from prunebench.data import mapped
from prunebench.data.augment import crop_flip
from prunebench.data.batches import Dataset, Split, carve_validation
from prunebench.data.vision import uint8_channel_stats

log = logging.getLogger(__name__)
CACHE_VERSION = 1
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load(path: str | None = None, image_size: int = 32, channels: int = 3,
         name: str = "image_folder",
         root: str = "data", val_fraction: float = 0.1, split_seed: int = 0,
         augment: bool = False, crop_padding: int = 4, workers: int | None = None
         ) -> Dataset:
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels} is invalid: allowed 1 (grey), 3 (RGB)")
    if not path:
        raise ConfigError("dataset.path is required: dataset.path=DIR with DIR/train/<class>/ "
                          "and DIR/test/<class>/ image folders")
    folder = Path(path).expanduser()
    splits = {"train": split_folder(folder, "train"), "test": split_folder(folder, "test")}
    listing = {s: list_images(p) for s, p in splits.items()}
    train_classes, test_classes = (sorted(listing[s]) for s in ("train", "test"))
    if train_classes != test_classes:
        odd = sorted(set(train_classes) ^ set(test_classes))[0]
        where = splits["test"] if odd in train_classes else splits["train"]
        raise ConfigError(f"dataset.path: class {odd!r} has no folder in {where} (train and "
                          f"test must have the same class folders)")
    if workers is None:
        workers = mapped.default_workers()
    number("dataset.workers", workers, low=1, integer=True, allowed="an integer >= 1")
    tensors = cached_tensors(folder, listing, image_size, channels, Path(root).expanduser(),
                             workers)
    train, test = (Split(tensors[f"{s}_x"], tensors[f"{s}_y"],
                         torch.arange(len(tensors[f"{s}_y"]))) for s in ("train", "test"))
    train, val = carve_validation(train, val_fraction, split_seed)
    mean, std = uint8_channel_stats(train)
    return Dataset(name, train, test, val, (channels, image_size, image_size),
                   len(train_classes), mean, std, 255.0,
                   crop_flip(crop_padding) if augment else None)


def split_folder(folder: Path, split: str) -> Path:
    if not folder.is_dir():
        raise ConfigError(f"dataset.path={folder}: no such folder")
    names = ("train",) if split == "train" else ("test", "val")
    for candidate in names:
        if (folder / candidate).is_dir():
            return folder / candidate
    raise ConfigError(f"dataset.path={folder}: no {' or '.join(names)}/ folder in it "
                      f"(expected {folder}/train/<class>/... and {folder}/test/<class>/...)")


def list_images(split: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, sorted; an empty class or split is an error."""
    classes = sorted(p for p in split.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"dataset.path: {split} has no class folders")
    listing = {}
    for folder in classes:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not images:
            raise ConfigError(f"dataset.path: {folder} holds no images ({', '.join(EXTENSIONS)})")
        listing[folder.name] = images
    return listing


def digest(listing: dict[str, dict[str, list[Path]]], image_size: int, channels: int) -> str:
    """Changes when a file is added, removed, renamed, resized or rewritten."""
    h = hashlib.sha256(f"{CACHE_VERSION} {image_size} {channels}".encode())
    for split, classes in sorted(listing.items()):
        for name, images in classes.items():
            for p in images:
                st = p.stat()
                h.update(f"{split}/{name}/{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_tensors(folder: Path, listing: dict, image_size: int, channels: int,
                   root: Path, workers: int) -> dict:
    """The decoded folder, memory-mapped (data/mapped.py), decoding it first if needed."""
    cache = root / f"image_folder-{folder.name}-{digest(listing, image_size, channels)}-uint8"

    def build(into: Path) -> dict:
        shapes = {}
        for split, classes in listing.items():
            items = [(str(p), label) for label, paths in enumerate(classes.values())
                     for p in paths]
            shapes[split] = mapped.decode_split(into, split, items,
                                                (channels, image_size, image_size),
                                                decode_one, workers)
        log.info("decoded %s into %s (%d train, %d test images, %d classes, %dx%d, %d "
                 "workers)", folder, cache, shapes["train"][0], shapes["test"][0],
                 len(listing["train"]), image_size, image_size, workers)
        return {"shapes": shapes, "classes": sorted(listing["train"])}

    return mapped.open_or_build(cache, build)


def decode_one(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image as [C, H, W] uint8, resized; an unreadable file is one line naming it."""
    from PIL import Image

    channels, height, width = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize(
                (width, height), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).reshape(height, width, channels
                                                           ).transpose(2, 0, 1)
    except Exception as err:
        raise ConfigError(f"dataset.path: cannot read image {path} ({type(err).__name__})"
                          ) from None
