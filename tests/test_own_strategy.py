"""A new criterion is one module plus one YAML: one defined only here, outside the package,
with a key of its own, runs end to end through the CLI, and a bad value of that key is the
usual one-line error."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from helpers import run_cli

from prunebench.strategies.allocation import ALLOCATIONS

# keeps the weights whose magnitude is nearest `center` (its own key): a ranking no built-in
# criterion makes, so the masks below can only come from this module
MODULE = '''
from prunebench.config.values import number
from prunebench.strategies.base import Strategy


class Band(Strategy):
    def __init__(self, center=0.05):
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
# the selection's business (strategies/selection.py)
SCORE_ONLY = '''
from prunebench.strategies.base import Strategy


class Magnitude(Strategy):
    def score(self, weights, ctx):
        return {n: w.abs() for n, w in weights.items()}
'''
TINY = ["model.hidden=[16,8]", "train.epochs=0", "finetune.epochs=0", "train.threads=1",
        "strategy=magnitude", "strategy.amount=0.5"]  # weights [16,64], [8,16], [10,8]


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest of a flat tensor, ties to the earlier position."""
    removed = torch.zeros_like(scores, dtype=torch.bool)
    removed[torch.argsort(scores, stable=True)[:k]] = True
    return removed


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """Lee et al.'s score of a flat layer by its definition: s_u^2 / sum of s_v^2 over v with
    s_v >= s_u, in float64 with a Python loop over the distinct values."""
    sq = scores.double() ** 2
    return torch.stack([v / sq[sq >= v].sum() for v in sq])


def check_allocation(allocation: str, dense: dict, pruned: dict, results: dict) -> None:
    names = [n for n in dense if n.endswith("weight")]
    removed = {n: pruned[n] == 0 for n in names}
    size = {n: dense[n].numel() for n in names}
    total, amount = sum(size.values()), 0.5
    assert sum(int(r.sum()) for r in removed.values()) == round(amount * total), allocation
    if allocation == "global":
        flat = lowest(torch.cat([dense[n].abs().flatten() for n in names]), round(0.5 * total))
        assert torch.equal(torch.cat([removed[n].flatten() for n in names]), flat)
    elif allocation == "lamp":
        scores = torch.cat([lamp(dense[n].abs().flatten()) for n in names])
        flat = lowest(scores, round(0.5 * total))
        assert torch.equal(torch.cat([removed[n].flatten() for n in names]), flat)
    for n in names:
        w = dense[n].abs()
        if allocation == "uniform":
            assert torch.equal(removed[n].flatten(), lowest(w.flatten(), round(0.5 * size[n])))
        elif allocation == "row":
            for r in range(len(w)):
                assert torch.equal(removed[n][r], lowest(w[r], round(0.5 * w.shape[1])))
        elif allocation in ("erk", "owl"):  # each layer: its lowest |w|, as many as allotted
            k = int(removed[n].sum())
            assert torch.equal(removed[n].flatten(), lowest(w.flatten(), k)), n
    if allocation == "erk":  # density = eps * sum(dims) / prod(dims), layers over 1 dense
        full: set[str] = set()  # eps solved again without the layers kept dense
        for _ in names:
            rest = [n for n in names if n not in full]
            kept = (1 - amount) * total - sum(size[n] for n in full)
            eps = kept / sum(sum(dense[n].shape) for n in rest)
            full |= {n for n in rest if eps * sum(dense[n].shape) / size[n] > 1}
        for n in names:
            density = 1.0 if n in full else eps * sum(dense[n].shape) / size[n]
            assert abs((size[n] - int(removed[n].sum())) - density * size[n]) < 1 + 1e-9, n
    if allocation == "owl":  # ratios min-max scaled to [0, 2 lambda], mean density 1 - amount
        ratios = results["allocation"]["outlier_ratios"]
        low, high = min(ratios.values()), max(ratios.values())
        scaled = {n: (r - low) / (high - low) * 2 * 0.08 for n, r in ratios.items()}
        shift = sum(scaled[n] * size[n] for n in names) / total
        for n in names:
            density = scaled[n] - shift + (1 - amount)
            assert abs((size[n] - int(removed[n].sum())) - density * size[n]) < 1 + 1e-9, n


def test_a_score_only_criterion_works_with_every_allocation_and_pattern(tmp_path):
    """Written to a temporary folder as one module and one YAML, found through the YAML
    (`hydra.searchpath`) and run by the CLI: under each allocation and under 2:4, the masks
    it wrote equal the keep sets computed here from the dense |w| (brute-force rankings,
    LAMP by its definition, ERK's and OWL's densities by their formulas)."""
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "score_only.py").write_text(SCORE_ONLY)
    (tmp_path / "conf" / "strategy").mkdir(parents=True)
    (tmp_path / "conf" / "strategy" / "magnitude.yaml").write_text(
        "_target_: score_only.Magnitude\nname: magnitude\namount: 0.5\n")
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"cache.dir={tmp_path / 'c'}",
              *TINY]
    env = {"PYTHONPATH": str(tmp_path / "plugin")}
    sweep = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={sweep}", *common,
             f"strategy.allocation={','.join(ALLOCATIONS)}"], cwd=tmp_path, env=env)
    for i, allocation in enumerate(ALLOCATIONS):
        results = json.loads((sweep / str(i) / "results.json").read_text())
        assert results["config"]["strategy"]["allocation"] == allocation
        folder = sweep / str(i) / "checkpoints"
        check_allocation(allocation, torch.load(folder / "dense.pt", weights_only=True),
                         torch.load(folder / "pruned.pt", weights_only=True), results)

    out = tmp_path / "nm"
    run_cli([f"hydra.run.dir={out}", *common, "strategy.pattern=2:4"], cwd=tmp_path, env=env)
    dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)
    pruned = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    for n in (n for n in dense if n.endswith("weight")):
        groups = dense[n].abs().view(len(dense[n]), -1, 4)
        removed = (pruned[n] == 0).view_as(groups)
        for row, group in itertools.product(range(groups.shape[0]), range(groups.shape[1])):
            assert torch.equal(removed[row, group], lowest(groups[row, group], 2)), n
    assert math.isclose(json.loads((out / "results.json").read_text())["pruned"]["sparsity"],
                        0.5)
