"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes, offline first.

Where the data comes from, in order:
  1. `<root>/<name>-uint8-v1/`: the whole dataset decoded once into uint8 files, opened
     memory-mapped (data/mapped.py);
  2. the files torchvision reads, in its own layout under `root`;
  3. `source_dir` (or, when unset, a system folder such as the one Debian's
     `dataset-fashion-mnist` package installs): the standard .gz IDX files or CIFAR python
     batches, copied into torchvision's layout;
  4. torchvision's download, only with `download=true`.
Whatever was read is saved as (1), so later runs skip the decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from prunebench.config.errors import ConfigError
from prunebench.data import mapped, validate
from prunebench.data.augment import crop_flip
from prunebench.data.batches import Dataset, Split, carve_validation
from prunebench.runstate import files

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class DatasetMissing(ConfigError):
    """The data is nowhere on disk and may not be downloaded; the message says where to get it."""


class LocalCIFAR10(datasets.CIFAR10):
    """CIFAR-10 read from batches already on disk: files must be present, md5 sums are not
    checked (a download is verified by torchvision's own class before this one reads it)."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


@dataclass(frozen=True)
class Source:
    torchvision_class: type
    folder: str  # where torchvision looks for the files, relative to root
    files: tuple[str, ...]  # what must be there
    system_dirs: tuple[str, ...]  # looked in when source_dir is unset
    hint: str  # how to get the files


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SOURCES = {
    "mnist": Source(datasets.MNIST, "MNIST/raw", IDX_FILES, (),
                    "point dataset.source_dir at a folder with the four MNIST .gz IDX files"),
    "fashion_mnist": Source(datasets.FashionMNIST, "FashionMNIST/raw", IDX_FILES,
                            ("/usr/share/datasets/fashion-mnist",),
                            "`apt-get install dataset-fashion-mnist`, or point "
                            "dataset.source_dir at a folder with the four .gz IDX files"),
    "cifar10": Source(datasets.CIFAR10, "cifar-10-batches-py",
                      tuple(n for n, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list)
                      + ("batches.meta",), (),
                      "point dataset.source_dir at cifar-10-python.tar.gz or its "
                      "cifar-10-batches-py folder"),
}


def load(name: str, root: str = "data", source_dir: str | None = None, download: bool = False,
         val_fraction: float = 0.1, split_seed: int = 0, augment: bool = False,
         crop_padding: int = 4) -> Dataset:
    if name not in SOURCES:
        raise ConfigError(f"dataset.name={name} is invalid: allowed {', '.join(SOURCES)}")
    root_path = Path(root).expanduser()
    tensors = cached_tensors(name, root_path, source_dir, download)
    train, test = (Split(tensors[f"{s}_x"], tensors[f"{s}_y"],
                         torch.arange(len(tensors[f"{s}_y"]))) for s in ("train", "test"))
    train, val = carve_validation(train, val_fraction, split_seed)
    mean, std = uint8_channel_stats(train)
    return Dataset(name, train, test, val, tuple(train.x.shape[1:]), len(tensors["classes"]),
                   mean, std, 255.0, crop_flip(crop_padding) if augment else None)


def cached_tensors(name: str, root: Path, source_dir: str | None, download: bool) -> dict:
    """The decoded dataset, memory-mapped (data/mapped.py), decoding it first if needed."""

    def build(into: Path) -> dict:
        tensors = read_torchvision(name, root, source_dir, download)
        shapes = {split: mapped.write_split(into, split, tensors[f"{split}_x"],
                                            tensors[f"{split}_y"]) for split in ("train", "test")}
        log.info("decoded %s into %s (%d train, %d test images)", name, into.name,
                 shapes["train"][0], shapes["test"][0])
        return {"shapes": shapes, "classes": tensors["classes"]}

    return mapped.open_or_build(root / f"{name}-uint8-v{CACHE_VERSION}", build)


def read_torchvision(name: str, root: Path, source_dir: str | None, download: bool) -> dict:
    source = SOURCES[name]
    target = root / source.folder
    looked = [str(target)]
    staged = all((target / f).exists() for f in source.files)
    if not staged or not staged_files_ok(source, target):
        candidates = [source_dir] if source_dir else list(source.system_dirs)
        looked += [str(Path(c).expanduser()) for c in candidates]
        for folder in candidates:
            if stage(source, Path(folder).expanduser(), root, target):
                break
        else:
            if not download:
                raise DatasetMissing(
                    f"{name} not found (looked in {', '.join(looked)}): {source.hint}, "
                    f"or set dataset.download=true when online")
    if download:  # torchvision downloads, checks md5 sums and extracts into `target`
        for train in (True, False):
            source.torchvision_class(str(root), train=train, download=True)
    reader = LocalCIFAR10 if name == "cifar10" else source.torchvision_class
    parts = {split: reader(str(root), train=split == "train") for split in ("train", "test")}
    tensors: dict = {"version": CACHE_VERSION, "classes": list(parts["train"].classes)}
    for split, part in parts.items():
        tensors[f"{split}_x"], tensors[f"{split}_y"] = as_tensors(part.data, part.targets)
    return tensors


def stage(source: Source, folder: Path, root: Path, target: Path) -> bool:
    """Copy (and un-gzip) the files found in `folder` into torchvision's layout."""
    archive = folder / "cifar-10-python.tar.gz"
    if archive.exists():
        validate.check_archive(archive)
        extract_archive(str(archive), str(root))
        return all((target / f).exists() for f in source.files)
    for inner in (folder, folder / source.folder):
        found = {f: first_existing(inner / f, inner / f"{f}.gz") for f in source.files}
        if all(found.values()):
            check_files(source, found)  # a bad source file is named, and never copied
            for f, src in found.items():
                files.copy_file(src, target / f, gunzip=src.suffix == ".gz")
            return True
    return False


def check_files(source: Source, found: dict[str, Path]) -> None:
    if source.files == IDX_FILES:
        validate.check_idx_files(found)
    else:
        for path in found.values():
            validate.check_cifar_batch(path)


def staged_files_ok(source: Source, target: Path) -> bool:
    """Whether the copies in `root` are whole; bad ones (from an older version, or a disk
    error) are removed with a warning, so they are copied again from the sources."""
    found = {f: target / f for f in source.files}
    try:
        check_files(source, found)
        return True
    except validate.BadDataFile as err:
        log.warning("%s; copying the dataset files again", err)
        for path in found.values():
            path.unlink(missing_ok=True)
        return False


def first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def as_tensors(data, targets) -> tuple[Tensor, Tensor]:
    """torchvision keeps MNIST as [N, H, W] uint8 tensors and CIFAR as [N, H, W, C] numpy."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(targets, dtype=torch.long)


def uint8_channel_stats(split: Split, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and std of a split's uint8 images from 256-bin histograms,
    `chunk` images at a time (no float copy, nor a whole copy of a mapped split), in [0, 1]
    units."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    counts = torch.zeros(split.x.shape[1], 256, dtype=torch.float64)
    for start in range(0, len(split), chunk):
        x = split.images(torch.arange(start, min(start + chunk, len(split))))
        for c in range(x.shape[1]):
            counts[c] += torch.bincount(x[:, c].reshape(-1), minlength=256).double()
    n = counts.sum(1)
    means = (counts * values).sum(1) / n
    var = (counts * (values - means[:, None]) ** 2).sum(1) / (n - 1).clamp_min(1)
    return means.float(), var.sqrt().clamp_min(1e-6).float()

