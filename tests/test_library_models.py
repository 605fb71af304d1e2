"""Architectures by name from torchvision and timm, adapted to the dataset and pruned."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.models.library import timm_model, torchvision_model

SMALL = ["dataset=synthetic", "dataset.train_size=64", "dataset.test_size=32",
         "train.epochs=1", "finetune.epochs=1", "train.batch_size=32"]


def prunable_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))


@pytest.mark.parametrize("library,arch,said", [
    ("torchvision", "shufflenet_v2_x0_5", "first convolution conv1.0 rebuilt for 1 input channel"),
    ("timm", "test_resnet", "created with num_classes=4, in_chans=1"),
])
def test_library_model_prunes_on_generated_images(cli, library, arch, said):
    results, out = cli([f"model={library}", f"model.arch={arch}", *SMALL,
                        "strategy.amount=0.8", "cache.enabled=false"], fast=False)
    # synthetic: 1 channel, 8x8, 4 classes; the reference is built here by the library itself
    if library == "torchvision":
        import torchvision

        reference = torchvision.models.get_model(arch, num_classes=4)
        reference.conv1[0] = nn.Conv2d(1, 24, 3, 2, 1, bias=False)
    else:
        import timm

        reference = timm.create_model(arch, num_classes=4, in_chans=1)
    expected = prunable_count(reference)
    assert results["status"] == "ok" and results["config"]["model"]["name"] == arch
    assert results["dense"]["params"] == expected
    assert results["final"]["nonzero"] == expected - round(0.8 * expected)
    assert said in (out / "cli.log").read_text()  # adaptations are said, never silent


def test_torchvision_adapts_and_says_so(caplog):
    with caplog.at_level(logging.INFO):
        model = torchvision_model((1, 8, 8), 4, "mobilenet_v3_small")
    assert model.features[0][0].in_channels == 1 and model.classifier[-1].out_features == 4
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert "rebuilt for 1 input channel(s) instead of 3" in caplog.text
    assert "4-class classifier" in caplog.text


def test_unknown_names_are_one_line():
    with pytest.raises(ConfigError, match="model.arch=resnet7 is not a torchvision"):
        torchvision_model((3, 8, 8), 4, "resnet7")
    with pytest.raises(ConfigError, match="model.weights=IMAGENET9 is not one of resnet18's"):
        torchvision_model((3, 8, 8), 4, "resnet18", weights="IMAGENET9")
    with pytest.raises(ConfigError, match="model.arch=resnet7 is not a timm model"):
        timm_model((3, 8, 8), 4, "resnet7")


def test_pretrained_weights_offline_say_how_to_use_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing downloaded before
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE when first imported, which an earlier test may have
    # done; without this it retries the refused proxy for ~45 s before the same error
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # refused at once: no network
    with pytest.raises(ConfigError) as err:
        torchvision_model((3, 8, 8), 4, "resnet18", weights="DEFAULT")
    assert "\n" not in str(err.value) and "could not be downloaded" in str(err.value)
    assert "dense.checkpoint=PATH" in str(err.value)
    with pytest.raises(ConfigError) as err:
        timm_model((3, 8, 8), 4, "resnet18", pretrained=True)
    assert "\n" not in str(err.value) and "dense.checkpoint=PATH" in str(err.value)


def test_timm_vit_on_small_images():
    model = timm_model((1, 8, 8), 4, "test_vit", options={"img_size": 8, "patch_size": 4})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
