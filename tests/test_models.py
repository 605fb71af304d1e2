"""Every model on every image dataset through the real CLI, on generated files in torchvision's
formats; parameter counts of the published architectures; every model config composes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from datafiles import write_cifar, write_idx
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from prunebench.cli import available

FAMILIES = ["mlp", "lenet300", "lenet5", "resnet", "resnet18", "vgg"]
# one batch per epoch: VGG-16 and ResNet-18 cost seconds per step on 2 shared CPU cores
TINY = ["train.epochs=1", "finetune.epochs=1", "train.batch_size=8", "strategy.amount=0.5",
        "dataset.val_fraction=0"]


def sweep_ok(tmp_path, name: str, args: list[str], env: dict | None = None) -> list[dict]:
    sweep = tmp_path / name
    run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}",
             f"model={','.join(FAMILIES)}", *TINY, *args], cwd=tmp_path, env=env)
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    for run in runs:
        label = f"{run['config']['model']['name']} on {run['config']['dataset']['name']}"
        assert run["status"] == "ok", label
        for phase in ("dense", "pruned", "final"):
            assert 0 <= run[phase]["accuracy"] <= 1, label
            assert run[phase]["flops"] > 0, label
        # half the weights gone: effective MACs fall, dense MACs do not
        assert run["final"]["flops"] == run["dense"]["flops"], label
        assert run["final"]["effective_flops"] < run["dense"]["effective_flops"], label
    return runs


def test_every_model_on_torchvision_datasets(tmp_path):
    # the files where torchvision keeps them under dataset.root (source_dir: test_data.py)
    root = tmp_path / "data"
    for folder in ("MNIST/raw", "FashionMNIST/raw"):
        write_idx(root / folder, n_train=8, n_test=4, gz=False)
    write_cifar(root, n_train=8, n_test=4)
    runs = sweep_ok(tmp_path, "vision", ["dataset=mnist,fashion_mnist,cifar10"],
                    env={"PRUNEBENCH_DATA": str(root)})
    assert len(runs) == 3 * len(FAMILIES)
    seen = {(r["config"]["model"]["_target_"], r["config"]["dataset"]["name"]) for r in runs}
    assert len(seen) == len(runs)


def test_every_model_on_small_images(tmp_path):
    runs = sweep_ok(tmp_path, "small", ["dataset=digits,synthetic"])
    assert len(runs) == 2 * len(FAMILIES)


PUBLISHED_PARAMS = [  # (model config, overrides, input shape, parameters in the papers)
    ("lenet300", [], (1, 28, 28), 266_610),  # Han et al. 2015: 267K
    ("lenet5", [], (1, 28, 28), 431_080),  # Han et al. 2015: 431K
    ("resnet", [], (3, 32, 32), 269_722),  # He et al. 2016: 0.27M
    ("resnet56", [], (3, 32, 32), 853_018),  # He et al. 2016: 0.85M
    ("resnet", ["model.depth=110"], (3, 32, 32), 1_730_714),  # He et al. 2016: 1.7M
    ("vgg16", [], (3, 32, 32), 14_724_042),  # Li et al. 2017: 1.5e7
    ("resnet18", [], (3, 32, 32), 11_173_962),  # torchvision's 11.69M less the 7x7 stem
]


@pytest.mark.parametrize("config, overrides, shape, params", PUBLISHED_PARAMS)
def test_parameter_counts_match_the_papers(config, overrides, shape, params):
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        cfg = compose("config", [f"model={config}", *overrides])
    model = instantiate(cfg.model, input_shape=shape, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("config", available("model"))
def test_every_model_config_builds_on_8x8_and_32x32(config):
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        cfg = compose("config", [f"model={config}"])
    for shape in ((1, 8, 8), (3, 32, 32)):
        model = instantiate(cfg.model, input_shape=shape, num_classes=7)
        assert model(torch.zeros(2, *shape)).shape == (2, 7)
