"""Dataset loading from torchvision's real file formats (generated), cache, splits, augmentation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datafiles import write_cifar, write_idx
from helpers import run_cli

from prunebench.data import Split, vision
from prunebench.data.augment import crop_flip


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_load_then_come_from_the_cache(tmp_path, name):
    written = write_idx(tmp_path / "src")
    root = tmp_path / "root"
    data = vision.load(name, root=str(root), source_dir=str(tmp_path / "src"), val_fraction=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    for split in ("train", "test"):
        part = getattr(data, split)
        assert part.x.dtype == torch.uint8
        np.testing.assert_array_equal(part.x.numpy(), written[f"{split}_x"])
        np.testing.assert_array_equal(part.y.numpy(), written[f"{split}_y"])
    # with the sources gone, the decoded tensor file alone serves the next run
    shutil.rmtree(tmp_path / "src")
    shutil.rmtree(root / vision.SOURCES[name].folder)
    again = vision.load(name, root=str(root), source_dir=str(tmp_path / "src"), val_fraction=0)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)


def test_cifar_batches_load_with_augmentation(tmp_path):
    written = write_cifar(tmp_path / "src")
    data = vision.load("cifar10", root=str(tmp_path / "root"), source_dir=str(tmp_path / "src"),
                       val_fraction=0, augment=True)
    assert data.input_shape == (3, 32, 32)
    # each augmented image is the original shifted by up to 4 pixels in the zero-padded frame,
    # mirrored or not (found by trying every shift and flip), and the draws follow the seed
    x = data.train.x[:12].float() - 128
    out = data.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, data.augment(x, torch.Generator().manual_seed(0)))
    padded = F.pad(x, (4, 4, 4, 4))
    moves = []
    for i in range(len(x)):
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.equal(out[i], (padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1) if flip
                                         else padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert found, f"image {i} is no shift or flip of its original"
        moves.append(found[0])
    assert len(set(moves)) > 1  # not one fixed transform
    np.testing.assert_array_equal(data.train.x.numpy(), written["train_x"])
    np.testing.assert_array_equal(data.test.y.numpy(), written["test_y"])


def test_validation_is_carved_from_train_and_seeded(tmp_path):
    write_idx(tmp_path / "src")
    kwargs = dict(root=str(tmp_path / "root"), source_dir=str(tmp_path / "src"))
    full = vision.load("mnist", val_fraction=0, **kwargs)
    carved = vision.load("mnist", val_fraction=0.25, split_seed=3, **kwargs)
    assert (len(carved.train), len(carved.val)) == (48, 16)
    # carved by rows of the one mapped file: nothing copied, every image in exactly one part
    assert carved.train.x.data_ptr() == carved.val.x.data_ptr()
    union = torch.cat([carved.train.resident(), carved.val.resident()]).flatten(1)
    assert sorted(map(bytes, union.numpy())) == sorted(map(bytes, full.train.x.flatten(1).numpy()))
    assert sorted(torch.cat([carved.train.rows, carved.val.rows]).tolist()) == list(range(64))
    again = vision.load("mnist", val_fraction=0.25, split_seed=3, **kwargs)
    assert torch.equal(again.val.resident(), carved.val.resident())


def test_channel_stats_match_float_reference():
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    rows = torch.randperm(50)[:37]  # a carved part of a mapped file, read 7 images at a time
    for split, part in ((Split(x, torch.zeros(50)), x), (Split(x, torch.zeros(37), rows), x[rows])):
        mean, std = vision.uint8_channel_stats(split, chunk=7)
        ref = part.double().div(255).transpose(0, 1).reshape(3, -1)
        torch.testing.assert_close(mean.double(), ref.mean(1), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(std.double(), ref.std(1), rtol=1e-6, atol=1e-7)


def test_crop_flip_matches_per_image_reference():
    x = torch.randn(16, 3, 8, 8)
    out = crop_flip(2)(x, torch.Generator().manual_seed(5))
    # replay the same draws and build each image by slicing
    g = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 5, (16, 1), generator=g)
    dx = torch.randint(0, 5, (16, 1), generator=g)
    flip = torch.rand((16, 1), generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        torch.testing.assert_close(out[i], ref.flip(2) if flip[i] else ref)
    assert flip.any() and not flip.all()


def test_missing_data_is_one_line(tmp_path):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", "dataset=fashion_mnist",
                    f"dataset.root={tmp_path / 'empty'}", f"dataset.source_dir={tmp_path / 'no'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "fashion_mnist not found" in lines[0] and str(tmp_path / "no") in lines[0]
    assert "dataset.download=true" in lines[0]
