"""compress.quantize: k-means weight sharing and int8 after pruning, the `quantized` phase,
centroid fine-tuning with masks and assignment held, and the one-line errors of its keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import checkpoint_accuracy, run_cli
from sklearn.cluster import KMeans

from prunebench.compress.quantize import kmeans_1d

PRUNE = ["strategy.amount=0.8"]


def prunable(state: dict) -> dict:
    """The Linear weights of the default MLP (2-D tensors named *.weight)."""
    return {k: v for k, v in state.items() if k.endswith("weight") and v.dim() == 2}


def test_kmeans_1d_matches_sklearn_lloyd_from_the_same_linear_start():
    # normal values: no cluster ends empty (sklearn would move an empty one, this keeps it)
    values = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    centroids, codes = kmeans_1d(values, 8)
    start = np.linspace(float(values.min()), float(values.max()), 8).reshape(-1, 1)
    reference = KMeans(8, init=start, n_init=1, algorithm="lloyd", tol=0, max_iter=300).fit(
        values.double().numpy().reshape(-1, 1))
    assert np.allclose(np.sort(centroids.numpy()), np.sort(reference.cluster_centers_.ravel()),
                       atol=1e-5)
    # every value sits at its nearest centroid
    nearest = (values[:, None] - centroids[None]).abs().argmin(1)
    assert torch.equal(centroids[nearest], centroids[codes])


def test_kmeans_phase_shares_values_and_holds_masks(cli):
    results, out = cli([*PRUNE, "compress.quantize=kmeans", "compress.bits=2",
                        "compress.finetune_epochs=2", "compress.lr_scale=0.5"])
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    quantized = torch.load(out / "checkpoints" / "quantized.pt", weights_only=True)
    without_finetune = {}
    for name, w in prunable(quantized).items():
        nonzero = w[w != 0]
        assert nonzero.unique().numel() <= 4, name  # 2^bits shared values at most
        assert torch.equal(w != 0, final[name] != 0), name  # the masks did not move
        # the assignment is fixed: k-means of the final weights groups them the same way
        centroids, codes = kmeans_1d(final[name][final[name] != 0], 4)
        without_finetune[name] = centroids[codes]
        pairs = torch.stack([codes.double(), nonzero.double()], 1).unique(dim=0)
        assert len(pairs) == len(codes.unique()), name  # one value per cluster
    # fine-tuning moved the shared values away from the k-means centroids
    assert any(not torch.allclose(prunable(quantized)[n][final[n] != 0], v)
               for n, v in without_finetune.items())
    assert results["quantized"]["accuracy"] == pytest.approx(
        checkpoint_accuracy(results, out / "checkpoints" / "quantized.pt"))
    assert results["quantized"]["nonzero"] == results["final"]["nonzero"]
    assert all(layer["levels"] <= 4 for layer in results["compress"]["layers"])
    assert len(results["compress"]["history"]) == 2
    # the centroids' own learning rate: optimizer.lr * compress.lr_scale (the first epoch's)
    lr = results["config"]["optimizer"]["lr"] * 0.5
    assert results["compress"]["history"][0]["lr"] == pytest.approx(lr)
    assert results["compress"]["lr"] == pytest.approx(lr)


def test_int8_phase_is_symmetric_per_output_channel(cli):
    results, out = cli([*PRUNE, "compress.quantize=int8"])
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    quantized = torch.load(out / "checkpoints" / "quantized.pt", weights_only=True)
    for name, w in prunable(final).items():
        # the formula: scale = max|row| / 127, value = round(w / scale) * scale (a row
        # pruned whole stays zero)
        scales = (w.abs().amax(1).double() / 127)[:, None]
        levels = torch.round(w.double() / scales.clamp_min(1e-30))
        assert levels.abs().max() <= 127
        reference = torch.where(scales > 0, levels * scales, 0).float()
        assert torch.allclose(quantized[name], reference, atol=1e-6), name
        assert torch.equal(quantized[name] != 0, w != 0), name
    assert results["quantized"]["accuracy"] == pytest.approx(
        checkpoint_accuracy(results, out / "checkpoints" / "quantized.pt"))


@pytest.mark.parametrize("args, line", [
    (["compress.quantize=kmeans", "compress.bits=0"], "compress.bits=0 is invalid"),
    (["compress.quantize=kmeans", "compress.bits=33"], "compress.bits=33 is invalid"),
    (["compress.quantize=int8", "compress.bits=4"], "compress.bits=4 is invalid"),
    (["compress.quantize=kmeanz"], "compress.quantize=kmeanz is invalid"),
    (["compress.quantize=kmeans", "compress.finetune_epochs=-1"],
     "compress.finetune_epochs=-1 is invalid"),
    (["compress.quantize=kmeans", "compress.lr_scale=-1"], "compress.lr_scale=-1.0 is invalid"),
    (["export.compressed=true"], "export.compressed=true needs compress.quantize"),
    (["compress.quantize=kmeans", "strategy.amount=null", "strategy.threshold=1e9"],
     "no nonzero prunable weight is left to quantize"),
])
def test_bad_compress_settings_end_with_one_line(tmp_path, args, line):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
                    "train.epochs=1", "finetune.epochs=0", *args], tmp_path, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("prunebench: error:") and line in last, proc.stderr
    assert "Traceback" not in proc.stderr


# ---- the compressed file (export.compressed) -------------------------------------------------

FILE_RUN = [*PRUNE, "compress.quantize=kmeans", "compress.bits=3", "export.compressed=true",
            "compress.finetune_epochs=1"]


def test_relative_positions_with_fillers_round_trip():
    from prunebench.compress import file

    positions = np.sort(np.random.default_rng(0).choice(5000, 300, replace=False))
    entries = file.gaps(positions, 3)  # gaps of 7 or more need fillers
    g = np.diff(positions, prepend=-1) - 1
    assert len(entries) == len(positions) + int((g // 7).sum())
    assert entries.max() <= 7
    assert np.array_equal(file.positions_of(entries, 3), positions)
    assert np.array_equal(file.unpack_bits(file.pack_bits(entries, 3), 3, len(entries)), entries)


def test_compressed_file_loads_to_the_quantized_model(cli):
    from omegaconf import OmegaConf

    from prunebench import build, compress
    from prunebench.compress import file
    from prunebench.data import batches

    results, out = cli(FILE_RUN)
    path = out / "checkpoints" / "final.pbz"
    size = results["size"]
    assert path.stat().st_size == size["compressed_bytes"]
    assert size["final_pt_bytes"] == (out / "checkpoints" / "final.pt").stat().st_size
    cfg = OmegaConf.create(results["config"])
    data = build.dataset(cfg)
    quantized = build.model(cfg, data)
    quantized.load_state_dict(torch.load(out / "checkpoints" / "quantized.pt", weights_only=True))
    dense_bytes = sum(v.numel() * 4 for v in quantized.state_dict().values())
    assert size["dense_bytes"] == dense_bytes
    assert size["ratio"] == pytest.approx(dense_bytes / path.stat().st_size)
    assert size["compressed_bytes"] == min(size["coders"].values())
    loaded = compress.load(path, cfg).eval()
    x = next(batches(data, data.test, 256))[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized.eval()(x))
    # every coder writes a file that reads back to the same tensors
    manifest, state = file.read(path)
    layers = [file.Quantized(n, "kmeans", tuple(w.shape), w.flatten().nonzero().flatten(),
                             *_codes(w)) for n, w in prunable(state).items()]
    for coder in file.CODERS:
        blob, _ = file.encode(state, layers, None, {}, coders=(coder,))
        (out / f"{coder}.pbz").write_bytes(blob)
        again = file.read(out / f"{coder}.pbz")[1]
        assert all(torch.equal(again[k], v) for k, v in state.items()), coder
    # the tables show the file's size and ratio
    from prunebench.results import table

    row = table.row(results, "run")
    assert row["size_kb"] == pytest.approx(path.stat().st_size / 1000)
    assert row["compression_x"] == pytest.approx(size["ratio"])


def _codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, table) of a layer whose nonzeros already take few values."""
    table, codes = w[w != 0].unique(return_inverse=True)
    padded = torch.cat([table, table.new_zeros(8 - len(table))])  # 2^3 entries
    return codes, padded


def test_truncated_or_foreign_compressed_file_ends_with_one_line(cli, tmp_path):
    _, out = cli(FILE_RUN)
    path = out / "checkpoints" / "final.pbz"
    truncated = tmp_path / "truncated.pbz"
    truncated.write_bytes(path.read_bytes()[:-40])
    for args, line in [
        ([f"dense.checkpoint={truncated}"], "truncated or corrupt"),
        ([f"dense.checkpoint={path}", "model=lenet300"], "does not fit model"),
    ]:
        proc = run_cli([f"hydra.run.dir={tmp_path / 'again'}", "finetune.epochs=0", *args],
                       tmp_path, check=False)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and last.startswith("prunebench: error:"), proc.stderr
        assert line in last and "Traceback" not in proc.stderr, last
    # the Python loader says the same in one line
    from omegaconf import OmegaConf

    from prunebench import compress
    from prunebench.config.errors import ConfigError

    cfg = OmegaConf.create({"model": {"_target_": "prunebench.models.mlp.MLP", "name": "mlp",
                                      "hidden": [7]}})
    with pytest.raises(ConfigError, match="written from another model"):
        compress.load(path, cfg)
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        compress.load(truncated, cfg)


def test_latency_block_times_a_dynamic_int8_form(cli):
    results, _ = cli([*PRUNE, "inference.measure=true", "compress.quantize=int8"])
    latency = results["latency"]
    assert set(latency["forms"]["int8"]) == {"batch_1", "batch_64"}
    for by_threads in latency["int8_speedups"].values():
        for s in by_threads.values():
            assert s["form"] == "int8" and s["low"] <= s["ratio"] <= s["high"]
    # int8 activations: close to the model's outputs, not equal to them
    assert 0 < latency["int8_max_abs_diff"] < 0.5
    # the run ships int8 weights: the int8 form is the deployed one, its speedup the headline
    headline = latency["int8_speedups"]["batch_64"]["threads_1"]
    assert latency["speedup_form"] == "int8" and latency["speedup"] == headline["ratio"]
    assert latency["speedups"]["batch_1"]["threads_1"]["form"] == "int8"


def test_gpt_quantized_phase_is_perplexity_and_its_file_round_trips(cli, tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. a dog ran in the fog. " * 100, encoding="utf-8")
    results, out = cli(["model=gpt", "dataset=text", f"dataset.path={corpus}",
                        "dataset.seq_len=32", "model.n_embd=32", "model.n_layer=1",
                        "model.n_head=2", "optimizer=adamw", "train.batch_size=16", *PRUNE,
                        "compress.quantize=kmeans", "compress.bits=4", "export.compressed=true"])
    assert "perplexity" in results["quantized"] and "accuracy" not in results["quantized"]
    assert results["size"]["max_abs_diff"] == 0.0
    assert all(layer["levels"] <= 16 for layer in results["compress"]["layers"])
    from prunebench.results import table

    assert table.row(results, "run")["quantized_ppl"] == results["quantized"]["perplexity"]
