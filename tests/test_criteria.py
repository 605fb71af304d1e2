"""Gradient, Hessian, OBS and L0 criteria against independent references on tiny networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import context, tiny_net
from torch import nn
from torch.func import functional_call

from prunebench.pruning.masks import prunable_weights
from prunebench.strategies import l0, obs
from prunebench.strategies.gradient import Gradient
from prunebench.strategies.hessian import Hessian
from prunebench.strategies.l0 import L0
from prunebench.strategies.selection import Selection


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only add overhead (and contention on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batches(count: int = 3, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(count)]


def full_hessian(model: nn.Module, batches) -> torch.Tensor:
    """The Hessian of the mean batch loss over all prunable weights, flattened, by autograd."""
    weights = {n: w.detach() for n, w in prunable_weights(model).items()}
    sizes = [w.numel() for w in weights.values()]
    params = dict(model.named_parameters())

    def loss(flat):
        ws = {n: v.view_as(weights[n]) for n, v in zip(weights, flat.split(sizes), strict=True)}
        return sum(F.cross_entropy(functional_call(model, {**params, **ws}, (x,)), y)
                   for x, y in batches) / len(batches)

    flat = torch.cat([w.flatten() for w in weights.values()])
    return torch.autograd.functional.hessian(loss, flat)


def flatten(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors.values()])


def reference_batch_grads(model, batches):
    """Per-batch gradients through .backward() and .grad, not the code under test."""
    out = []
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        out.append({n: w.grad.clone() for n, w in prunable_weights(model).items()})
    return out


def test_exact_hessian_diagonal_equals_autograd_hessian():
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    strategy = Hessian(estimator="exact")
    diag = strategy.diagonal(model, weights, batches, context(batches, model))
    expected = full_hessian(model, batches).diagonal()
    assert torch.allclose(flatten(diag), expected, atol=1e-5, rtol=0)
    scores = strategy.score(weights, context(batches, model))
    assert torch.allclose(flatten(scores), 0.5 * expected * flatten(weights).pow(2), atol=1e-6)


def test_obd_rounds_recompute_the_diagonal_on_the_pruned_model():
    """rounds=3 to 60%: three equal steps (20, 40, 60% of all weights), each ranking the
    survivors by 1/2 H_ii w^2 with H the autograd Hessian of the model with the weights removed
    so far zeroed; the model's weights are left as they were."""
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    before = flatten(weights).clone()
    ctx = context(batches, model)
    masks = Selection(Hessian(estimator="exact", rounds=3), amount=0.6).prune(
        model, weights, ctx.masks, ctx, 0.6).masks
    assert torch.equal(flatten(weights), before)
    keep, sizes = torch.ones_like(before), [w.numel() for w in weights.values()]
    for k in (1, 2, 3):
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for w, m in zip(prunable_weights(pruned).values(), keep.split(sizes), strict=True):
                w.mul_(m.view_as(w))
        saliency = 0.5 * full_hessian(pruned, batches).diagonal() * before.pow(2)
        order = saliency.masked_fill(keep == 0, -torch.inf).argsort()
        keep[order[:round(0.6 * k / 3 * len(keep))]] = 0
    assert torch.equal(flatten(masks), keep)
    one_round = Selection(Hessian(estimator="exact", rounds=1), amount=0.6).prune(
        model, weights, ctx.masks, ctx, 0.6).masks
    assert not torch.equal(flatten(one_round), keep)  # the recomputation changed the choice


def test_hutchinson_within_its_standard_error():
    """E[v * Hv] = diag(H); the error of P probes has sd sqrt(sum_j!=i H_ij^2 / P)."""
    model, batches = tiny_net(), make_batches(count=1)
    probes = 1000
    strategy = Hessian(estimator="hutchinson", probes=probes)
    diag = flatten(strategy.diagonal(model, prunable_weights(model), batches,
                                     context(batches, model)))
    hessian = full_hessian(model, batches)
    off = hessian - torch.diag(hessian.diagonal())
    sd = (off.pow(2).sum(1) / probes).sqrt()
    error = diag - hessian.diagonal()
    assert torch.all(error.abs() <= 5 * sd + 1e-6)  # every entry within 5 standard errors
    assert error.norm() <= 2 * sd.norm()  # E|error|^2 = sum of sd^2


def test_fisher_diagonal_equals_mean_squared_per_sample_gradient():
    model, batches = tiny_net(), make_batches()
    strategy = Hessian(estimator="fisher")
    diag = strategy.diagonal(model, prunable_weights(model), batches, context(batches, model))
    single = [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(len(y))]
    squares = [{n: g.pow(2) for n, g in grads.items()}
               for grads in reference_batch_grads(model, single)]
    expected = {n: sum(s[n] for s in squares) / len(squares) for n in diag}
    assert torch.allclose(flatten(diag), flatten(expected), atol=1e-7, rtol=1e-4)


def test_snip_and_taylor_equal_gradient_times_weight():
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    grads = reference_batch_grads(model, batches)
    snip = Gradient(variant="snip", batches=3)
    taylor = Gradient(variant="taylor", batches=3)
    snip_scores = snip.score(weights, context(batches, model))
    taylor_scores = taylor.score(weights, context(batches, model))
    for n, w in weights.items():
        mean_grad = sum(g[n] for g in grads) / len(grads)
        assert torch.allclose(snip_scores[n], (mean_grad * w).abs(), atol=1e-7)
        expected = sum((g[n] * w).pow(2) for g in grads) / len(grads)
        assert torch.allclose(taylor_scores[n], expected, atol=1e-9, rtol=1e-5)


def test_batches_key_limits_the_data_used():
    model, batches = tiny_net(), make_batches()
    one = Gradient(variant="snip", batches=1)
    scores = one.score(prunable_weights(model), context(batches, model))
    grads = reference_batch_grads(model, batches[:1])[0]
    for n, w in prunable_weights(model).items():
        assert torch.allclose(scores[n], (grads[n] * w).abs(), atol=1e-7)


def test_grasp_equals_weight_times_hessian_gradient_product():
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    grads = reference_batch_grads(model, batches)
    mean_grad = flatten({n: sum(g[n] for g in grads) / len(grads) for n in weights})
    expected = flatten(weights) * (full_hessian(model, batches) @ mean_grad)
    scores = Gradient(variant="grasp", batches=3).score(
        weights, context(batches, model))
    assert torch.allclose(flatten(scores), expected, atol=1e-6)


def test_synflow_one_round_matches_the_positive_network():
    model, batches = tiny_net(), make_batches()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.abs_()
    reference(torch.ones(1, 6)).sum().backward()
    expected = {n: (w.grad * w).abs() for n, w in prunable_weights(reference).items()}
    strategy = Gradient(variant="synflow", iterations=1)
    scores = strategy.score(prunable_weights(model), context(batches, model, amount=0.5))
    assert torch.allclose(flatten(scores), flatten(expected), rtol=1e-5)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_iterative_synflow_meets_the_target_exactly(scope):
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    ctx = context(batches, model)
    strategy = Selection(Gradient(variant="synflow", iterations=10), amount=0.7, scope=scope)
    masks = strategy.prune(model, weights, ctx.masks, ctx, 0.7).masks
    total = sum(m.numel() for m in masks.values())
    if scope == "global":
        assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.7 * total)
    else:
        for m in masks.values():
            assert int((m == 0).sum()) == round(0.7 * m.numel())


def test_hard_concrete_open_probability_matches_sampling():
    """The closed-form expected L0 norm, P(z != 0), against the frequency of nonzero gates."""
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    for value in (-3.0, -1.0, 0.0, 1.0, 3.0):
        log_alpha = torch.full((n,), value)
        frequency = (l0.sample_gate(log_alpha, generator) > 0).float().mean()
        p = l0.open_probability(torch.tensor(value))
        assert abs(frequency - p) < 5 * (p * (1 - p) / n).sqrt()


def test_deterministic_gate_closes_exactly_below_the_threshold():
    log_alpha = torch.linspace(-6, 6, 10_001)
    closed = l0.deterministic_gate(log_alpha) == 0
    assert closed.any() and not closed.all()
    assert torch.equal(closed, l0.open_probability(log_alpha) <= l0.CLOSED_BELOW)


def test_l0_own_rule_prunes_closed_gates_and_keeps_trained_weights():
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    before = copy.deepcopy(model.state_dict())
    ctx = context(batches, model)
    strategy = L0(epochs=30, gate_lr=0.1, **{"lambda": 0.02})
    masks = Selection(strategy).prune(model, weights, ctx.masks, ctx, None).masks
    for n in weights:
        gate = l0.deterministic_gate(strategy.log_alpha[n])
        assert torch.equal(masks[n] == 0, gate == 0), n
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    assert 0 < pruned < sum(m.numel() for m in masks.values())
    assert not torch.equal(model.state_dict()["0.bias"], before["0.bias"])  # trained


def test_l0_with_amount_meets_target_by_open_probability():
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    ctx = context(batches, model)
    strategy = L0(epochs=5, **{"lambda": 0.01})
    masks = Selection(strategy, amount=0.6, scope="layer").prune(
        model, weights, ctx.masks, ctx, 0.6).masks
    for n, m in masks.items():
        assert int((m == 0).sum()) == round(0.6 * m.numel())
        prob = l0.open_probability(strategy.log_alpha[n])
        assert prob[m == 0].max() <= prob[m == 1].min()
        assert torch.all(weights[n][m == 1] != 0)  # survivors keep a nonzero trained weight


def spd(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + d * torch.eye(d, dtype=torch.float64)


def test_obs_single_weight_update_is_the_textbook_formula():
    d, q = 7, 3
    hessian = spd(d)
    inverse = torch.linalg.inv(hessian)
    w = torch.randn(1, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.ones_like(w)
    mask[0, q] = 0
    curvature = obs.LayerCurvature(hessian[None], inverse[None], d, chunk=1)
    new = curvature.surgeon(w, mask)
    expected = w[0] - (w[0, q] / inverse[q, q]) * inverse[:, q]  # -(w_q/[H^-1]_qq) H^-1 e_q
    assert torch.allclose(new[0], expected, atol=1e-12)
    assert new[0, q] == 0
    # and it is the minimum of the quadratic (w' - w)^T H (w' - w) with w'_q = 0
    cost = lambda v: (v - w[0]) @ hessian @ (v - w[0])  # noqa: E731
    for i in range(d):
        if i != q:
            nudged = new[0].clone()
            nudged[i] += 1e-3
            assert cost(nudged) > cost(new[0])


def test_obs_many_weights_equal_least_squares_on_the_layer_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.5).double()
    hessian = 2 * x.T @ x / len(x)
    curvature = obs.LayerCurvature(hessian[None], torch.linalg.inv(hessian)[None], 6, chunk=3)
    new = curvature.surgeon(w, mask)
    for r in range(4):
        keep = mask[r].bool()
        best = torch.linalg.lstsq(x[:, keep], x @ w[r]).solution  # min ||X w' - X w||
        assert torch.allclose(new[r, keep], best, atol=1e-10)
        assert torch.all(new[r, ~keep] == 0)


def test_obs_strategy_removes_the_least_salient_weight_and_compensates():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    batches = make_batches(count=2, size=32)
    batches = [(x[:, :5], y) for x, y in batches]
    x = torch.cat([b[0] for b in batches]).double()
    hessian = 2 * x.T @ x / len(x)
    inverse = torch.linalg.inv(hessian)
    w = model.weight.detach().double().clone()
    saliency = w.pow(2) / (2 * inverse.diagonal())
    row, q = divmod(int(saliency.argmin()), 5)

    weights = prunable_weights(model)
    ctx = context(batches, model)
    selection = Selection(Hessian(variant="obs", batches=2, damp=0.0), amount=1 / 15)
    masks = selection.prune(model, weights, ctx.masks, ctx, 1 / 15).masks
    assert int((masks["weight"] == 0).sum()) == 1 and masks["weight"][row, q] == 0
    expected = w.clone()
    expected[row] -= (w[row, q] / inverse[q, q]) * inverse[:, q]
    assert torch.allclose(model.weight.double(), expected, atol=1e-4)


def test_obs_block_size_shrinks_to_fit_the_memory_budget():
    budget = 1e-3  # GB
    block, chunk = obs.choose_block(rows=64, width=4096, block_size=4096, budget_gb=budget)
    assert block < 4096
    assert (2 * 4096 * block + 3 * chunk * block * block) * 4 <= budget * 2**30
    # blocks smaller than the layer still give a valid surgeon: unmasked rows stay put
    model, batches = tiny_net(), make_batches()
    weights = prunable_weights(model)
    curv = obs.layer_curvatures(model, weights, batches, 0.01, block_size=2, budget_gb=1.0)
    w = weights["0.weight"].detach()
    mask = torch.ones_like(w)
    mask[0, :3] = 0
    new = curv["0.weight"].surgeon(w, mask)
    assert torch.equal(new[1:], w[1:]) and torch.all(new[0, :3] == 0)


def test_l0_neuron_gates_remove_whole_units_by_open_probability():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = make_batches()
    weights = prunable_weights(model)
    ctx = context(batches, model)
    strategy = L0(epochs=3, **{"lambda": 0.01})
    report = Selection(strategy, amount=0.5, scope="layer", granularity="neuron").prune(
        model, weights, ctx.masks, ctx, 0.5)
    masks = report.masks
    assert set(strategy.log_alpha) == set(report.units.layers) == {"0.weight", "2.weight"}
    for n, gates in strategy.log_alpha.items():
        units_kept = masks[n].flatten(1).any(1)
        assert int((~units_kept).sum()) == round(0.5 * len(units_kept))
        prob = l0.open_probability(gates).flatten()
        assert prob[~units_kept].max() <= prob[units_kept].min()


# ---- OBD's default curvature: the Gauss-Newton diagonal, never negative, close to exact ----

def exact_diagonal_entries(model: nn.Module, name: str, index: torch.Tensor, batches):
    """H_ii of the mean batch loss for the flat indices `index` of weight `name`: one
    Hessian-vector product with e_i each (forward-over-reverse, torch.func), written here."""
    from torch.func import grad, jvp, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    w = params[name]

    def loss(value):
        return sum(F.cross_entropy(functional_call(model, {**params, name: value}, (x,)), y)
                   for x, y in batches) / len(batches)

    def entry(i):
        e = torch.zeros(w.numel()).index_fill(0, i.view(1), 1.0).view_as(w)
        return (jvp(grad(loss), (w,), (e,))[1] * e).sum()

    return vmap(entry, chunk_size=128)(index)


def trained_relu_mlp(x, y, hidden, epochs: int) -> nn.Module:
    from prunebench.models.mlp import MLP

    torch.manual_seed(0)
    model = MLP(tuple(x.shape[1:]), 10, hidden=hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return model.eval()


def digits_data():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(bunch.target)


def fashion_mnist_data(count: int = 1024):
    """The first `count` training images of the real Fashion-MNIST (Debian's files)."""
    import gzip
    from pathlib import Path

    import numpy as np

    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)[:count * 784]
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    x = torch.tensor(images, dtype=torch.float32).view(count, 1, 28, 28) / 255.0
    return (x - 0.286) / 0.353, torch.tensor(labels, dtype=torch.long)


@pytest.mark.parametrize("case", ["mlp-digits", "lenet300-fashion-mnist"])
def test_default_obd_diagonal_is_non_negative_and_matches_the_exact_one(case):
    """The default estimator on a trained ReLU network: every entry >= 0 and correlation
    >= 0.9 with exact Hessian diagonal entries (400 random ones per layer), which for a ReLU
    network the Gauss-Newton diagonal equals; Hutchinson at its defaults does not get there."""
    if case == "mlp-digits":
        (x, y), hidden, epochs = digits_data(), (256, 128), 8
    else:
        (x, y), hidden, epochs = fashion_mnist_data(), (300, 100), 3
    model = trained_relu_mlp(x, y, hidden, epochs)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 128, 64)]
    weights = prunable_weights(model)
    g = torch.Generator().manual_seed(1)
    picked = {n: torch.randperm(w.numel(), generator=g)[:400] for n, w in weights.items()}
    exact = torch.cat([exact_diagonal_entries(model, n, i, batches) for n, i in picked.items()])
    correlations = {}
    for estimator in ("auto", "hutchinson"):
        strategy = Hessian(estimator=estimator)
        diag = strategy.diagonal(model, weights, batches, context(batches, model))
        estimate = torch.cat([diag[n].flatten()[i] for n, i in picked.items()])
        correlations[estimator] = float(torch.corrcoef(torch.stack([estimate, exact]))[0, 1])
        if estimator == "auto":
            assert all(bool((d >= 0).all()) for d in diag.values())
            assert torch.allclose(estimate, exact, rtol=1e-3, atol=1e-7)
    assert correlations["auto"] >= 0.9 > correlations["hutchinson"]


def test_gauss_newton_and_monte_carlo_fisher_against_j_transpose_h_j():
    """On a tanh network (where the Hessian has more than its Gauss-Newton term): the
    gauss_newton diagonal equals diag(J^T H_out J) built from autograd's full Jacobian of
    each sample's logits and the softmax Hessian diag(p) - p p^T; the Monte-Carlo Fisher
    with many label draws comes close to it (it is an unbiased estimate)."""
    model, batches = tiny_net(), make_batches(count=2)
    weights = {n: w.detach() for n, w in prunable_weights(model).items()}
    sizes = [w.numel() for w in weights.values()]
    params = dict(model.named_parameters())
    flat = torch.cat([w.flatten() for w in weights.values()])
    expected, count = torch.zeros_like(flat), 0
    for x, _ in batches:
        for sample in x:
            def logits(v, sample=sample):
                ws = {n: p.view_as(weights[n]) for n, p in
                      zip(weights, v.split(sizes), strict=True)}
                return functional_call(model, {**params, **ws}, (sample[None],))[0]

            jacobian = torch.autograd.functional.jacobian(logits, flat)  # (classes, weights)
            p = torch.softmax(logits(flat), 0).detach()
            h = torch.diag(p) - torch.outer(p, p)
            expected += torch.einsum("ci,cd,di->i", jacobian, h, jacobian)
            count += 1
    expected /= count
    gn = Hessian(estimator="gauss_newton")
    got = flatten(gn.diagonal(model, prunable_weights(model), batches, context(batches, model)))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-8) and bool((got >= 0).all())
    exact = full_hessian(model, batches).diagonal()
    assert not torch.allclose(got, exact, rtol=1e-2, atol=1e-4)  # tanh: not the Hessian's
    mc = Hessian(estimator="mc_fisher", draws=300)
    drawn = flatten(mc.diagonal(model, prunable_weights(model), batches,
                                context(batches, model)))
    assert bool((drawn >= 0).all())
    assert (drawn - expected).norm() < 0.1 * expected.norm()
