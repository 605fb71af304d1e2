"""Controls (shuffled mask, reinit) and recovery (BN recalibration, distillation) against
references computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_RESNET
from omegaconf import OmegaConf
from scipy import stats as sps
from torch import nn

from prunebench.data.digits import load as load_digits
from prunebench.pruning import controls, recovery
from prunebench.results import stats, table
from prunebench.training.loop import FitSettings, fit


def test_shuffled_masks_keep_layer_counts_and_move_the_weights():
    g = torch.Generator().manual_seed(0)
    masks = {"a": (torch.rand(20, 30, generator=g) > 0.9).float(),
             "b": (torch.rand(8, 4, 3, 3, generator=g) > 0.5).float()}
    shuffled = controls.shuffle_masks(masks, torch.Generator().manual_seed(1))
    for n, m in masks.items():
        assert shuffled[n].shape == m.shape and shuffled[n].sum() == m.sum()
        assert not torch.equal(shuffled[n], m)


def test_controls_recovery_end_to_end(cli):
    results, out = cli([*TINY_RESNET, "train.epochs=1", "strategy.amount=0.8",
                        "baseline.shuffled_mask=true", "baseline.reinit=true",
                        "finetune.distill.alpha=0.5", "finetune.bn_batches=3", "train.threads=1"])
    shuffled, scratch = results["controls"]["shuffled_mask"], results["controls"]["reinit"]
    counts = [(layer["name"], layer["nonzero"]) for layer in results["pruned"]["layers"]]
    dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)
    ours = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    # shuffled: the run's per-layer counts on the dense weights, other positions
    assert [(la["name"], la["nonzero"]) for la in shuffled["pruned"]["layers"]] == counts
    theirs = torch.load(out / "controls" / "shuffled_mask" / "checkpoints" / "pruned.pt",
                        weights_only=True)
    assert shuffled["budget"] == results["budget"]
    for name in ("stem.0.weight", "head.2.weight"):
        kept = theirs[name] != 0
        assert torch.equal(theirs[name][kept], dense[name][kept])
        assert not torch.equal(kept, ours[name] != 0)
    # reinit: the run's mask on weights the model's initializer draws again for its seed
    cfg = OmegaConf.create(results["config"])
    fresh = controls.reinit_state(cfg, load_digits())
    again = torch.load(out / "controls" / "reinit" / "checkpoints" / "pruned.pt",
                       weights_only=True)
    assert scratch["budget"]["finetune_epochs"] == 1 + 1  # Scratch-E: dense + fine-tuning
    for name, w in again.items():
        if name.endswith("weight") and w.dim() > 1:
            mask = ours[name] != 0
            assert torch.equal(w, fresh[name] * mask)
            assert not torch.equal(w[mask], dense[name][mask])
    # BN recalibration: both pruned records, the recalibrated one differing
    before = results["pruned_before_bn_recalibration"]
    assert before["sparsity"] == results["pruned"]["sparsity"]
    assert before["loss"] != results["pruned"]["loss"]
    # the table shows each control as a column pair
    (group,) = stats.group(table.collect(out), baseline=None)
    assert group["shuffled_final_acc_mean"] == pytest.approx(shuffled["final"]["accuracy"])
    assert group["reinit_final_acc_mean"] == pytest.approx(scratch["final"]["accuracy"])
    assert group["pruned_before_bn_acc_mean"] == pytest.approx(before["accuracy"])


def test_control_p_values_are_paired_t_tests_against_the_run():
    base = {"status": "ok", "model": "m", "dataset": "d", "strategy": "s", "target": 0.9}
    runs = [(0, 0.80, 0.70), (1, 0.82, 0.75), (2, 0.79, 0.74)]
    rows = [base | {"seed": s, "final_acc": a, "shuffled_final_acc": b} for s, a, b in runs]
    (group,) = stats.group(rows, baseline=None)
    expected = sps.ttest_rel([a for _, a, _ in runs], [b for _, _, b in runs]).pvalue
    assert group["shuffled_p_mean"] == pytest.approx(expected)
    assert math.isnan(group["reinit_p_mean"])


def test_bn_recalibration_equals_statistics_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    model[1].running_mean.fill_(5.0)  # stale statistics
    xs = [torch.randn(6, 2, 5, 5) * (i + 1) for i in range(4)]
    used = recovery.recalibrate(model, [(x, None) for x in xs], 3)
    assert used == 3
    z = [model[0](x).detach() for x in xs[:3]]  # what the norm sees, batch by batch
    mean = torch.stack([t.mean((0, 2, 3)) for t in z]).mean(0)
    var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in z]).mean(0)
    # relative tolerance: the same sums, accumulated in another order by another thread count
    assert torch.allclose(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    assert model[1].momentum == 0.1  # restored


def test_distillation_loss_equals_the_formula():
    torch.manual_seed(0)
    teacher = nn.Linear(5, 4)
    x, y, student = torch.randn(7, 5), torch.randint(0, 4, (7,)), torch.randn(7, 4)
    alpha, t = 0.7, 3.0
    got = recovery.distill_loss(teacher, alpha, t)(student, x, y)
    p_t = torch.softmax(teacher(x).detach() / t, 1)
    p_s = torch.softmax(student / t, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(student, 1)[torch.arange(7), y].mean()
    assert got.item() == pytest.approx((alpha * t * t * kl + (1 - alpha) * ce).item(), rel=1e-5)


def test_alpha_zero_reproduces_plain_fine_tuning_bit_for_bit():
    assert recovery.teacher_loss(0.0, 4.0, nn.Linear(2, 2)) is None  # no teacher, no forward
    data = load_digits()

    def train(loss_fn):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        loss = loss_fn(model) if loss_fn else None
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        fit(model, data, opt, None, FitSettings(epochs=1, batch_size=64),
            torch.Generator().manual_seed(0), "t", loss_fn=loss)
        return model.state_dict()

    plain = train(None)
    zero = train(lambda m: recovery.distill_loss(build_copy(m), 0.0, 4.0))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    taught = train(lambda m: recovery.distill_loss(build_copy(m), 0.5, 4.0))
    assert not all(torch.equal(plain[k], taught[k]) for k in plain)


def build_copy(model):
    import copy
    return copy.deepcopy(model)

