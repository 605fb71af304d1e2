"""dataset=image_folder: your own PNGs, decoded once, labelled by folder, errors in one line."""

from __future__ import annotations

import os

import pytest
import torch
from datafiles import write_image_folder

from prunebench.config.errors import ConfigError
from prunebench.data.image_folder import load


def test_folders_are_classes_images_resized_and_cached(tmp_path):
    colours = write_image_folder(tmp_path / "pets", test_name="val")
    data = load(str(tmp_path / "pets"), image_size=4, root=str(tmp_path / "cache"),
                val_fraction=0)
    assert data.input_shape == (3, 4, 4) and data.num_classes == 3
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (18, 3, 4, 4)
    assert data.test.x.shape == (9, 3, 4, 4)
    for label, colour in enumerate(colours[name] for name in sorted(colours)):
        # classes in sorted folder order: cat, dog, owl; a solid colour survives resizing
        images = data.train.x[data.train.y == label]
        assert len(images) == 6 and bool((images == torch.tensor(colour).view(3, 1, 1)).all())
    # normalization from the training split, by hand: each channel is 200 once, 40 twice
    mean = torch.tensor([(200 + 40 + 40) / 3 / 255] * 3)
    assert torch.allclose(data.mean, mean, atol=1e-6)
    cached = list((tmp_path / "cache").glob("image_folder-pets-*-uint8"))
    assert len(cached) == 1
    # a second load reads the cache; a changed folder is read again under a new name
    os.utime(cached[0] / "train_x.u8", (0, 0))
    again = load(str(tmp_path / "pets"), image_size=4, root=str(tmp_path / "cache"))
    assert list((tmp_path / "cache").glob("image_folder-pets-*-uint8")) == cached
    assert (cached[0] / "train_x.u8").stat().st_mtime == 0  # read, not written again
    # the images are the file's pages, mapped (numpy.memmap), not a copy in memory
    assert mapped_from(again.train.x) == str(cached[0] / "train_x.u8")
    assert (cached[0] / "train_x.u8").stat().st_size == 18 * 3 * 4 * 4
    write_image_folder(tmp_path / "pets", n_train=7, test_name="val")
    data = load(str(tmp_path / "pets"), image_size=4, root=str(tmp_path / "cache"),
                val_fraction=0)
    assert len(data.train.y) == 21
    assert len(list((tmp_path / "cache").glob("image_folder-pets-*-uint8"))) == 2


def mapped_from(tensor: torch.Tensor) -> str | None:
    """The file whose mapping (/proc/self/maps) holds the tensor's memory, if any."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        fields = line.split()
        low, high = (int(a, 16) for a in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) > 5 else None
    return None


def _error(path, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        load(str(path), image_size=4, root=str(path.parent / "cache"), **kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_folders_are_one_line_naming_the_path(tmp_path):
    pets = tmp_path / "pets"
    assert f"dataset.path={pets}: no such folder" in _error(pets)
    write_image_folder(pets)
    (pets / "train" / "dog" / "3.png").write_bytes(b"not a png at all")
    assert f"cannot read image {pets / 'train' / 'dog' / '3.png'}" in _error(pets)
    (pets / "train" / "dog" / "3.png").unlink()
    (pets / "test" / "eel").mkdir()
    assert f"{pets / 'test' / 'eel'} holds no images" in _error(pets)
    (pets / "test" / "eel" / "0.png").write_bytes((pets / "test" / "owl" / "0.png").read_bytes())
    assert f"class 'eel' has no folder in {pets / 'train'}" in _error(pets)
    for folder in (pets / "test").iterdir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    assert f"{pets / 'test'} has no class folders" in _error(pets)
    (pets / "test").rmdir()
    assert f"dataset.path={pets}: no test or val/ folder" in _error(pets)
