"""Schedules: AGP cubic, geometric iterative path, rewinding, DNS recovery, RigL, from the CLI."""

from __future__ import annotations

import json
from copy import deepcopy as copy_module

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, SYNTHETIC, checkpoint_accuracy, composed, run_cli
from torch.nn.utils import parametrize

from prunebench import build
from prunebench.data import batches
from prunebench.pruning import recovery
from prunebench.pruning.session import Session
from prunebench.schedules.dynamic import Dynamic, attach, regrow
from prunebench.schedules.gradual import cubic_sparsity
from prunebench.schedules.iterative import geometric_path

STEPS_PER_EPOCH = 8  # helpers.SYNTHETIC: 512 training images, batch 64
PARAMS = 64 * 256 + 256 * 128 + 128 * 4  # prunable weights of the default mlp on 1x8x8 -> 4


def expected_sparsity(amount: float, params: int = PARAMS) -> float:
    """What selection by amount gives: round(amount * params) weights removed."""
    return 1.0 - (params - round(amount * params)) / params


def strategies_available() -> list[str]:
    """l1 and random always; gradient and hessian once their configs exist."""
    return [s for s in ("l1", "random", "gradient", "hessian")
            if (ROOT / "conf" / "strategy" / f"{s}.yaml").exists()]


def test_cubic_schedule_hits_start_end_and_midpoint_exactly():
    initial, final, start, dt, n = 0.1, 0.9, 40, 10, 6
    assert cubic_sparsity(start, initial, final, start, dt, n) == initial
    assert cubic_sparsity(start + n * dt, initial, final, start, dt, n) == final
    mid = cubic_sparsity(start + n * dt // 2, initial, final, start, dt, n)
    assert mid == pytest.approx(final + (initial - final) * 0.5 ** 3, abs=1e-15)
    # clamped outside [start, end], increasing in between
    assert cubic_sparsity(0, initial, final, start, dt, n) == initial
    assert cubic_sparsity(10 ** 6, initial, final, start, dt, n) == final
    path = [cubic_sparsity(start + k * dt, initial, final, start, dt, n) for k in range(n + 1)]
    assert path == sorted(path)


def test_geometric_path_keeps_the_same_fraction_each_round():
    path = geometric_path(0.9, 4)
    assert path[-1] == 0.9 and len(path) == 4
    kept = [1.0] + [1 - s for s in path]
    ratios = [b / a for a, b in zip(kept, kept[1:], strict=False)]
    assert ratios == pytest.approx([0.1 ** 0.25] * 4, rel=1e-12)


def test_gradual_from_cli_prunes_on_the_cubic(cli):
    # start 0, end 2 epochs = 16 steps, every 4 steps: n = 4 increments, midpoint at step 8
    results, _ = cli([*SYNTHETIC, "schedule=gradual", "schedule.initial=0.2",
                      "schedule.start=0", "schedule.end=2", "schedule.frequency=4",
                      "finetune.epochs=3", "strategy.amount=0.9"])
    assert results["status"] == "ok"
    events = results["events"]
    assert [e["step"] for e in events] == [0, 4, 8, 12, 16]
    for e in events:
        s = cubic_sparsity(e["step"], 0.2, 0.9, 0, 4, 4)
        assert e["sparsity"] == pytest.approx(expected_sparsity(s), abs=1e-12), e
    assert events[0]["sparsity"] == pytest.approx(expected_sparsity(0.2), abs=1e-12)
    assert events[2]["sparsity"] == pytest.approx(
        expected_sparsity(0.9 + (0.2 - 0.9) / 8), abs=1e-12)
    # 'pruned' is recorded when the target is reached; fine-tuning then recovers
    assert results["pruned"]["sparsity"] == pytest.approx(expected_sparsity(0.9), abs=1e-12)
    assert results["final"]["sparsity"] == pytest.approx(expected_sparsity(0.9), abs=1e-12)


def test_iterative_rounds_follow_the_geometric_path_and_rewind_to_init(cli, tmp_path):
    rounds = 3
    results, out = cli([*SYNTHETIC, "schedule=iterative", f"schedule.rounds={rounds}",
                        "schedule.epochs_per_round=1", "schedule.rewind=init",
                        "strategy.amount=0.875"])
    assert results["status"] == "ok"
    events = results["events"]
    assert [e["step"] for e in events] == [r * STEPS_PER_EPOCH for r in range(rounds)]
    for e, s in zip(events, geometric_path(0.875, rounds), strict=True):
        assert e["sparsity"] == pytest.approx(expected_sparsity(s), abs=1e-12)
        assert e["recovered"] == 0
    assert len(results["history"]["finetune"]) == rounds

    # rewinding: the 'pruned' checkpoint holds the initial weights where they survive
    cfg = composed(SYNTHETIC)
    torch.manual_seed(cfg.seed)
    init = build.model(cfg, build.dataset(cfg)).state_dict()
    pruned = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    for name, value in pruned.items():
        if name.endswith("weight"):
            kept = value != 0
            assert torch.equal(value[kept], init[name][kept]), name
        else:
            assert torch.equal(value, init[name]), name


@pytest.mark.slow
def test_rewind_to_epoch_k_and_bad_rewind(cli, tmp_path):
    results, _ = cli([*SYNTHETIC, "schedule=iterative", "schedule.rounds=2",
                      "schedule.rewind=epoch_1", "strategy.amount=0.5"])
    assert results["status"] == "ok" and len(results["events"]) == 2
    proc = run_cli([f"hydra.run.dir={tmp_path / 'bad'}", f"cache.dir={tmp_path / 'c'}",
                    *SYNTHETIC, "train.epochs=2", "schedule=iterative",
                    "schedule.rewind=epoch_5"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "schedule.rewind=epoch_5" in proc.stderr


def make_session(tmp_path, overrides: list[str]) -> Session:
    cfg = composed([*SYNTHETIC, *overrides])
    data = build.dataset(cfg)
    torch.manual_seed(cfg.seed)
    model = build.model(cfg, data)
    return Session(build.session_settings(cfg), model, data, build.selection(cfg), tmp_path)


def test_dns_recovers_a_weight_above_the_upper_threshold(tmp_path):
    session = make_session(tmp_path, ["strategy.amount=0.5", "strategy.scope=layer"])
    schedule = Dynamic("dynamic", variant="dns", hysteresis=2.0)
    schedule.surgery(session)
    schedule.forward_masks = attach(session)
    name = next(iter(session.masks.weights))
    layer = session.model.get_submodule(name.rpartition(".")[0])
    dense = layer.parametrizations.weight.original
    mask = session.masks.masks[name]
    pruned = (mask == 0).nonzero()
    cut = dense.detach().abs()[mask == 0].max()  # a, the lower threshold of this layer

    # the forward pass sees zeros where pruned; the dense weight behind them is kept
    x = torch.randn(5, dense.shape[1])
    assert torch.equal(layer(x), F.linear(x, dense.detach() * mask, layer.bias))
    assert torch.count_nonzero(dense.detach()[mask == 0]) > 0

    # ... and still gets gradient (that is how a weight can come back)
    layer(x).square().sum().backward()
    assert torch.count_nonzero(dense.grad[mask == 0]) > 0

    # one pruned weight rises above b = 2a, one into the band (a, b): only the first returns
    up, band = tuple(pruned[0]), tuple(pruned[1])
    with torch.no_grad():
        dense[up] = 3 * cut
        dense[band] = 1.5 * cut
    schedule.surgery(session)
    mask = session.masks.masks[name]
    assert mask[up] == 1 and mask[band] == 0
    assert session.events[-1]["recovered"] >= 1
    assert torch.equal(layer(x), F.linear(x, dense.detach() * mask, layer.bias))


def test_rigl_keeps_sparsity_constant_and_swaps_weights(cli):
    results, out = cli([*SYNTHETIC, "schedule=dynamic", "schedule.variant=rigl",
                        "schedule.frequency=2", "schedule.end=1", "strategy.amount=0.8"])
    events = results["events"]
    assert [e["step"] for e in events] == [0, 2, 4, 6]  # first prune, then updates before end
    for e in events[1:]:
        assert e["sparsity"] == pytest.approx(expected_sparsity(0.8), abs=1e-12)
        assert e["pruned"] == e["recovered"] > 0
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    nonzero = sum(int(torch.count_nonzero(v)) for k, v in final.items() if k.endswith("weight"))
    assert nonzero == results["final"]["nonzero"] <= PARAMS - round(0.8 * PARAMS)


@pytest.mark.parametrize("schedule", [
    ["schedule=iterative", "schedule.rounds=2"],
    ["schedule=gradual", "schedule.end=1", "schedule.frequency=2"],
    ["schedule=dynamic", "schedule.end=1", "schedule.frequency=2"],
    ["schedule=dynamic", "schedule.variant=rigl", "schedule.end=1", "schedule.frequency=2"],
], ids=["iterative", "gradual", "dns", "rigl"])
def test_every_schedule_runs_with_every_strategy(tmp_path, schedule):
    sweep = tmp_path / "sweep"
    names = strategies_available()
    run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}", *SYNTHETIC,
             "train.epochs=2", "finetune.epochs=1", "strategy.amount=0.7",
             f"strategy={','.join(names)}", *schedule], cwd=tmp_path)
    for i in range(len(names)):
        run = sweep / str(i)
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == "ok", results.get("error")
        target = expected_sparsity(0.7)
        assert results["events"][-1]["sparsity"] == pytest.approx(target, abs=1e-12)
        # weights grown by RigL start at zero and stay there if they never get a gradient
        assert target - 1e-12 <= results["final"]["sparsity"] <= target + 0.01
        for phase in ("dense", "pruned", "final"):
            assert results[phase]["accuracy"] == pytest.approx(
                checkpoint_accuracy(results, run / "checkpoints" / f"{phase}.pt")), phase


def test_gradient_explosion_preset_composes_its_sweep_and_runs(cli, tmp_path):
    hydra_cfg = run_cli(["+experiment=gradient_explosion", "--cfg", "hydra"], cwd=tmp_path).stdout
    assert "train.grad_clip.max_norm: null,1.0" in hydra_cfg
    # the preset's unpruned deep net (pruned at init its gradients vanish instead); one epoch
    # is before the explosion (norms ~0.15 on digits), so clip below that: clipping must act
    results, _ = cli(["+experiment=gradient_explosion", "finetune.epochs=1", "schedule=oneshot",
                      "strategy.amount=0.0", "train.grad_clip.max_norm=0.1"], fast=False)
    assert results["status"] == "ok"
    assert results["config"]["model"]["hidden"] == [256] * 8
    gradients = results["gradients"]["finetune"]
    assert gradients["steps"] > 0 and 0 < gradients["clipped_fraction"] <= 1


def test_dns_with_a_threshold_and_schedules_that_need_an_amount(cli, tmp_path):
    results, _ = cli([*SYNTHETIC, "schedule=dynamic", "schedule.end=1", "schedule.frequency=2",
                      "strategy.amount=null", "strategy.threshold=0.05"])
    assert results["status"] == "ok"
    assert 0 < results["final"]["sparsity"] < 1
    assert results["final"]["sparsity"] == pytest.approx(results["events"][-1]["sparsity"])
    for schedule in ("iterative", "gradual"):
        proc = run_cli([f"hydra.run.dir={tmp_path / schedule}", f"cache.dir={tmp_path / 'c'}",
                        *SYNTHETIC, "train.epochs=1", f"schedule={schedule}",
                        "strategy.amount=null", "strategy.threshold=0.05"],
                       cwd=tmp_path, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and "strategy.amount" in lines[0]


def bn_statistics(model) -> list[torch.Tensor]:
    return [t.clone() for m in recovery.norms(model) for t in (m.running_mean, m.running_var)]


def recalibrated_by_hand(session, model) -> list[torch.Tensor]:
    """The statistics recovery.recalibrate gives `model` on the session's recalibration
    batches (their own generator, seed + 5): what a mask change must leave behind."""
    copy = copy_module(model)
    settings, data = session.settings, session.data
    recovery.recalibrate(copy, batches(data, data.train, settings.batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(settings.seed + 5)),
                         settings.recalibration.batches)
    return bn_statistics(copy)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_dns_and_rigl_updates_recalibrate_batch_norm(tmp_path, recalibrate):
    """Every dynamic mask update takes the Session's path: BatchNorm statistics are
    recalibrated for the new masks (RigL: zeroed weights; DNS: masks in the forward pass),
    and left alone with finetune.bn_recalibrate=false."""
    session = make_session(tmp_path, ["model=resnet", "model.depth=8", "strategy.amount=0.5",
                                      "finetune.bn_batches=2",
                                      f"finetune.bn_recalibrate={str(recalibrate).lower()}"])
    assert recovery.norms(session.model)
    session.model.eval()  # RigL's gradient batch then leaves the statistics alone
    session.prune(0.5)
    for m in recovery.norms(session.model):
        m.running_mean.fill_(5.0)  # stale statistics
    regrow(session, 0.3)
    assert session.events[-1]["pruned"] == session.events[-1]["recovered"] > 0
    after_rigl = bn_statistics(session.model)
    if recalibrate:
        assert all(torch.equal(a, b) for a, b in zip(
            after_rigl, recalibrated_by_hand(session, session.model), strict=True))
    else:
        assert all(torch.all(m.running_mean == 5.0) for m in recovery.norms(session.model))

    schedule = Dynamic("dynamic", variant="dns")
    schedule.forward_masks = attach(session)
    for m in recovery.norms(session.model):
        m.running_mean.fill_(5.0)
    schedule.surgery(session)
    # the reference: the same network with the masks multiplied into plain weights
    masked = copy_module(session.model)
    for name in schedule.forward_masks:
        layer = masked.get_submodule(name.rpartition(".")[0])
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    if recalibrate:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(
            bn_statistics(session.model), recalibrated_by_hand(session, masked), strict=True))
    else:
        assert all(torch.all(m.running_mean == 5.0) for m in recovery.norms(session.model))
