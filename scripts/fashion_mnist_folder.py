"""Write a slice of Fashion-MNIST as an ImageFolder tree of PNGs, to try dataset=image_folder.

    python scripts/fashion_mnist_folder.py OUT [--train-per-class 200] [--test-per-class 50]
        [--source /usr/share/datasets/fashion-mnist]

OUT/train/<class>/<i>.png and OUT/test/<class>/<i>.png, the first images of each class in the
official train and test files (the four .gz IDX files, e.g. from Debian's
dataset-fashion-mnist package).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    for split, prefix, per_class in (("train", "train", args.train_per_class),
                                     ("test", "t10k", args.test_per_class)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(CLASSES):
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
                Image.fromarray(images[index]).save(folder / f"{i}.png")
    print(f"wrote {args.out}: {args.train_per_class} train and {args.test_per_class} test "
          f"images per class, {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
