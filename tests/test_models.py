"""Every model on every image dataset through the real CLI, on generated files in torchvision's
formats; parameter counts of the published architectures; every model config composes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from datafiles import write_cifar, write_idx
from helpers import composed, run_cli
from hydra.utils import instantiate

from prunebench import build
from prunebench.cli import available
from prunebench.data import Split, batches
from prunebench.pruning import macs
from prunebench.training.loop import FitSettings, evaluate, fit

FAMILIES = ["mlp", "lenet300", "lenet5", "resnet", "resnet18", "vgg", "vit"]
IMAGE_DATASETS = ["mnist", "fashion_mnist", "cifar10", "digits", "synthetic"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny MNIST, Fashion-MNIST and CIFAR-10 where torchvision keeps them under a root
    (the .gz files in a source_dir are covered by test_data.py)."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST/raw", "FashionMNIST/raw"):
        write_idx(root / folder, n_train=8, n_test=4, gz=False)
    write_cifar(root, n_train=8, n_test=4)
    return root


@pytest.mark.parametrize("dataset", IMAGE_DATASETS)
@pytest.mark.parametrize("model", FAMILIES)
def test_every_model_trains_on_every_image_dataset(model, dataset, data_root, monkeypatch):
    """The configs as users compose them, the real loaders, one training step, evaluation and
    MAC counts: input shape and classes come from the dataset. (In-process: VGG-16 and
    ResNet-18 cost seconds per step on 2 shared cores; the full CLI pipeline is below.)"""
    monkeypatch.setenv("PRUNEBENCH_DATA", str(data_root))
    cfg = composed([f"model={model}", f"dataset={dataset}"])
    data = build.dataset(cfg)
    # one step on 8 images (the generated files hold 8; digits and synthetic are cut to 8)
    data = replace(data, train=Split(data.train.x[:8], data.train.y[:8]),
                   test=Split(data.test.x[:4], data.test.y[:4]))
    net = build.model(cfg, data)
    before = [p.detach().clone() for p in net.parameters()]
    history = fit(net, data, build.optimizer(cfg, net), None,
                  FitSettings(epochs=1, batch_size=8),
                  torch.Generator().manual_seed(0), "test")
    assert np.isfinite(history[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    with torch.no_grad():  # the test batches as the model sees them (scaled from storage)
        x, y = next(batches(data, data.test, len(data.test), shuffle=False))
        correct = (net.eval()(x).argmax(1) == y).double().mean().item()
    assert evaluate(net, data, data.test)["accuracy"] == pytest.approx(correct)
    assert macs.count(net, data.input_shape)["flops"] > 0


def test_cli_prunes_models_on_torchvision_datasets(tmp_path, data_root):
    """The whole pipeline (train, prune, fine-tune, record) for the light families."""
    sweep = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={sweep}", "cache.enabled=false", "model=lenet5,resnet",
             "dataset=mnist,fashion_mnist,cifar10", "train.epochs=1", "finetune.epochs=1",
             "train.batch_size=8", "strategy.amount=0.5", "dataset.val_fraction=0"],
            cwd=tmp_path, env={"PRUNEBENCH_DATA": str(data_root)})
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(runs) == 6
    for run in runs:
        label = f"{run['config']['model']['name']} on {run['config']['dataset']['name']}"
        assert run["status"] == "ok", label
        for phase in ("dense", "pruned", "final"):
            assert 0 <= run[phase]["accuracy"] <= 1, label
        # half the weights gone: effective MACs fall, dense MACs do not
        assert run["final"]["flops"] == run["dense"]["flops"], label
        assert run["final"]["effective_flops"] < run["dense"]["effective_flops"], label


PUBLISHED_PARAMS = [  # (model config, overrides, input shape, parameters in the papers)
    ("lenet300", [], (1, 28, 28), 266_610),  # Han et al. 2015: 267K
    ("lenet5", [], (1, 28, 28), 431_080),  # Han et al. 2015: 431K
    ("resnet", [], (3, 32, 32), 269_722),  # He et al. 2016: 0.27M
    ("resnet56", [], (3, 32, 32), 853_018),  # He et al. 2016: 0.85M
    # 6n+2 by hand, n=18: stem 432+32, stage 1 18*4672, stage 2 13952+17*18560,
    # stage 3 55552+17*73984, fc 650
    ("resnet", ["model.depth=110"], (3, 32, 32), 1_727_962),  # He et al. 2016: 1.7M
    ("vgg16", [], (3, 32, 32), 14_724_042),  # Li et al. 2017: 1.5e7
    ("resnet18", [], (3, 32, 32), 11_173_962),  # torchvision's 11.69M less the 7x7 stem
]


@pytest.mark.parametrize("config, overrides, shape, params", PUBLISHED_PARAMS)
def test_parameter_counts_match_the_papers(config, overrides, shape, params):
    cfg = composed([f"model={config}", *overrides])
    model = instantiate(cfg.model, input_shape=shape, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("config", [m for m in available("model")
                                    if m not in ("gpt", "hf")])  # LMs: test_language_models
def test_every_model_config_builds_on_8x8_and_32x32(config):
    cfg = composed([f"model={config}"])
    for shape in ((1, 8, 8), (3, 32, 32)):
        model = instantiate(cfg.model, input_shape=shape, num_classes=7)
        assert model(torch.zeros(2, *shape)).shape == (2, 7)
