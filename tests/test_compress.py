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
                        "compress.finetune_epochs=2"])
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
