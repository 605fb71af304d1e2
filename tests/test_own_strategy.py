"""A new criterion is one module plus one YAML: one defined only here, outside the package,
with a key of its own, runs end to end through the CLI, and a bad value of that key is the
usual one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import composed, context, run_cli, tiny_net

from prunebench import build
from prunebench.pruning.masks import prunable_weights
from prunebench.strategies.allocation import ALLOCATIONS

# keeps the weights whose magnitude is nearest `center` (its own key): a ranking no built-in
# criterion makes, so the masks below can only come from this module
MODULE = '''
from prunebench.config.values import number
from prunebench.strategies.base import Strategy


class Band(Strategy):
    def __init__(self, name, center=0.05, **selection):
        super().__init__(name, **selection)
        number("strategy.center", center, low=0, allowed="a number >= 0")
        self.center = center

    def score(self, weights, ctx):
        return {n: -(w.abs() - self.center).abs() for n, w in weights.items()}
'''

YAML = """\
_target_: band_criterion.Band
name: band
center: 0.05
amount: 0.5
threshold: null
scope: global
granularity: weight
"""


def plugin(tmp_path) -> tuple[list[str], dict]:
    """The module and its YAML in a temporary folder: (overrides, environment)."""
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "band_criterion.py").write_text(MODULE)
    (tmp_path / "conf" / "strategy").mkdir(parents=True)
    (tmp_path / "conf" / "strategy" / "band.yaml").write_text(YAML)
    overrides = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "strategy=band"]
    return overrides, {"PYTHONPATH": str(tmp_path / "plugin")}


def test_a_criterion_from_outside_runs_and_checks_its_own_key(tmp_path):
    overrides, env = plugin(tmp_path)
    out = tmp_path / "run"
    run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'c'}", "train.epochs=2",
             "finetune.epochs=0", *overrides, "strategy.center=0.03"], cwd=tmp_path, env=env)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok" and results["config"]["strategy"]["center"] == 0.03

    # the pruned weights are exactly the half farthest from |w| = 0.03, computed here
    dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)
    pruned = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    names = [n for n, w in dense.items() if n.endswith("weight") and w.dim() == 2]
    distance = torch.cat([(dense[n].abs() - 0.03).abs().flatten() for n in names])
    removed = torch.zeros_like(distance, dtype=torch.bool)
    removed[torch.argsort(-distance, stable=True)[:round(0.5 * len(distance))]] = True
    got = torch.cat([(pruned[n] == 0).flatten() for n in names])
    assert torch.equal(got, removed)
    assert results["pruned"]["sparsity"] == pytest.approx(removed.float().mean().item())

    bad = run_cli([f"hydra.run.dir={tmp_path / 'bad'}", *overrides, "strategy.center=-1"],
                  cwd=tmp_path, env=env, check=False)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode != 0 and lines == [
        "prunebench: error: strategy.center=-1 is invalid: allowed a number >= 0"], bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()  # stopped before any work


# a criterion that is a score() and nothing else: selection, allocation and N:M patterns are
# the base class's business
SCORE_ONLY = '''
from prunebench.strategies.base import Strategy


class Magnitude(Strategy):
    def score(self, weights, ctx):
        return {n: w.abs() for n, w in weights.items()}
'''


@pytest.mark.parametrize("selection", [*[[f"strategy.allocation={a}"] for a in ALLOCATIONS],
                                       ["strategy.pattern=2:4"]],
                         ids=[*ALLOCATIONS, "2:4"])
def test_a_score_only_criterion_works_with_every_allocation_and_pattern(tmp_path, monkeypatch,
                                                                        selection):
    """Written to a temporary folder, found through its YAML: the masks equal those of the
    built-in magnitude criterion (the same scores) under each allocation and 2:4."""
    (tmp_path / "score_only.py").write_text(SCORE_ONLY)
    (tmp_path / "conf" / "strategy").mkdir(parents=True)
    (tmp_path / "conf" / "strategy" / "magnitude.yaml").write_text(
        "_target_: score_only.Magnitude\nname: magnitude\namount: 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    masks = {}
    for strategy in ("magnitude", "l1"):
        cfg = composed([searchpath, f"strategy={strategy}", "strategy.amount=0.5", *selection])
        criterion = build.strategy(cfg)
        model = tiny_net()
        batches = [(torch.randn(16, 6, generator=torch.Generator().manual_seed(1)),
                    torch.randint(0, 3, (16,)))]
        weights = prunable_weights(model)
        ctx = context(batches, model)
        masks[strategy] = criterion.prune(model, weights, ctx.masks, ctx, 0.5)
    assert type(criterion).__name__ == "L1"
    assert masks["magnitude"].keys() == masks["l1"].keys()
    assert all(torch.equal(masks["magnitude"][n], masks["l1"][n]) for n in masks["l1"])
    kept = sum(int(m.sum()) for m in masks["l1"].values())
    total = sum(m.numel() for m in masks["l1"].values())
    assert kept < total  # something was pruned
