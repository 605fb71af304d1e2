"""scripts/check_cuda.sh's comparisons, which only a GPU session runs end to end: the pairs of
runs of one config (scripts/check_cuda.py) on run folders made here, and `deterministic=true`'s
torch flags."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch
from helpers import ROOT

from prunebench.training.determinism import set_deterministic

SCRIPT = ROOT / "scripts" / "check_cuda.py"


def check_cuda():
    spec = importlib.util.spec_from_file_location("check_cuda", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root, name: str, weights: dict, accuracy: float) -> None:
    """A run folder as prunebench writes it, as far as check_cuda.py reads it."""
    (root / name / "checkpoints").mkdir(parents=True)
    torch.save(weights, root / name / "checkpoints" / "final.pt")
    (root / name / "results.json").write_text(json.dumps(
        {"status": "ok", "final": {"accuracy": accuracy, "sparsity": 0.8},
         "dense": {"accuracy": 0.97}, "timing": {"total_s": 1.0}}))


def check_line(cc, monkeypatch, capsys, root, name: str) -> tuple[int, str]:
    """(exit code, printed line) of `python scripts/check_cuda.py ROOT NAME`."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(root), name])
    code = cc.main()
    return code, capsys.readouterr().out


def test_pairs_and_verdict_tell_ddp_from_nondeterminism(tmp_path, monkeypatch, capsys):
    g = torch.Generator().manual_seed(0)
    base = {"fc.weight": torch.randn(8, 4, generator=g) * (torch.rand(8, 4, generator=g) > 0.8),
            "fc.bias": torch.randn(8, generator=g)}
    noisy = {k: v + 1e-3 * (v != 0) for k, v in base.items()}  # same zeros, other values
    moved = dict(base, **{"fc.weight": base["fc.weight"].roll(1, 0)})  # other masks
    for name, weights in (("single", base), ("single-again", noisy), ("nccl-ddp", moved),
                          ("deterministic", base), ("deterministic-again", base),
                          ("nccl-ddp-deterministic", noisy)):
        fake_run(tmp_path, name, weights, 0.95)
    cc = check_cuda()

    diff, same = cc.weights_apart(tmp_path / "single-again", tmp_path / "single")
    assert diff == max(float((noisy[k].double() - base[k].double()).abs().max()) for k in base)
    assert same
    assert cc.weights_apart(tmp_path / "nccl-ddp", tmp_path / "single")[1] is False
    ok, text = cc.against_reference(json.loads(
        (tmp_path / "deterministic-again" / "results.json").read_text()),
        tmp_path / "deterministic-again")
    assert ok and "max abs weight diff 0.00e+00, same masks True" in text
    verdict = cc.verdict(tmp_path)
    assert verdict.startswith("VERDICT: DDP differs from one process beyond nondeterminism, by "
                              f"{diff:.2e}"), verdict

    # the deterministic pair must be equal to the bit: a difference is that run's FAIL line
    torch.save(noisy, tmp_path / "deterministic-again" / "checkpoints" / "final.pt")
    code, line = check_line(cc, monkeypatch, capsys, tmp_path, "deterministic-again")
    assert code == 1 and line.startswith("FAIL deterministic-again: "), line
    assert cc.verdict(tmp_path).startswith("VERDICT: deterministic=true is not deterministic")
    # the nondeterministic pair passes on accuracy, and says how far apart it is
    code, line = check_line(cc, monkeypatch, capsys, tmp_path, "single-again")
    assert code == 0 and f"max abs weight diff {diff:.2e}" in line, line


def test_verdict_says_which_pairs_are_missing(tmp_path):
    fake_run(tmp_path, "single", {"w": torch.ones(2, 2)}, 0.9)
    assert check_cuda().verdict(tmp_path) == "VERDICT: incomplete (pairs present: none)"


def test_deterministic_key_sets_and_clears_torch_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
