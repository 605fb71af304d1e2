"""Faults a long study meets: divergence, crashes inside sweeps, malformed or corrupt files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import run_cli
from torch import nn

from prunebench.data import Dataset, Split
from prunebench.training.loop import Diverged, FitSettings, fit
from prunebench.training.telemetry import GradientStats


def test_huge_learning_rate_is_recorded_as_diverged(tmp_path):
    out = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'c'}", "train.epochs=3",
                    "finetune.epochs=1", "optimizer.lr=1e6"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("prunebench: diverged: non-finite")
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged"
    where = results["diverged"]
    assert where["phase"] == "train" and where["epoch"] == 1 and where["step"] >= 1
    assert "final" not in results
    assert not list((tmp_path / "c").glob("dense-*.pt"))  # nothing diverged goes in the cache


class SqrtNet(nn.Module):
    """Finite loss, infinite gradient: d sqrt(|w|)/dw is inf where w = 0."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight[0, 0] = 0.0

    def forward(self, x):
        return nn.functional.linear(x.flatten(1), self.fc.weight.abs().sqrt(), self.fc.bias)


def tiny_data(g: torch.Generator) -> Dataset:
    split = Split(torch.randn(8, 1, 2, 2, generator=g), torch.randint(2, (8,), generator=g))
    return Dataset("t", split, split, None, (1, 2, 2), 2, torch.zeros(1), torch.ones(1), 1.0)


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_gradient_stops_the_phase(fused):
    g = torch.Generator().manual_seed(0)
    data = tiny_data(g)
    model = SqrtNet()
    before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
    with pytest.raises(Diverged) as caught:
        fit(model, data, optimizer, None, FitSettings(epochs=1, batch_size=4), g, "finetune")
    assert (caught.value.phase, caught.value.step, caught.value.what) == ("finetune", 0,
                                                                           "gradient")
    assert torch.equal(model.fc.weight, before)  # stopped before the optimizer step


class HugeGradientNet(nn.Module):
    """Finite loss and finite gradients whose global L2 norm overflows float32 (about 1e24 per
    entry, squared past 3.4e38)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        zero = self.fc.weight.sum() - self.fc.weight.sum().detach()  # 0, with gradient 1
        return self.fc(x.flatten(1)) + torch.tensor([1e24, 0.0]) * zero  # first logit only


def test_a_finite_gradient_whose_norm_overflows_is_not_divergence():
    g = torch.Generator().manual_seed(0)
    model, stats = HugeGradientNet(), GradientStats()
    before = model.fc.weight.detach().clone()
    fit(model, tiny_data(g), torch.optim.SGD(model.parameters(), lr=0.1), None,
        FitSettings(epochs=1, batch_size=4, max_norm=1.0), g, "train", gradients=stats)
    summary = stats.summary()
    assert summary["steps"] == 2 and summary["nonfinite_grads"] == 2  # recorded, as before
    assert torch.equal(model.fc.weight, before)  # norm clipping scaled those steps to zero


class NanAfterFirstBatch(nn.Module):
    """Finite on the first batch, NaN logits from the second on."""

    def __init__(self):
        super().__init__()
        self.fc, self.calls = nn.Linear(4, 2), 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out if self.calls == 1 else out * float("nan")


def test_non_finite_loss_is_named_and_counted_before_the_step():
    g = torch.Generator().manual_seed(0)
    data = tiny_data(g)
    model, stats = NanAfterFirstBatch(), GradientStats()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Diverged) as caught:
        fit(model, data, optimizer, None, FitSettings(epochs=1, batch_size=4), g, "train",
            gradients=stats)
    assert (caught.value.phase, caught.value.epoch, caught.value.step, caught.value.what) == (
        "train", 1, 1, "loss")
    summary = stats.summary()
    assert summary["nonfinite_losses"] == 1 and summary["nonfinite_grads"] == 0
    assert summary["steps"] == 1  # the diverged step was not recorded or taken
    assert torch.isfinite(model.fc.weight).all()


# a crash no config check can see, injected at interpreter start into the job for seed 13
CRASH_ON_SEED_13 = """
import prunebench.runner as runner
_pipeline = runner.pipeline
def pipeline(cfg, *args):
    if cfg.seed == 13:
        raise RuntimeError("injected crash\\nsecond line")
    return _pipeline(cfg, *args)
runner.pipeline = pipeline
"""


def test_sweep_survives_a_crash_and_a_bad_value_and_the_report_skips_malformed_files(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(CRASH_ON_SEED_13)
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'c'}",
                    "train.epochs=1", "finetune.epochs=1", "seed=13,0",
                    "optimizer.momentum=-1,0.5"], cwd=tmp_path, check=False,
                   env={"PYTHONPATH": str(tmp_path / "inject")})
    # the sweep ran every job and wrote its table, then says it is not whole
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"prunebench: error: 3 of 4 jobs failed (see {sweep / 'comparison.md'})")
    rows = {(r["seeds"], r["status"], r["error"])
            for r in csv.DictReader((sweep / "comparison.csv").open())}
    assert rows == {("13", "failed", "RuntimeError: injected crash"),
                    ("0", "failed", "ConfigError: optimizer: Invalid momentum value: -1"),
                    ("0", "ok", "")}
    assert "injected crash" in proc.stderr and "second line" not in proc.stderr
    crashed = json.loads((sweep / "0" / "results.json").read_text())
    assert "second line" in crashed["traceback"]  # the whole story is kept in the file

    # the report goes on past anything malformed, naming each file it skips
    good = (sweep / "3" / "results.json").read_text()
    bad = {"truncated": good[: len(good) // 2], "binary": "\x00\xff garbage",
           "list": "[1, 2]", "nested": "[" * 100_000 + "]" * 100_000,
           "wrong-types": json.dumps({"status": "ok", "config": "x", "final": [1]}),
           "markup": json.dumps({"status": "[/]", "config": {"strategy": {"name": "[/x]"}}}),
           "empty": ""}
    for name, text in bad.items():
        (sweep / "bad" / name).mkdir(parents=True)
        (sweep / "bad" / name / "results.json").write_text(text)
    report = run_cli([str(sweep)], cwd=tmp_path, script="prunebench-report")
    skipped = {name for name in bad if f"bad/{name}/results.json" in report.stderr}
    assert skipped == set(bad) - {"markup"}, report.stderr
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok", "failed", "[/]"}


def test_single_run_crash_exits_non_zero_with_failed_status(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(CRASH_ON_SEED_13)
    out = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={out}", "seed=13"], cwd=tmp_path, check=False,
                   env={"PYTHONPATH": str(tmp_path / "inject")})
    assert proc.returncode != 0 and "injected crash" in proc.stderr
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_corrupt_or_truncated_cache_entry_is_rebuilt_not_loaded(tmp_path):
    args = [f"cache.dir={tmp_path / 'c'}", "train.epochs=2", "finetune.epochs=0"]
    run_cli([f"hydra.run.dir={tmp_path / 'first'}", *args], cwd=tmp_path)
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    [entry] = (tmp_path / "c").glob("dense-*.pt")
    blob = entry.read_bytes()
    original = torch.load(entry, weights_only=True)["state_dict"]
    zeroed = blob[: len(blob) // 2] + bytes(64) + blob[len(blob) // 2 + 64:]
    entry.write_bytes(zeroed)
    torch.load(entry, weights_only=True)  # torch itself would load these wrong weights
    for name, damaged in [("zeroed", zeroed), ("truncated", blob[: len(blob) // 2])]:
        entry.write_bytes(damaged)
        proc = run_cli([f"hydra.run.dir={tmp_path / name}", *args], cwd=tmp_path)
        assert "unusable" in proc.stderr and entry.name in proc.stderr, proc.stderr
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["cache"]["hit"] is False
        assert results["dense"] == first["dense"]  # retrained: the same dense model
        rebuilt = torch.load(entry, weights_only=True)["state_dict"]  # whole again
        assert all(torch.equal(rebuilt[k], v) for k, v in original.items())


@pytest.mark.parametrize("key", ["hydra.run.dir", "cache.dir"])
def test_unwritable_output_folder_fails_before_any_work(tmp_path, key):
    a_file = tmp_path / "file"
    a_file.write_text("")
    args = {"hydra.run.dir": tmp_path / "run", "cache.dir": tmp_path / "c"} | {key: a_file / "x"}
    proc = run_cli([f"{k}={v}" for k, v in args.items()], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"prunebench: error: cannot write to {a_file / 'x'}: " \
                                  "Not a directory"
    assert not (tmp_path / "run" / "results.json").exists()
