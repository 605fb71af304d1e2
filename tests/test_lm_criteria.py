"""N:M patterns, per-row selection, Wanda and SparseGPT against independent references."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import context
from torch import nn

from prunebench.pruning.masks import prunable_weights
from prunebench.strategies.base import PruneContext
from prunebench.strategies.l1 import L1
from prunebench.strategies.patterns import nm_keep, row_keep
from prunebench.strategies.selection import Selection
from prunebench.strategies.sparsegpt import SparseGPT, prune_layer
from prunebench.strategies.wanda import Wanda


def brute_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Python loops: in each group of m along the flattened input dim, drop the n lowest."""
    flat = scores.flatten(1).tolist()
    keep = [[True] * len(row) for row in flat]
    for r, row in enumerate(flat):
        for g in range(0, len(row), m):
            ranked = sorted(range(g, g + m), key=lambda i, row=row: (row[i], i))
            for i in ranked[:n]:
                keep[r][i] = False
    return torch.tensor(keep).view_as(scores)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("shape", [(6, 16), (3, 2, 2, 4)])  # Linear, Conv2d (in, kh, kw)
def test_nm_keep_has_n_zeros_per_group_and_equals_brute_force(n, m, shape):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(n * m))
    scores.view(-1)[:5] = 0.0  # ties: the earlier position goes first, as in bottom_k
    keep = nm_keep(scores, n, m)
    zeros = (~keep).flatten(1).view(shape[0], -1, m).sum(-1)
    assert (zeros == n).all()
    assert torch.equal(keep, brute_nm(scores, n, m))


def test_pattern_through_a_strategy_counts_pruned_weights_first_and_skips_odd_widths():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                          nn.Linear(6, 3))  # the last layer's width 6 is not a multiple of 4
    weights = prunable_weights(model)
    masks = {k: torch.ones_like(w) for k, w in weights.items()}
    masks["0.weight"][0, :3] = 0  # pruned before: the first group of row 0 loses these
    selection = Selection(L1(), amount=0.5, pattern="2:4")
    new = selection.prune(model, weights, masks, context(), 0.5).masks
    for name in ("0.weight", "2.weight"):
        scores = weights[name].detach().abs().masked_fill(masks[name] == 0, -torch.inf)
        expected = brute_nm(scores, 2, 4) & (masks[name] > 0)
        assert torch.equal(new[name] > 0, expected), name
    assert (new["0.weight"][0, :4] == 0).sum() == 3  # what was pruned stays pruned
    assert (new["4.weight"] == 0).sum() == round(0.5 * 18)  # unstructured fallback
    # an intermediate round of a schedule removes fewer per group: round(0.3 * 4) = 1
    ones = {k: torch.ones_like(w) for k, w in weights.items()}
    partial = selection.prune(model, weights, ones, context(), 0.3).masks
    assert ((partial["2.weight"] == 0).view(6, -1, 4).sum(-1) == 1).all()


def test_row_scope_removes_the_same_count_from_every_row():
    scores = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    keep = row_keep(scores, 0.3)
    for r in range(5):
        lowest = sorted(range(10), key=lambda i, r=r: (scores[r, i].item(), i))[:3]
        assert keep[r].tolist() == [i not in lowest for i in range(10)]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))


def calibration(count=3, size=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=g), torch.randint(0, 4, (size,), generator=g))
            for _ in range(count)]


def test_wanda_scores_equal_weight_times_input_norm():
    model, batches = mlp(), calibration()
    weights = prunable_weights(model)
    scores = Wanda(batches=3, sequential=False).score(
        weights, PruneContext(lambda: iter(batches), None, torch.device("cpu"), None,
                              model=model))
    x = torch.cat([b[0] for b in batches])
    hidden = torch.relu(x @ model[0].weight.T + model[0].bias).detach()
    for name, inputs in (("0.weight", x), ("2.weight", hidden)):
        norms = torch.sqrt((inputs ** 2).sum(0))  # ||X_j||_2 over all calibration samples
        expected = weights[name].detach().abs() * norms.unsqueeze(0)
        torch.testing.assert_close(scores[name], expected)


def test_sequential_wanda_reads_later_inputs_through_pruned_layers():
    model, batches = mlp(), calibration()
    weights = prunable_weights(model)
    first, second = (weights[n].detach().clone() for n in ("0.weight", "2.weight"))
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    new = Selection(Wanda(batches=3), amount=0.5, scope="row").prune(
        model, weights, masks, context(batches), 0.5).masks
    x = torch.cat([b[0] for b in batches])
    keep1 = row_keep(first.abs() * x.norm(dim=0), 0.5)
    hidden = torch.relu(x @ (first * keep1).T + model[0].bias).detach()
    keep2 = row_keep(second.abs() * hidden.norm(dim=0), 0.5)
    assert torch.equal(new["0.weight"] > 0, keep1)
    assert torch.equal(new["2.weight"] > 0, keep2)


def brute_force_obs(w, h, amount, block, damp, pattern=None):
    """Textbook OBS, column by column: explicit inverses of H over the remaining columns.

    The mask is chosen at the start of each block (each group of m for N:M) from the weights
    as updated so far, by w_q^2 / [H_F^-1]_qq with F the columns from q on.
    """
    w, h = w.double().clone(), h.double().clone()
    h += damp * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    rows, cols = w.shape
    keep = torch.ones(rows, cols, dtype=torch.bool)
    inv_from = [torch.linalg.inv(h[c:, c:]) for c in range(cols)]  # H_F^-1, F = {c, ...}
    for c in range(cols):
        width = pattern[1] if pattern else block
        if c % width == 0:
            cs = list(range(c, min(c + width, cols)))
            sal = torch.stack([w[:, j] ** 2 / inv_from[j][0, 0] for j in cs], dim=1)
            if pattern:
                for r in range(rows):
                    for j in sorted(range(len(cs)), key=lambda i, r=r: sal[r, i])[:pattern[0]]:
                        keep[r, c + j] = False
            else:
                end = c + len(cs)
                k = round(amount * rows * end) - round(amount * rows * c)
                flat = sorted(itertools.product(range(rows), range(len(cs))),
                              key=lambda rj: sal[rj])
                for r, j in flat[:k]:
                    keep[r, c + j] = False
        for r in range(rows):
            if not keep[r, c]:
                inv = inv_from[c]
                w[r, c:] -= w[r, c] / inv[0, 0] * inv[0, :]
    return w, keep


def spd_inputs(samples: int, width: int, seed: int = 0) -> torch.Tensor:
    """Correlated inputs [samples, width]: what makes compensation matter."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) / width ** 0.5 + torch.eye(width)
    return torch.randn(samples, width, generator=g) @ mix


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_equals_brute_force_obs_on_a_tiny_layer(pattern):
    x = spd_inputs(64, 8)
    h = 2 * x.T @ x / len(x)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    ours, keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", pattern, 4, 0.01)
    ref, ref_keep = brute_force_obs(w, h, 0.5, 4, 0.01, pattern)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(ours.double(), ref * ref_keep, rtol=1e-4, atol=1e-5)
    assert (ours[~keep] == 0).all()
    if pattern:
        assert ((~keep).view(3, -1, 4).sum(-1) == 2).all()


# SparseGPT is greedy (the columns left of q stay fixed once visited), so its reconstruction
# error exceeds the exact optimum for its own mask: measured 1.17-1.27x on 32x64 layers at 50%
# (3 seeds, unstructured and 2:4, damp 1e-4 and 1e-2), while zeroing alone gives 1.42-1.71x.
TOLERANCE = 1.35


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_reconstruction_near_exact_least_squares_for_its_mask(pattern):
    x = spd_inputs(512, 64, seed=3)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    h = 2 * x.T @ x / len(x)
    ours, keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", pattern, 16, 0.01)
    # the exact masked least squares per row: min ||w X - w'_S X_S|| -> H_SS w'_S = H_S: w
    exact = torch.zeros_like(w, dtype=torch.float64)
    hd, wd = h.double(), w.double()
    for r in range(len(w)):
        s = keep[r]
        exact[r, s] = torch.linalg.solve(hd[s][:, s], hd[s] @ wd[r])

    def error(v):
        return torch.linalg.norm((wd - v.double()) @ x.double().T).item()

    assert error(exact) <= error(ours) <= TOLERANCE * error(exact)
    assert error(ours) < 0.9 * error(w * keep)  # compensation beats zeroing alone
    assert (keep.sum() == w.numel() // 2).item()


def round_to_minmax_grid(w: torch.Tensor, bits: int, groupsize: int | None) -> torch.Tensor:
    """Round to nearest: each row (or row and group of columns) of w to its own asymmetric
    min-max grid of 2^bits levels with 0 on it (GPTQ's grid, written out here)."""
    out = w.double().clone()
    width = groupsize or w.shape[1]
    for c in range(0, w.shape[1], width):
        g = out[:, c:c + width]
        low = g.min(1, keepdim=True).values.clamp(max=0)
        high = g.max(1, keepdim=True).values.clamp(min=0)
        scale = (high - low) / (2 ** bits - 1)
        zero = torch.round(-low / scale)
        out[:, c:c + width] = scale * (torch.clamp(torch.round(g / scale) + zero, 0,
                                                   2 ** bits - 1) - zero)
    return out


def low_rank_inputs(samples: int, width: int, rank: int, seed: int) -> torch.Tensor:
    """Inputs near a `rank`-dimensional subspace (a language model's activations are far more
    correlated than spd_inputs'): later columns can absorb an error."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, width, generator=g)
    return (torch.randn(samples, rank, generator=g) @ basis
            + 0.1 * torch.randn(samples, width, generator=g))


@pytest.mark.parametrize("groupsize", [None, 32])
def test_sparsegpt_joint_quantization_beats_pruning_then_rounding(groupsize):
    x = low_rank_inputs(512, 256, 64, seed=3)
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(4))
    h = 2 * x.T @ x / len(x)
    bits = 3
    joint, keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", None, 64, 0.01,
                              wbits=bits, groupsize=groupsize)
    pruned, pruned_keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", None, 64, 0.01)
    rounded = round_to_minmax_grid(pruned, bits, groupsize) * pruned_keep

    def error(v):
        return torch.linalg.norm((w.double() - v.double()) @ x.double().T).item()

    # the OBS update absorbs the rounding error too. Measured ||WX - W'X|| against pruning
    # then rounding, 3 seeds of this setting: 0.74-0.78x per row, 0.79-0.85x in groups of 32
    # (at 4 bits 0.91-0.96x; on 64-wide layers with spd_inputs 0.92-0.98x)
    assert error(joint) < 0.9 * error(rounded)
    assert error(pruned) < error(joint)  # 3-bit weights cost something
    # at most 2^bits levels (zero among them) in each quantization group, pruned weights zero
    width = groupsize or w.shape[1]
    for c in range(0, w.shape[1], width):
        assert all(row.unique().numel() <= 2 ** bits for row in joint[:, c:c + width])
    assert (joint[~keep] == 0).all() and (~keep).sum() == w.numel() // 2


def test_sparsegpt_strategy_prunes_layers_in_sequence_to_the_target():
    model, batches = mlp(), calibration()
    weights = prunable_weights(model)
    first, second = (weights[n].detach().clone() for n in ("0.weight", "2.weight"))
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    strategy = Selection(SparseGPT(batches=3, block_size=4), amount=0.5, scope="layer")
    new = strategy.prune(model, weights, masks, context(batches), 0.5).masks
    x = torch.cat([b[0] for b in batches])
    pruned1, keep1 = prune_layer(first, 2 * x.T @ x / len(x), torch.ones_like(first), 0.5,
                                 "layer", None, 4, 0.01)
    hidden = torch.relu(x @ pruned1.T + model[0].bias).detach()  # through the pruned layer
    pruned2, keep2 = prune_layer(second, 2 * hidden.T @ hidden / len(x),
                                 torch.ones_like(second), 0.5, "layer", None, 4, 0.01)
    for name, w, keep in (("0.weight", pruned1, keep1), ("2.weight", pruned2, keep2)):
        torch.testing.assert_close(weights[name].detach(), w)
        assert torch.equal(new[name] > 0, keep)
        assert (new[name] == 0).sum() == w.numel() // 2


def test_sparsegpt_strategy_quantizes_every_layer_it_prunes_with_wbits():
    model, batches = mlp(), calibration()
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    strategy = Selection(SparseGPT(batches=3, block_size=4, wbits=2), amount=0.5, scope="layer")
    new = strategy.prune(model, weights, masks, context(batches), 0.5).masks
    for name, w in weights.items():  # rows keep more than 4 weights: without wbits, 4+ values
        assert all(row.unique().numel() <= 4 for row in w.detach()), name
        assert (w.detach()[new[name] == 0] == 0).all() and (new[name] == 0).sum() == w.numel() // 2


def test_wanda_and_sparsegpt_prune_a_gpt_exactly_2_4_through_the_cli(tmp_path):
    from helpers import run_cli

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. a dog ran to the park! " * 60, encoding="utf-8")
    sweep = tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}",
             "model=gpt", "dataset=text", f"dataset.path={corpus}", "dataset.seq_len=32",
             "model.n_embd=32", "model.n_layer=2", "model.n_head=2", "optimizer=adamw",
             "train.batch_size=16", "train.epochs=1", "finetune.epochs=0", "train.threads=1",
             "strategy=wanda,sparsegpt", "strategy.pattern=2:4", "strategy.amount=0.5",
             "strategy.batches=2", "export.semi_structured=true", "device=cpu"], cwd=tmp_path)
    for run in ("0", "1"):
        results = json.loads((sweep / run / "results.json").read_text())
        assert results["semi_structured"] == {"skipped": "needs CUDA (device is cpu)"}
        state = torch.load(sweep / run / "checkpoints" / "pruned.pt")
        linears = [n for n in state if n.startswith("blocks.") and n.endswith("weight")
                   and state[n].dim() == 2]
        assert len(linears) == 2 * 4  # qkv, proj, mlp in and out per block
        for name in linears:
            zeros = (state[name] == 0).view(state[name].shape[0], -1, 4).sum(-1)
            assert (zeros == 2).all(), (run, name)
        assert (state["wte.weight"] != 0).all()  # embeddings and the tied head stay dense


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need CUDA")
def test_semi_structured_export_matches_the_dense_forward_on_cuda():
    from prunebench.pruning import semi_structured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128)).cuda()
    for layer in (model[0], model[2]):
        layer.weight.data *= nm_keep(layer.weight.abs(), 2, 4)
    result = semi_structured.run(model, torch.randn(64, 256, device="cuda"))
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["converted"] == ["0", "2"]
    assert result["max_abs_diff"] < 0.05 and result["dense_ms"] > 0 and result["sparse_ms"] > 0


def test_calibration_groups_are_a_gpts_blocks_and_memory_is_planned_first():
    from prunebench.config.errors import ConfigError
    from prunebench.models.gpt import GPT
    from prunebench.strategies import calibration, sparsegpt

    model = GPT((8,), 256, n_embd=16, n_layer=2, n_head=2)
    weights = prunable_weights(model)
    order = calibration.forward_order(model, weights, torch.randint(0, 256, (2, 8)))
    block = ["attn.qkv.weight", "attn.proj.weight", "mlp.0.weight", "mlp.2.weight"]
    assert calibration.layer_groups(model, order) == [[f"blocks.{i}.{n}" for n in block]
                                                      for i in range(2)]
    # a budget below one layer's Hessian splits each block into single layers
    assert calibration.split_to_fit([block], lambda n: 10, 15) == [[n] for n in block]
    with pytest.raises(ConfigError, match="strategy.max_memory_gb"):
        sparsegpt.memory_plan(weights, torch.zeros(2, 8), budget=1000)
