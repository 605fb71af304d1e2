"""Training dynamics: L1 proximal zeros, clipping, gradient telemetry vs a hand-written loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunebench.data import batches
from prunebench.data.synthetic import load
from prunebench.training.loop import FitSettings, fit, soft_threshold
from prunebench.training.telemetry import GradientStats


def tiny():
    torch.manual_seed(0)
    data = load(train_size=96, test_size=32, image_size=4, noise=2.0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    return data, model


def test_soft_threshold_is_the_l1_proximal_step_with_exact_zeros():
    w = torch.tensor([0.3, -0.05, 0.1, -0.4, 0.0, 0.02])
    soft_threshold([w], 0.1)
    assert torch.allclose(w, torch.tensor([0.2, 0.0, 0.0, -0.3, 0.0, 0.0]))
    assert int((w == 0).sum()) == 4


def test_l1_regularized_training_produces_exact_zeros():
    data, model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, data, optimizer, None, FitSettings(epochs=3, batch_size=16, l1=0.05),
        torch.Generator().manual_seed(0), "train")
    weights = [model[1].weight, model[3].weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros > 0.2 * sum(w.numel() for w in weights)
    assert int((model[1].bias == 0).sum()) == 0  # biases are not regularized


def reference_run(data, model, settings: FitSettings, lr: float):
    """The same training written out by hand: per-step norm of the raw gradient, clipping by
    scaling with max_norm / (norm + 1e-6), plain SGD; returns norms, clip flags, update norms."""
    generator = torch.Generator().manual_seed(0)
    norms, flags, updates, largest = [], [], [], []
    for _ in range(settings.epochs):
        for x, y in batches(data, data.train, settings.batch_size, shuffle=True,
                            generator=generator, train=True):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = [p.grad for p in model.parameters()]
            norm = torch.cat([g.flatten() for g in grads]).double().norm().item()
            norms.append(norm)
            flags.append(settings.max_norm is not None and norm > settings.max_norm)
            if flags[-1]:
                for g in grads:
                    g.mul_(settings.max_norm / (norm + 1e-6))
            with torch.no_grad():
                update = torch.cat([lr * g.flatten() for g in grads])
                updates.append(update.norm().item() / lr)
                largest.append(update.abs().max().item() / lr)
                for p in model.parameters():
                    p -= lr * p.grad
    return np.array(norms), np.array(flags), np.array(updates), np.array(largest)


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_telemetry_equals_an_independent_recomputation(max_norm):
    settings = FitSettings(epochs=2, batch_size=16, max_norm=max_norm)
    data, model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    norms, flags, _, _ = reference_run(data, model, settings, lr=0.5)
    model.load_state_dict(state)
    stats = GradientStats()
    fit(model, data, torch.optim.SGD(model.parameters(), lr=0.5), None, settings,
        torch.Generator().manual_seed(0), "train", gradients=stats)
    summary = stats.summary()
    assert summary["steps"] == len(norms) == 12
    assert summary["norm_mean"] == pytest.approx(norms.mean(), rel=1e-5)
    assert summary["norm_max"] == pytest.approx(norms.max(), rel=1e-5)
    assert summary["norm_p99"] == pytest.approx(np.percentile(norms, 99), rel=1e-5)
    assert summary["clipped_fraction"] == pytest.approx(flags.mean())
    assert summary["nonfinite_losses"] == summary["nonfinite_grads"] == 0
    if max_norm is not None:
        assert 0 < flags.mean() < 1  # the test exercises both sides of the bound
    for epoch, chunk in zip(summary["epochs"], np.split(norms, 2), strict=True):
        assert epoch["norm_mean"] == pytest.approx(chunk.mean(), rel=1e-5)
        assert epoch["norm_max"] == pytest.approx(chunk.max(), rel=1e-5)


@pytest.mark.parametrize("max_norm, max_value", [(0.5, None), (None, 0.05), (0.5, 0.05)])
def test_clipping_bounds_the_applied_gradient(max_norm, max_value):
    """With plain SGD the update is -lr * g: its norm (max entry) is bounded by the clip."""
    data, model = tiny()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    stats = GradientStats()
    settings = FitSettings(epochs=1, batch_size=16, max_norm=max_norm, max_value=max_value)
    generator = torch.Generator().manual_seed(0)
    applied, largest = [], []

    def measure(step):
        current = torch.cat([p.detach().flatten() for p in model.parameters()])
        delta = (previous[0] - current) / lr
        applied.append(delta.norm().item())
        largest.append(delta.abs().max().item())
        previous[0] = current

    previous = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    fit(model, data, optimizer, None, settings, generator, "train", on_step=measure,
        gradients=stats)
    summary = stats.summary()
    assert summary["clipped_fraction"] > 0.5
    assert summary["norm_max"] > (max_norm or 0)  # recorded before clipping
    if max_norm is not None:
        assert max(applied) <= max_norm * (1 + 1e-4)
    if max_value is not None:
        assert max(largest) <= max_value * (1 + 1e-4)


def test_cli_records_gradients_per_phase_and_table_columns(cli):
    results, out = cli(["train.grad_clip.max_norm=0.5", "train.regularization.l1=1e-4"])
    for phase in ("train", "finetune"):
        g = results["gradients"][phase]
        assert len(g["epochs"]) == len(results["history"][phase])
        assert g["steps"] == sum(e["steps"] for e in g["epochs"])
        assert g["norm_max"] == max(e["norm_max"] for e in g["epochs"])
        assert 0 <= g["clipped_fraction"] <= 1
    assert results["dense"]["sparsity"] > 0  # the proximal step left exact zeros
    from prunebench.results.table import row
    r = row(results, "run")
    assert r["grad_max"] == max(results["gradients"][p]["norm_max"] for p in ("train", "finetune"))
    assert 0 < r["clipped"] <= 1
