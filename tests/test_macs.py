"""MAC counts against hand computation, torch's own FLOP counter, and the published ResNet-56."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunebench.models.lenet5 import LeNet5
from prunebench.models.mlp import MLP
from prunebench.models.resnet import CifarResNet
from prunebench.models.resnet18 import ResNet18
from prunebench.models.vgg import VGG
from prunebench.pruning import macs


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),  # 2x6x6 -> 4x3x3
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 4x3x3, each output sees 2 channels
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(36, 5),
    )


def test_tiny_net_by_hand():
    model = tiny()
    conv1, conv2, fc = model[0], model[2], model[5]
    counts = macs.layer_macs(model, (2, 6, 6))
    assert counts["0"]["macs"] == (4 * 3 * 3) * (2 * 3 * 3)  # outputs x (in/groups x kernel)
    assert counts["2"]["macs"] == (4 * 3 * 3) * (2 * 3 * 3)
    assert counts["5"]["macs"] == 5 * 36
    assert macs.count(model, (2, 6, 6)) == {"flops": 648 + 648 + 180,
                                             "effective_flops": 648 + 648 + 180}
    with torch.no_grad():  # zero 1/4 of conv1, 1/2 of conv2, 5 of 180 in fc
        conv1.weight.view(-1)[:18] = 0
        conv2.weight.view(-1)[:36] = 0
        fc.weight.view(-1)[:5] = 0
    assert macs.count(model, (2, 6, 6)) == {"flops": 1476,
                                             "effective_flops": 486 + 324 + 175}


def test_counting_leaves_batch_norm_statistics_and_mode_alone():
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs.count(model, (2, 6, 6))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("build, shape", [
    (lambda s: MLP(s, 10, (300, 100)), (1, 28, 28)),
    (lambda s: LeNet5(s, 10), (1, 28, 28)),
    (lambda s: CifarResNet(s, 10, depth=20), (3, 32, 32)),
    (lambda s: VGG(s, 10, depth=11), (3, 32, 32)),
    (lambda s: ResNet18(s, 10), (1, 28, 28)),
])
def test_dense_counts_match_torch_flop_counter(build, shape):
    """torch counts 2 FLOPs per multiply-accumulate of every matmul and convolution."""
    model = build(shape).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    assert macs.count(model, shape)["flops"] * 2 == counter.get_total_flops()


def test_resnet56_matches_published_figure():
    """He et al.'s ResNet-56 on 32x32: 1.25e8 FLOPs (Li et al. 2017), by layer:
    stem 16*32*32*3*9; 54 more 3x3 convs of 2359296 each, less half for the two that
    downsample (53 in all);
    the classifier 64*10."""
    by_hand = 16 * 32 * 32 * 3 * 9 + 53 * 2_359_296 + 64 * 10
    assert macs.count(CifarResNet((3, 32, 32), 10, depth=56), (3, 32, 32))["flops"] == by_hand
    assert round(by_hand / 1e8, 2) == 1.25
