"""Tiny datasets written in torchvision's real file formats, so the loading code runs offline.

IDX (.gz) as MNIST and Fashion-MNIST ship them, and CIFAR-10's python pickle batches. Images
are random but labelled by a class-dependent brightness, so a model can learn something.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {"train": "train", "test": "t10k"}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    noise = rng.integers(0, 100, (n, *shape))
    x = (noise + labels.reshape(-1, *([1] * len(shape))) * 15).astype(np.uint8)
    return x, labels


def write_idx(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True) -> dict:
    """The four IDX files (.gz as distributed, or as torchvision keeps them unpacked);
    returns the arrays written, keyed like the cache file."""
    opener, suffix = (gzip.open, ".gz") if gz else (open, "")
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x, y = images(n, (28, 28), seed)
        prefix = IDX_NAMES[split]
        with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + y.tobytes())
        written[f"{split}_x"], written[f"{split}_y"] = x[:, None], y
    return written


def write_cifar(folder: Path, n_train: int = 64, n_test: int = 32) -> dict:
    """cifar-10-batches-py/: five training batches, the test batch and batches.meta."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    x, y = images(n_train + n_test, (3, 32, 32), 3)
    parts = np.array_split(np.arange(n_train), 5) + [np.arange(n_train, n_train + n_test)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, idx in zip(names, parts, strict=True):
        entry = {"batch_label": name, "labels": y[idx].tolist(),
                 "data": x[idx].reshape(len(idx), -1), "filenames": [f"{i}.png" for i in idx]}
        (batches / name).write_bytes(pickle.dumps(entry, protocol=2))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return {"train_x": x[:n_train], "train_y": y[:n_train],
            "test_x": x[n_train:], "test_y": y[n_train:]}


IMAGE_COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def write_image_folder(folder: Path, n_train: int = 6, n_test: int = 3,
                       test_name: str = "test") -> dict[str, tuple[int, int, int]]:
    """DIR/train/<class>/*.png and DIR/<test_name>/<class>/*.png: solid colours per class (a
    resize keeps them exact), images 12x10 (not square, not the target size)."""
    from PIL import Image

    for split, n in (("train", n_train), (test_name, n_test)):
        for name, colour in IMAGE_COLOURS.items():
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (12, 10), colour).save(folder / split / name / f"{i}.png")
    return IMAGE_COLOURS
