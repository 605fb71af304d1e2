"""Sparse execution and measured latency: the CSR form computes what the masked model computes,
`auto` keeps the kernel it measured faster, every form is timed, exports load back exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import run_cli
from torch import nn

from prunebench.models.gpt import GPT
from prunebench.models.lenet5 import LeNet5
from prunebench.models.library import timm_model, torchvision_model
from prunebench.models.mlp import MLP
from prunebench.models.resnet import CifarResNet
from prunebench.models.resnet18 import ResNet18
from prunebench.models.vgg import VGG
from prunebench.models.vit import ViT
from prunebench.pruning import latency, sparse
from prunebench.pruning.masks import prunable_weights


def images(*shape):
    return lambda batch: torch.randn(batch, *shape)


def tokens(vocabulary, length):
    return lambda batch: torch.randint(vocabulary, (batch, length))


def tiny_hf_gpt2() -> nn.Module:
    """model=hf on a 2-block GPT-2 saved with save_pretrained and loaded back (Conv1D layers
    become Linear at load)."""
    import tempfile

    import transformers

    from prunebench.models.hf import HFCausalLM

    config = transformers.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2)
    with tempfile.TemporaryDirectory() as folder:
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
        return HFCausalLM((60,), 50, name=folder)


# every built-in family: (model, a batch of its inputs); the GPT's 5 x 60 = 300 token rows are
# more than one ROW_CHUNK of the Linear layers' CSR product, and the last chunk is partial
FAMILIES = {
    "lenet300": (lambda: MLP((1, 28, 28), 10, hidden=(300, 100)), images(1, 28, 28)),
    "lenet5": (lambda: LeNet5((1, 28, 28), 10), images(1, 28, 28)),
    "resnet": (lambda: CifarResNet((3, 16, 16), 10, depth=8, widths=(4, 8, 8)),
               images(3, 16, 16)),
    "vgg": (lambda: VGG((3, 32, 32), 10, depth=11), images(3, 32, 32)),
    "vit": (lambda: ViT((3, 16, 16), 10, dim=32, depth=2), images(3, 16, 16)),
    "gpt": (lambda: GPT((60,), 50, n_embd=32, n_layer=2), tokens(50, 60)),
    "hf": (tiny_hf_gpt2, tokens(50, 60)),
    "resnet18": (lambda: ResNet18((3, 16, 16), 10), images(3, 16, 16)),
    # depthwise convolutions, which the sparse form leaves as they are (dense)
    "torchvision": (lambda: torchvision_model((3, 32, 32), 10, "mobilenet_v3_small"),
                    images(3, 32, 32)),
    "timm": (lambda: timm_model((3, 32, 32), 10, "test_convnext"), images(3, 32, 32)),
}
MEASURED = ["inference.measure=true", "model.hidden=[64,32]", "strategy.amount=0.9",
            "train.epochs=1", "finetune.epochs=0"]


def pruned(family: str, keep: float = 0.1, seed: int = 0) -> tuple[nn.Module, tuple]:
    build, inputs = FAMILIES[family]
    torch.manual_seed(seed)
    model = build().eval()
    with torch.no_grad():
        for w in prunable_weights(model).values():
            w.mul_(torch.rand_like(w) < keep)
        for m in model.modules():  # non-trivial normalization statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model, inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_csr_form_computes_the_masked_model(family):
    model, inputs = pruned(family)
    form, layers = sparse.sparse_form(model)
    kinds = {type(layer.dense) for layer in layers.values()}
    assert nn.Linear in kinds and (family in ("lenet300", "gpt", "hf") or nn.Conv2d in kinds)
    for layer in layers.values():
        layer.use_csr = True
    x = inputs(5)
    with torch.no_grad():
        expected, got = model(x), form(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert sparse.max_diff(model, form, layers, x)["max_rel_diff"] < 1e-5
    # the unfold path really ran: a strided, padded 3x3 convolution and a 1x1 one
    if family == "resnet":
        convs = [layer.dense for layer in layers.values() if isinstance(layer.dense, nn.Conv2d)]
        assert any(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    if family in ("torchvision", "timm"):  # pruned grouped convolutions stayed, and ran, dense
        grouped = [m for m in form.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert grouped and all(bool((m.weight == 0).any()) for m in grouped)


def test_unpruned_layers_keep_dense_kernels():
    """At 0% sparsity no layer is even tried on CSR, so the deployed form is the dense model:
    speedup exactly 1, form dense, and no sparse form timed against it."""
    model, inputs = pruned("lenet300", keep=1.0)
    result = latency.measure(model, model, inputs(4), "auto", None,
                             torch.device("cpu"), batch_sizes=(1, 4))
    rows = [r for b in result["kernels"].values() for t in b.values() for r in t]
    assert rows and all(r["kernel"] == "dense" and r["csr_us"] is None for r in rows)
    assert result["max_rel_diff"] < 1e-5
    assert result["speedup"] == 1.0 and result["speedup_form"] == "dense"
    assert result["speedup_low"] == result["speedup_high"] == 1.0
    # (int8: the dynamic-int8 form, its own ratio, never the deployed one)
    assert not result["speedup_significant"] and set(result["forms"]) - {"int8"} == {"dense",
                                                                                    "masked"}


def test_interleaved_rounds_alternate_their_order_on_one_pinned_core():
    """After two warm-up calls each, rounds run a, b, c then c, b, a ...; at one thread every
    call runs with the thread bound to one CPU, and its affinity is restored after."""
    calls, cpus = [], []
    fns = {n: (lambda n=n: (calls.append(n), cpus.append(len(os.sched_getaffinity(0)))))
           for n in "abc"}
    kept = os.sched_getaffinity(0)
    times = sparse.interleaved(fns, 1, block_s=0.0, budget_s=0.0, rounds=(4, 4))
    assert calls == list("aabbcc") + list("abccbaabccba")
    assert all(len(t) == 4 for t in times.values())
    assert set(cpus) == {1} and os.sched_getaffinity(0) == kept


def test_paired_speedup_is_the_median_paired_ratio_with_its_interval():
    """Rounds where the deployed form takes half the time: ratio 2 and an interval around it
    that excludes 1, even when the load changes from round to round (it slows both sides of
    a pair); two forms timed alike: an interval containing 1, not significant. The interval
    is compared with a bootstrap of the median ratio written here."""
    rng = np.random.default_rng(1)
    dense = 1.0 + 0.1 * rng.random(15)
    load = np.where(np.arange(15) % 3 == 0, 3.0, 1.0)  # every third round three times slower
    clear = latency.paired_speedup({"dense": list(dense * load),
                                    "sparse": list(dense * load / 2)}, "sparse")
    assert clear["ratio"] == pytest.approx(2.0) and clear["significant"]
    assert clear["low"] == pytest.approx(2.0) and clear["high"] == pytest.approx(2.0)
    dense, other = 1.0 + 0.1 * rng.random(101), 1.0 + 0.1 * rng.random(101)
    even = latency.paired_speedup({"dense": list(dense), "sparse": list(other)}, "sparse")
    assert even["ratio"] == pytest.approx(np.median(dense / other))
    assert even["low"] < 1.0 < even["high"] and not even["significant"]
    picks = rng.integers(0, 101, (20000, 101))  # the pairs resampled
    medians = np.median((dense / other)[picks], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    assert even["low"] == pytest.approx(low, abs=0.01)
    assert even["high"] == pytest.approx(high, abs=0.01)
    assert latency.paired_speedup({"dense": list(dense)}, "dense") == {
        "ratio": 1.0, "low": 1.0, "high": 1.0, "significant": False, "form": "dense",
        "rounds": 101}


def test_forced_csr_and_dense_kernels():
    model, inputs = pruned("lenet300")
    x = inputs(4)
    forced = latency.measure(model, model, x, "csr", None, torch.device("cpu"), (2,))
    assert {r["kernel"] for t in forced["kernels"]["batch_2"].values() for r in t} == {"csr"}
    assert forced["speedup_form"] == "sparse"
    assert forced["speedup_low"] <= forced["speedup"] <= forced["speedup_high"]
    plain = latency.measure(model, model, x, "dense", None, torch.device("cpu"), (2,))
    assert "sparse" not in plain["forms"]
    assert plain["speedup"] == 1.0 and plain["speedup_form"] == "dense"


def test_every_thread_count_gets_its_own_kernels_and_times():
    """One thread and the default count (two here, whatever the suite's one-thread default):
    kernels are chosen and every form timed at each; auto's choice follows its own timings."""
    model, inputs = pruned("lenet300", keep=0.05)
    kept = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = latency.measure(model, model, inputs(8), "auto", None, torch.device("cpu"),
                                 batch_sizes=(8,))
    finally:
        torch.set_num_threads(kept)
    assert result["threads"] == [1, 2]
    for t in ("threads_1", "threads_2"):
        assert all(result["forms"][form]["batch_8"][t] > 0 for form in ("dense", "masked"))
        rows = result["kernels"]["batch_8"][t]
        timed = [r for r in rows if r["csr_us"] is not None]
        assert timed and all(r["kernel"] == ("csr" if sparse.csr_wins(r["dense_us"], r["csr_us"])
                                             else "dense") for r in timed)
        speedup = result["speedups"]["batch_8"][t]
        # the sparse form is timed, and is the deployed form, exactly when a layer runs CSR
        on_csr = any(r["kernel"] == "csr" for r in rows)
        assert speedup["form"] == ("sparse" if on_csr else "dense")
        assert (t in result["forms"].get("sparse", {}).get("batch_8", {})) == on_csr
        assert speedup["low"] <= speedup["ratio"] <= speedup["high"]


def test_sparse_state_round_trip():
    model, _ = pruned("lenet5")
    state = model.state_dict()
    names = set(prunable_weights(model))
    saved = sparse.csr_state(state, names)
    assert set(saved["csr"]) == names
    parts = saved["csr"]["features.3.weight"]
    nonzero = int(torch.count_nonzero(state["features.3.weight"]))
    assert parts["values"].numel() == nonzero and parts["col_indices"].dtype == torch.int32
    back = sparse.dense_state(saved)
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_run_measures_every_form_and_exports_sparse(cli, tmp_path):
    results, out = cli([*MEASURED, "export.sparse=true"])
    lat = results["latency"]
    assert {"dense", "masked"} <= set(lat["forms"]) <= {"dense", "masked", "sparse", "int8"}
    threads = [f"threads_{t}" for t in lat["threads"]]
    assert "threads_1" in threads
    for form in ("dense", "masked"):
        for batch in ("batch_1", "batch_64"):
            assert all(lat["forms"][form][batch][t] > 0 for t in threads)
    assert lat["speedup_at"] == "batch_64/threads_1"
    # the speedup is the deployed form's: sparse when a layer runs CSR there, else exactly 1
    head = lat["speedups"]["batch_64"]["threads_1"]
    assert lat["speedup"] == head["ratio"] and lat["speedup_form"] == head["form"]
    rounds = lat["rounds_ms"]  # the headline setting's rounds, each form's ms per call
    assert len(rounds["dense"]) == head["rounds"] and lat["forms"]["dense"]["batch_64"][
        "threads_1"] == pytest.approx(float(np.median(rounds["dense"])))
    if head["form"] == "sparse":
        assert lat["speedup"] == pytest.approx(float(np.median(
            np.array(rounds["dense"]) / np.array(rounds["sparse"]))))
        assert lat["speedup_low"] <= lat["speedup"] <= lat["speedup_high"]
        assert head["rounds"] >= latency.HEADLINE_ROUNDS[0]
    else:
        assert lat["speedup"] == 1.0 and "threads_1" not in lat["forms"].get(
            "sparse", {}).get("batch_64", {})
    assert lat["max_rel_diff"] < 1e-5
    # auto kept CSR, for every layer at every setting, only where it measured a clear gain
    rows = [r for b in lat["kernels"].values() for t in b.values() for r in t]
    assert len(rows) == 3 * 2 * len(threads)
    for r in rows:
        assert r["density"] <= sparse.MAX_DENSITY  # 90% pruned: every layer timed
        assert r["kernel"] == ("csr" if sparse.csr_wins(r["dense_us"], r["csr_us"]) else "dense")
    # the sparse checkpoint: smaller than final.pt, and the same weights
    export, = (e for e in results["exports"] if e["file"].endswith("final_sparse.pt"))
    assert export["size"] == (out / export["file"]).stat().st_size
    assert export["size"] < 0.5 * (out / "checkpoints" / "final.pt").stat().st_size
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    back = sparse.dense_state(torch.load(out / export["file"], weights_only=True))
    assert back.keys() == final.keys()
    assert all(torch.equal(back[k], final[k]) for k in final)
    # the tables and the plot show it
    report = tmp_path / "report"
    run_cli([str(out), "--out", str(report), "--plot"], cwd=tmp_path, script="prunebench-report")
    header, _, row = (report / "comparison.md").read_text().splitlines()[:3]
    assert "| speedup |" in header and f"| {lat['speedup']:.2f}x " in row
    record = json.loads((report / "comparison.json").read_text())[0]
    assert record["speedup_mean"] == pytest.approx(lat["speedup"])
    assert list(report.glob("accuracy_latency_*.png"))


def test_neuron_run_times_the_compact_model(cli):
    results, _ = cli([*MEASURED, "strategy.granularity=neuron", "strategy.amount=0.5"])
    lat = results["latency"]
    assert lat["forms"]["compact"]["batch_64"]["threads_1"] > 0
    assert lat["speedup_form"] == "compact"  # the compact model is what a user deploys
    assert lat["speedup_low"] <= lat["speedup"] <= lat["speedup_high"]


def test_dense_kernels_everywhere_report_exactly_one(cli, tmp_path):
    """A run where no layer runs a sparse kernel: speedup 1.00 with form dense, in
    results.json, in the run's table and in the comparison table."""
    results, out = cli([*MEASURED, "inference.kernel=dense"])
    lat = results["latency"]
    assert lat["speedup"] == 1.0 and lat["speedup_form"] == "dense"
    assert all(s["ratio"] == 1.0 and s["form"] == "dense"
               for b in lat["speedups"].values() for s in b.values())
    report = tmp_path / "report"
    run_cli([str(out), "--out", str(report)], cwd=tmp_path, script="prunebench-report")
    assert "| 1.00x (dense) |" in (report / "comparison.md").read_text()
    record = json.loads((report / "comparison.json").read_text())[0]
    assert record["speedup_mean"] == 1.0 and record["speedup_form"] == "dense"


def test_measure_false_has_no_latency(cli):
    results, out = cli(["inference.measure=false", "model.hidden=[16]", "train.epochs=1",
                        "finetune.epochs=0"])
    assert results["status"] == "ok" and "latency" not in results
    assert "exports" not in results and not (out / "checkpoints" / "final_sparse.pt").exists()
