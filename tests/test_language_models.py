"""Language models: text windows, the GPT, perplexity, and LM rows in tables and objectives.

Perplexity is checked against exp(mean token cross-entropy) computed here token by token
from log-softmax; the split is checked against the file's own bytes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_cli

from prunebench.data import text
from prunebench.models.gpt import GPT
from prunebench.results import objective, stats, table
from prunebench.training.loop import FitSettings, evaluate, fit

# a small text with structure a model can learn within a few epochs
SENTENCES = ["the cat sat on the mat. ", "a dog ran to the park! ", "we like green tea; ",
             "naïve café au lait. "]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("".join(SENTENCES[i % 4] for i in range(200)), encoding="utf-8")
    return path


def test_text_split_is_contiguous_bytes_with_next_token_targets(corpus):
    data = text.load(path=str(corpus), seq_len=16, val_fraction=0.1, test_fraction=0.1)
    stream = torch.tensor(list(corpus.read_bytes()))
    n_test = round(len(stream) * 0.1)
    test_stream = stream[-n_test:]
    assert data.num_classes == 256 and data.input_shape == (16,) and data.task == "lm"
    assert torch.equal(data.train.x.flatten(), stream[:len(data.train) * 16])
    assert torch.equal(data.test.x.flatten(), test_stream[:len(data.test) * 16])
    assert torch.equal(data.test.y.flatten(), test_stream[1:len(data.test) * 16 + 1])
    assert len(data.test) == (n_test - 1) // 16


def test_perplexity_is_exp_of_mean_token_cross_entropy(corpus):
    data = text.load(path=str(corpus), seq_len=16)
    torch.manual_seed(0)
    model = GPT((16,), 256, n_embd=32, n_layer=1, n_head=2)
    got = evaluate(model, data, data.test, batch_size=48)  # 3 windows per batch
    model.eval()
    nll = []
    with torch.no_grad():
        for x, y in zip(data.test.x, data.test.y, strict=True):
            logp = torch.log_softmax(model(x[None])[0].double(), -1)
            nll += [-logp[t, y[t]].item() for t in range(len(y))]
    assert "accuracy" not in got
    assert got["loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)


def test_gpt_learns_a_tiny_text(corpus):
    data = text.load(path=str(corpus), seq_len=32)
    torch.manual_seed(0)
    model = GPT((32,), 256, n_embd=32, n_layer=1, n_head=2)
    before = evaluate(model, data, data.test)["perplexity"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = fit(model, data, optimizer, None, FitSettings(epochs=6, batch_size=16),
                  torch.Generator().manual_seed(0), "train")
    after = evaluate(model, data, data.test)["perplexity"]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert before > 200 and after < 12, (before, after)  # 256 = guessing uniformly


def test_gpt_prunes_only_block_linears_and_reports_perplexity_per_phase(cli, corpus):
    results, out = cli(["model=gpt", "dataset=text", f"dataset.path={corpus}",
                        "dataset.seq_len=32", "model.n_embd=32", "model.n_layer=2",
                        "model.n_head=2", "optimizer=adamw", "train.batch_size=16",
                        "strategy.amount=0.5"])
    assert results["status"] == "ok"
    for phase in ("dense", "pruned", "final"):
        metrics = results[phase]
        assert "accuracy" not in metrics
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert results["final"]["perplexity"] <= results["pruned"]["perplexity"]
    assert results["dense"]["perplexity"] < 100  # 256 = guessing uniformly
    names = [layer["name"] for layer in results["final"]["layers"]]
    assert names and all(n.startswith("blocks.") for n in names)
    assert results["final"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    state = torch.load(out / "checkpoints" / "final.pt")
    for dense in ("wte.weight", "wpe.weight", "ln_f.weight"):
        assert torch.count_nonzero(state[dense]) == state[dense].numel()
    # l1 draws no calibration data; the record says so
    assert results["calibration"] == {"source": "text:train", "text": None, "seed": 1,
                                      "samples_limit": None,
                                      "batch_size": 16, "windows": 0, "seq_len": None,
                                      "sha256": None}


def test_gpt_neuron_pruning_removes_mlp_units_and_keeps_the_head_split(cli, corpus):
    """granularity=neuron on the GPT: the MLP's hidden units go (half of every mlp.0), the
    qkv layers stay whole (their outputs are unbound into q, k, v), and the compact model,
    rebuilt from compact.pt by prunebench's reader, computes what final.pt's masked model does."""
    from prunebench.pruning import compact

    results, out = cli(["model=gpt", "dataset=text", f"dataset.path={corpus}",
                        "dataset.seq_len=32", "model.n_embd=32", "model.n_layer=2",
                        "model.n_head=2", "train.batch_size=16", "strategy=l2",
                        "strategy.amount=0.5"])
    assert results["status"] == "ok"
    report = results["compact"]
    assert report["widths"] == {f"blocks.{i}.mlp.0.weight": [64, 128] for i in range(2)}
    assert all("unbound" in report["fixed"][f"blocks.{i}.attn.qkv.weight"] for i in range(2))
    masked = GPT((32,), 256, n_embd=32, n_layer=2, n_head=2).eval()
    masked.load_state_dict(torch.load(out / "checkpoints" / "final.pt"))
    small = compact.load(out / "checkpoints" / "compact.pt")
    assert small.blocks[0].mlp[0].out_features == 64 and small.blocks[1].mlp[2].in_features == 64
    x = torch.randint(256, (3, 32))
    with torch.no_grad():
        expected = masked(x)
        assert torch.allclose(small(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    # pruned weights: mlp.0's removed rows and mlp.2's matching columns, nothing else
    assert results["final"]["nonzero"] == results["final"]["params"] - 2 * (64 * 32 + 32 * 64)


def test_missing_text_file_is_one_line(tmp_path):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", "model=gpt", "dataset=text",
                    f"dataset.path={tmp_path / 'nope.txt'}"], cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "dataset.path" in lines[0], proc.stderr


def lm_results(strategy: str, seed: int, final_ppl: float) -> dict:
    layers = [{"name": "blocks.0.mlp.0.weight", "params": 100, "nonzero": 50}]
    return {"status": "ok",
            "config": {"seed": seed, "model": {"name": "gpt"}, "dataset": {"name": "text"},
                       "strategy": {"name": strategy, "amount": 0.5, "scope": "global",
                                    "granularity": "weight"},
                       "schedule": {"name": "oneshot"}},
            "dense": {"perplexity": 5.0, "loss": math.log(5.0), "sparsity": 0.0},
            "pruned": {"perplexity": final_ppl + 3, "sparsity": 0.5},
            "final": {"perplexity": final_ppl, "sparsity": 0.5, "nonzero": 50, "params": 100,
                      "layers": layers}}


def test_tables_and_objective_know_lower_perplexity_is_better():
    l1 = {0: 6.0, 1: 6.5, 2: 6.2}
    wanda = {0: 5.5, 1: 5.9, 2: 5.8}
    rows = [table.row(lm_results(name, seed, ppl[seed]), f"{name}-{seed}")
            for name, ppl in (("l1", l1), ("random", wanda)) for seed in range(3)]
    groups = stats.group(rows)
    best = table.best_per_target(groups)
    assert [groups[i]["strategy"] for i in best] == ["random"]
    other = next(g for g in groups if g["strategy"] == "random")
    assert other["diff_vs_baseline"] == pytest.approx(sum(wanda.values()) / 3
                                                      - sum(l1.values()) / 3)
    assert "ppl vs l1" in table.versus(other)
    headers = [h for _, h, _ in table.metric_columns(groups)]
    assert "final ppl" in headers and "final acc" not in headers
    md = table.markdown(groups)
    assert f"{sum(wanda.values()) / 3:.3f}" in md
    assert objective.value(lm_results("l1", 0, 6.0), {"name": "final_accuracy"}) \
        == pytest.approx(1 / 6.0)
    drop = {"name": "sparsity_at_max_drop", "max_drop": 0.25}
    assert objective.value(lm_results("l1", 0, 6.0), drop) == 0.5  # 6/5 - 1 = 0.2 <= 0.25
    assert objective.value(lm_results("l1", 0, 6.5), drop) == pytest.approx(-0.05)
    json.dumps(table.records(groups))  # plain JSON for comparison.json


def test_calibration_draw_is_recorded_and_reproducible(cli, corpus):
    """Wanda with calibration.seed and calibration.samples: results.json records the windows
    drawn, their length, the seed and the SHA-256 of their token ids, which equal a draw made
    here from the same split with the same seed."""
    import hashlib

    from omegaconf import OmegaConf

    from prunebench import build
    from prunebench.data import batches

    results, _ = cli(["model=gpt", "dataset=text", f"dataset.path={corpus}",
                      "dataset.seq_len=16", "model.n_embd=32", "model.n_layer=1",
                      "model.n_head=2", "train.batch_size=8", "strategy=wanda",
                      "strategy.amount=0.5", "calibration.seed=7", "calibration.samples=12"])
    record = results["calibration"]
    assert (record["seed"], record["windows"], record["seq_len"]) == (7, 12, 16)
    data = build.dataset(OmegaConf.create(results["config"]))
    drawn = batches(data, data.train, 8, shuffle=True, generator=torch.Generator().manual_seed(7))
    ids = torch.cat([x for x, _ in drawn])[:12]
    assert record["sha256"] == hashlib.sha256(ids[:8].numpy().tobytes()
                                              + ids[8:].numpy().tobytes()).hexdigest()


def test_calibration_seeds_fold_into_one_row_with_model_seeds(tmp_path):
    """Two model seeds x two calibration seeds per strategy: one row each, n = 4, the paired
    test over the four (seed, calibration seed) pairs (scipy's ttest_rel)."""
    from scipy import stats as sps

    ppl = {}
    for strategy, base in (("l1", 6.0), ("wanda", 5.5)):
        for seed in (0, 1):
            for draw in (5, 6):
                value = base + 0.1 * seed + 0.03 * draw * (strategy == "wanda")
                ppl[strategy, seed, draw] = value
                results = lm_results(strategy, seed, value)
                results["config"]["calibration"] = {"seed": draw, "samples": 128}
                folder = tmp_path / f"{strategy}-{seed}-{draw}"
                folder.mkdir()
                (folder / "results.json").write_text(json.dumps(results))
    rows = stats.group(table.collect(tmp_path))
    assert len(rows) == 2 and all(r["n"] == 4 for r in rows)
    wanda = next(r for r in rows if r["strategy"] == "wanda")
    assert wanda["seeds"] == "0,1 x calibration 5,6" and wanda["pairs"] == 4
    keys = [(s, d) for s in (0, 1) for d in (5, 6)]
    a = [ppl["wanda", s, d] for s, d in keys]
    b = [ppl["l1", s, d] for s, d in keys]
    assert wanda["final_ppl_mean"] == pytest.approx(sum(a) / 4)
    assert wanda["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
