"""Comparison statistics, report filters and plots, checked on hand-written results.json files.

The numbers are fixed, so means, standard deviations, confidence intervals and paired tests
are compared with scipy and with the textbook formulas computed here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_cli
from matplotlib import image
from scipy import stats as sps

from prunebench.results import objective, plots, stats, table

L1 = {0: 0.91, 1: 0.88, 2: 0.90}
SNIP = {0: 0.93, 1: 0.92, 2: 0.91}
LAYERS = [("0.weight", 1000, 300), ("2.weight", 500, 200), ("4.weight", 100, 60)]


def fake(root, name, *, strategy="l1", amount=0.9, seed=0, final=0.9, status="ok",
         epochs=2, model="lenet300", dataset="fashion_mnist", variant=None, random=None,
         compact=None):
    """A minimal but complete results.json, as the runner writes it."""
    params = sum(p for _, p, _ in LAYERS)
    nonzero = round(params * (1 - amount))
    strat = {"name": strategy, "amount": amount, "threshold": None, "scope": "global",
             "granularity": "weight"} | ({"variant": variant} if variant else {})
    results = {
        "status": status,
        "config": {"seed": seed, "model": {"name": model}, "dataset": {"name": dataset},
                   "strategy": strat, "schedule": {"name": "oneshot"},
                   "finetune": {"epochs": epochs}, "cache": {"dir": f"/tmp/{seed}"}},
    }
    if status == "ok":
        layers = [{"name": n, "params": p, "nonzero": round(p * (1 - amount) * (1 + i / 4))}
                  for i, (n, p, _) in enumerate(LAYERS)]
        results |= {
            "dense": {"accuracy": 0.95, "sparsity": 0.0, "nonzero": params, "params": params,
                      "flops": 2.0e5, "effective_flops": 2.0e5},
            "pruned": {"accuracy": final - 0.2, "sparsity": amount},
            "final": {"accuracy": final, "sparsity": amount, "nonzero": nonzero,
                      "params": params, "flops": 2.0e5, "effective_flops": 2.0e5 * (1 - amount),
                      "layers": layers},
            "timing": {"prune_s": 0.5}, "cost": {"prune_peak_mb": 12.0},
            "budget": {"finetune_epochs": epochs, "finetune_steps": 10 * epochs},
        }
        if random is not None:
            results["baseline"] = {"final": {"accuracy": random}}
        if compact is not None:
            results["compact"] = compact
    else:
        results["error"] = "non-finite loss in finetune at epoch 0, step 3"
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed in range(3):
        fake(root, f"l1-{seed}", seed=seed, final=L1[seed], random=0.5 + seed / 100)
        fake(root, f"snip-{seed}", strategy="gradient", variant="snip", seed=seed,
             final=SNIP[seed], random=0.6)
        fake(root, f"l1-50-{seed}", amount=0.5, seed=seed, final=0.94)
    fake(root, "snip-diverged", strategy="gradient", variant="snip", seed=3, status="diverged")
    fake(root, "taylor-0", strategy="gradient", variant="taylor", seed=0, final=0.8, epochs=5)
    fake(root, "taylor-1", strategy="gradient", variant="taylor", seed=1, final=0.82, epochs=5)
    latency = {"batch_1": {"dense_ms": 0.2, "compact_ms": 0.05, "speedup": 4.0}}
    fake(root, "l2-0", strategy="l2", final=0.7,
         compact={"macs": 1000, "dense_macs": 9000, "latency": latency})
    return root


def report(root, *args, fmt="json"):
    run_cli([str(root), "--format", fmt, *args], cwd=root, script="prunebench-report")
    return json.loads((root / "comparison.json").read_text()) if fmt == "json" else None


def find(rows, **where):
    found = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (where, rows)
    return found[0]


def test_seed_statistics_match_scipy_and_hand_formulas(runs):
    rows = report(runs)
    l1 = find(rows, strategy="l1", target=0.9)
    a = np.array([L1[s] for s in range(3)])
    assert l1["n"] == 3 and l1["seeds"] == "0,1,2"
    assert l1["final_acc_mean"] == pytest.approx(a.mean())
    sd = math.sqrt(sum((x - a.mean()) ** 2 for x in a) / 2)  # sample std by hand
    assert l1["final_acc_std"] == pytest.approx(sd)
    # t quantile for 2 degrees of freedom at 97.5%, from tables: 4.302652729911275
    assert l1["final_acc_ci95"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3))
    assert l1["delta_acc_mean"] == pytest.approx(a.mean() - 0.95)
    assert l1["compression_mean"] == pytest.approx(10.0)
    assert l1["random_final_acc_mean"] == pytest.approx(0.51)
    assert l1["gain_vs_random_mean"] == pytest.approx(a.mean() - 0.51)

    snip = find(rows, strategy="gradient", variant="snip", status="ok")
    b = np.array([SNIP[s] for s in range(3)])
    assert snip["n"] == 3  # the diverged seed is not averaged in
    assert snip["baseline"] == "l1" and snip["pairs"] == 3
    assert snip["diff_vs_baseline"] == pytest.approx((b - a).mean())
    assert snip["p_value"] == pytest.approx(sps.ttest_rel(b, a).pvalue)
    d = b - a  # paired t by hand
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert snip["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), 2))
    assert snip["flags"] == ""

    diverged = find(rows, strategy="gradient", variant="snip", status="diverged")
    assert diverged["n"] == 0 and diverged["final_acc_mean"] is None
    assert "non-finite" in diverged["error"]

    taylor = find(rows, variant="taylor")
    assert taylor["n"] == 2 and taylor["pairs"] == 2
    assert "budget differs" in taylor["flags"]
    l2 = find(rows, strategy="l2")  # the compact model's measured latency
    assert (l2["latency_ms_mean"], l2["dense_latency_ms_mean"]) == (0.05, 0.2)
    # the 50% group has its own baseline comparison: l1 against itself is not tested
    assert find(rows, strategy="l1", target=0.5)["p_value"] is None


def bh_by_hand(p: list[float]) -> list[float]:
    """Benjamini-Hochberg: sorted p_(i) -> min over j >= i of min(1, m p_(j) / j)."""
    order = sorted(range(len(p)), key=p.__getitem__)
    adjusted, running = [0.0] * len(p), 1.0
    for rank in range(len(p), 0, -1):
        i = order[rank - 1]
        running = min(running, len(p) * p[i] / rank)
        adjusted[i] = running
    return adjusted


def test_adjusted_p_values_cover_every_paired_test_of_the_table(runs):
    """Every p-value of the table (against the baseline, against the random control) is
    adjusted together: equal to scipy's false_discovery_control and to BH by hand; the raw
    ones are kept, and the significance mark reads the adjusted one."""
    run_cli([str(runs)], cwd=runs, script="prunebench-report")  # md, csv and json
    rows = json.loads((runs / "comparison.json").read_text())
    tests = [(r, "p_value", "p_adj") for r in rows if r.get("p_value") is not None]
    tests += [(r, f"{c}_p_mean", f"{c}_p_adj_mean") for r in rows
              for c in ("random", "shuffled", "reinit") if r.get(f"{c}_p_mean") is not None]
    assert len(tests) >= 3
    raw = [r[k] for r, k, _ in tests]
    got = [r[adjusted] for r, _, adjusted in tests]
    assert got == pytest.approx(list(sps.false_discovery_control(raw, method="bh")))
    assert got == pytest.approx(bh_by_hand(raw))
    assert all(a >= p for a, p in zip(got, raw, strict=True))
    header = (runs / "comparison.csv").read_text().splitlines()[0].split(",")
    assert "p_value" in header and "p_adj" in header
    md = (runs / "comparison.md").read_text()
    for r, k, adjusted in tests:
        if k == "p_value":
            assert f"BH p={r[adjusted]:.3g}" in md
    assert table.significance({"p_adj": 0.049}) == " *"
    assert table.significance({"p_adj": 0.051, "p_value": 0.01}) == ""  # raw p is not enough
    alone = stats.group([{"status": "ok", "strategy": "x", "seed": 0}])
    assert math.isnan(alone[0]["p_adj"])  # no test, no adjusted value


def test_markdown_csv_and_terminal_show_mean_std_and_evidence(runs):
    proc = run_cli([str(runs)], cwd=runs, script="prunebench-report")
    md = (runs / "comparison.md").read_text()
    assert f"{np.mean(list(L1.values())):.4f} ± {np.std(list(L1.values()), ddof=1):.4f}" in md
    assert "vs l1 (p=" in md and "diverged" in md
    header = (runs / "comparison.csv").read_text().splitlines()[0].split(",")
    for column in ("final_acc_mean", "final_acc_std", "final_acc_ci95", "p_value",
                   "sparsity_mean", "effective_flops_mean", "prune_peak_mb_mean"):
        assert column in header
    assert "0.9200 ± 0.0100" in proc.stdout  # snip's cell in the terminal table


def test_where_group_by_and_baseline_options(runs):
    rows = report(runs, "--where", "strategy=l1")
    assert {r["strategy"] for r in rows} == {"l1"} and len(rows) == 2
    rows = report(runs, "--where", "variant=snip", "--where", "seed=1")
    assert [r["n"] for r in rows] == [1]
    rows = report(runs, "--where", "finetune.epochs=5")  # dotted config keys work too
    assert {r["variant"] for r in rows} == {"taylor"}

    rows = report(runs, "--group-by", "strategy")  # pools targets and variants per strategy
    l1 = find(rows, strategy="l1", status="ok")
    assert l1["n"] == 6 and l1["final_acc_mean"] == pytest.approx(
        np.mean(list(L1.values()) + [0.94] * 3))

    rows = report(runs, "--baseline", "gradient", "--where", "target=0.9")
    assert find(rows, strategy="l1")["baseline"] == "gradient/snip"

    proc = run_cli([str(runs), "--where", "strategy=nope"], cwd=runs,
                   script="prunebench-report", check=False)
    assert proc.returncode == 1 and "no results.json" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli([str(runs), "--format", "xls"], cwd=runs, script="prunebench-report",
                   check=False)
    assert proc.returncode == 2 and "--format" in proc.stderr


def test_runs_differing_in_more_than_seed_are_not_averaged(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        for epochs in (1, 3):
            fake(root, f"{epochs}-{seed}", seed=seed, epochs=epochs, final=0.8 + epochs / 100)
    rows = report(root)
    assert sorted(r["settings"] for r in rows) == ["finetune.epochs=1", "finetune.epochs=3"]
    assert [r["n"] for r in rows] == [2, 2]


def test_a_criterion_that_chose_its_sparsity_shows_the_sparsity_reached(tmp_path):
    root = tmp_path / "runs"
    for seed, reached in ((0, 0.8), (1, 0.9)):  # l0 without amount: its penalty decides
        fake(root, f"l0-{seed}", strategy="l0", amount=reached, seed=seed)
        path = root / f"l0-{seed}" / "results.json"
        results = json.loads(path.read_text())
        results["config"]["strategy"]["amount"] = None
        path.write_text(json.dumps(results))
    rows = report(root)
    assert [(r["target"], r["n"]) for r in rows] == [("0.8500 (own)", 2)]  # seeds pooled
    report(root, fmt="md")
    table = (root / "comparison.md").read_text()
    assert "| 0.8500 (own) |" in table and "None" not in table


def _nontrivial(path):
    pixels = image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    # more than a couple of colours: lines, markers, text
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50


def test_plots_are_written_and_not_blank(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        for amount in (0.5, 0.9, 0.95):
            for strategy, base in (("l1", 0.97), ("random", 0.9)):
                fake(root, f"{strategy}-{amount}-{seed}", strategy=strategy, amount=amount,
                     seed=seed, final=base - amount / 10 + seed / 100, model="lenet300",
                     dataset="mnist")
    run_cli([str(root), "--plot", "--out", str(tmp_path / "out")], cwd=tmp_path,
            script="prunebench-report")
    for kind in ("accuracy_sparsity", "accuracy_flops", "layer_sparsity"):
        _nontrivial(tmp_path / "out" / f"{kind}_lenet300_mnist.png")


def test_literature_points_and_pareto_frontier():
    published = plots.literature()
    snip = [p for p in published if p["method"] == "SNIP" and p["model"] == "lenet300"]
    assert {(p["sparsity"], round(p["accuracy"], 4)) for p in snip} == {(0.95, 0.984),
                                                                       (0.98, 0.976)}
    han = [p for p in published if p["source"].startswith("Han") and p["model"] == "lenet5"]
    assert han[0]["sparsity"] == pytest.approx(1 - 36 / 431, abs=1e-4)
    points = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (4, 0.8), (5, 0.85)]
    assert plots.pareto(points) == [(1, 0.5), (2, 0.7), (4, 0.9)]


def test_objective_constraints():
    ok = {"status": "ok", "dense": {"accuracy": 0.95},
          "final": {"accuracy": 0.93, "sparsity": 0.85}}
    assert objective.value(ok, {"name": "final_accuracy"}) == 0.93
    at = {"name": "final_accuracy_at_min_sparsity", "min_sparsity": 0.8}
    assert objective.value(ok, at) == 0.93
    assert objective.value(ok, at | {"min_sparsity": 0.9}) == pytest.approx(-0.05)
    drop = {"name": "sparsity_at_max_drop", "max_drop": 0.03}
    assert objective.value(ok, drop) == 0.85
    assert objective.value(ok, drop | {"max_drop": 0.01}) == pytest.approx(-0.01)
    assert objective.value({"status": "diverged"}, drop) == objective.FAILED
    with pytest.raises(ValueError, match="objective.name"):
        objective.value(ok, {"name": "nope"})


def test_objective_selects_on_validation_when_test_ranks_disagree(caplog):
    """Two runs: `a` is better on test, `b` on validation. The objective follows validation
    for every objective name, so a search keeps `b`; a run without a validation split is
    scored on test with one warning."""
    def run(val, test):
        return {"status": "ok", "dense": {"accuracy": 0.97, "validation": {"accuracy": 0.96}},
                "final": {"accuracy": test, "sparsity": 0.9, "validation": {"accuracy": val}}}

    a, b = run(val=0.90, test=0.95), run(val=0.93, test=0.91)
    for name in objective.OBJECTIVES:
        settings = {"name": name, "min_sparsity": 0.8, "max_drop": 0.05}
        assert objective.value(b, settings) >= objective.value(a, settings)
    assert objective.value(a, {"name": "final_accuracy"}) == 0.90
    assert objective.value(b, {"name": "final_accuracy"}) == 0.93
    assert objective.value(a, {"name": "sparsity_at_max_drop", "max_drop": 0.05}) \
        == pytest.approx(-0.01)  # 0.96 - 0.90 on validation; 0.97 - 0.95 on test would pass
    no_split = {"status": "ok", "dense": {"accuracy": 0.97},
                "final": {"accuracy": 0.95, "sparsity": 0.9}}
    with caplog.at_level("WARNING"):
        assert objective.value(no_split, {"name": "final_accuracy"}) == 0.95
    assert "no validation split" in caplog.text


def test_random_same_density_baseline(cli):
    results, out = cli(["baseline.random_same_density=true", "strategy.amount=0.8",
                        "strategy.scope=global", "finetune.epochs=2"])
    twin = results["baseline"]
    assert twin["kind"] == "random_same_density"
    assert twin["budget"] == results["budget"]  # the same fine-tuning budget
    assert twin["budget"]["finetune_epochs"] == 2 and twin["budget"]["finetune_steps"] > 0
    # the same number of weights kept in every layer, but other weights
    assert [(layer["name"], layer["nonzero"]) for layer in twin["final"]["layers"]] == [
        (layer["name"], layer["nonzero"]) for layer in results["final"]["layers"]]
    dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)
    ours = torch.load(out / "checkpoints" / "pruned.pt", weights_only=True)
    theirs = torch.load(out / "baseline" / "checkpoints" / "pruned.pt", weights_only=True)
    for name, w in theirs.items():
        if name.endswith("weight"):
            kept = w != 0
            assert torch.equal(w[kept], dense[name][kept])  # started from the dense weights
            assert not torch.equal(kept, ours[name] != 0)
    # the table credits the criterion with its gain over the twin
    rows = report(out)
    assert rows[0]["random_final_acc_mean"] == pytest.approx(twin["final"]["accuracy"])
    assert rows[0]["gain_vs_random_mean"] == pytest.approx(
        results["final"]["accuracy"] - twin["final"]["accuracy"])
    cost = results["cost"]
    assert "RSS" in cost["memory_method"] and math.isfinite(cost["prune_peak_mb"])
    assert 0 <= cost["prune_peak_mb"] < 4096  # growth of a process pruning a tiny model


def test_peak_memory_sees_a_known_allocation():
    """What prune_peak_mb measures: 64 MiB written inside the block are seen (RSS growth).
    In a fresh process: in the test worker, pages freed by earlier tests can be reused
    without any RSS growth."""
    code = ("import json, torch\n"
            "from prunebench.pruning import memory\n"
            "with memory.peak(torch.device('cpu')) as used:\n"
            "    block = torch.ones(16 * 2**20)\n"  # 64 MiB of float32, every page written
            "print(json.dumps(used))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    used = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "RSS" in used["method"]
    assert 60 <= used["peak_mb"] < 64 + 512
