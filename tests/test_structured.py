"""Neuron granularity and compaction: masked and compacted models compute the same thing.

Tiny nets defined here (a conv net with BatchNorm and flatten, a residual block) are pruned
by whole units, the masks are installed, and the compacted copy must give the masked
model's outputs (1e-5) with exactly as many parameters as the masked model has nonzeros.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, composed, context
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunebench import build
from prunebench.data import batches
from prunebench.pruning import compact
from prunebench.pruning.masks import Masks
from prunebench.pruning.units import find_units
from prunebench.strategies.l1 import L1
from prunebench.strategies.l2 import L2
from prunebench.strategies.selection import Report, Selection


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 12), nn.ReLU(), nn.Linear(12, 10))


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the input: conv2's outputs are tied to the stem's."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def res_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         Residual(8), Residual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def ready(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm parameters and running statistics, so BatchNorm is not the identity."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8))
    return model.eval()


def image_batches(count: int = 2) -> list:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(count)]


def prune_units(model: nn.Module, strategy, amount: float | None) -> tuple[Masks, Report]:
    masks = Masks(model)
    ctx = context(image_batches())
    report = strategy.prune(model, masks.weights, masks.masks, ctx, amount)
    masks.update(report.masks)
    masks.apply()
    return masks, report


def nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def l1_units(**kw):
    return Selection(L1(), granularity="neuron", **kw)


@pytest.mark.parametrize("make", [conv_net, res_net])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_compact_matches_masked_outputs_and_counts(make, scope):
    model = ready(make())
    prune_units(model, l1_units(scope=scope), 0.5)
    x = torch.randn(32, 1, 8, 8)
    small, recipe = compact.compact(model, x[:2])
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), model(x), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) == nonzero_params(model)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for weight, (kept, total) in recipe["widths"].items():
        layer = dict(small.named_modules())[weight.removesuffix(".weight")]
        assert layer.weight.shape[0] == kept <= total


def test_residual_outputs_stay_whole_and_block_insides_shrink():
    model = ready(res_net())
    units = find_units(model, torch.randn(2, 1, 8, 8))
    tied = {"0.weight", "3.conv2.weight", "4.conv2.weight"}  # summed into one stream
    assert set(units.fixed) == tied | {"7.weight"}
    assert "residual" in units.fixed["3.conv2.weight"]
    assert units.fixed["7.weight"] == "classifier outputs"
    assert set(units.layers) == {"3.conv1.weight", "4.conv1.weight"}

    prune_units(model, l1_units(scope="layer"), 0.5)
    small, recipe = compact.compact(model, torch.randn(2, 1, 8, 8))
    assert recipe["widths"] == {"3.conv1.weight": [4, 8], "4.conv1.weight": [4, 8]}
    assert small[3].conv1.out_channels == 4 and small[3].conv2.in_channels == 4
    assert small[0].out_channels == 8 and small[3].conv2.out_channels == 8


class ChunkAttention(nn.Module):
    """Self-attention whose q, k, v come out of one Linear by `chunk` and are reshaped into
    heads: the trace sees a split, not the head structure."""

    def __init__(self, width: int = 16, heads: int = 4):
        super().__init__()
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, -1))
        y = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class ChunkAttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn = nn.Linear(8, 16), ChunkAttention()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head((x + self.fc2(torch.relu(self.fc1(x)))).mean(1))


def test_a_layer_whose_unit_removal_breaks_the_forward_stays_whole():
    """qkv.chunk(3) + a reshape into heads: the trial removal fails, so qkv is kept whole;
    the MLP's hidden layer is removable and its compact model computes the masked one."""
    torch.manual_seed(0)
    model, x = ChunkAttentionNet().eval(), torch.randn(2, 5, 8)
    units = find_units(model, x)
    assert list(units.layers) == ["fc1.weight"]
    assert units.fixed["attn.qkv.weight"].startswith("removing a unit breaks the forward")
    with torch.no_grad():
        model.fc1.weight[::2] = 0  # half of the hidden units output exactly zero
        model.fc1.bias[::2] = 0
        small, recipe = compact.compact(model, x)
        assert recipe["widths"]["fc1.weight"] == [16, 32] and small.fc2.in_features == 16
        assert torch.allclose(small(x), model(x), atol=1e-6)


def test_removed_units_take_bias_norm_and_next_columns():
    model = ready(conv_net())
    masks, _ = prune_units(model, l1_units(scope="layer"), 0.5)
    gone = (model[0].weight.flatten(1) == 0).all(1)
    assert int(gone.sum()) == 3
    assert torch.all(model[0].bias[gone] == 0) and torch.all(model[1].weight[gone] == 0)
    assert torch.all(model[1].bias[gone] == 0)
    assert torch.all(model[3].weight[:, gone] == 0)  # next conv's input channels
    assert {"0.bias", "1.weight", "1.bias", "3.bias", "4.weight", "7.bias"} <= set(masks.coupled)
    # Linear after flatten: each removed channel takes its 8*8 input columns
    gone2 = (model[3].weight.flatten(1) == 0).all(1)
    columns = (model[7].weight == 0).all(0).view(8, 64)
    assert torch.equal(columns.all(1), gone2)


def test_unit_masks_hold_through_training():
    model = ready(conv_net())
    masks, _ = prune_units(model, l1_units(scope="layer"), 0.5)
    before = nonzero_params(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        masks.mask_grads()
        optimizer.step()
        masks.apply()
    assert nonzero_params(model) == before


@pytest.mark.parametrize("norm", [1, 2])
def test_unit_selection_equals_torch_ln_structured(norm):
    model = ready(conv_net())
    reference = ready(conv_net())
    reference.load_state_dict(model.state_dict())
    prune_units(model, Selection(L2(norm=norm), granularity="neuron", scope="layer"), 0.5)
    for i in (0, 3, 7):  # the classifier (9) keeps its outputs
        torch_prune.ln_structured(reference[i], "weight", amount=0.5, n=norm, dim=0)
        expected = reference[i].weight_mask.flatten(1).all(1)
        assert torch.equal((model[i].weight.flatten(1) != 0).any(1), expected), i


def test_l2_unit_scores_are_row_norms():
    model = conv_net()
    weights = {n: m.weight for n, m in (("0.weight", model[0]), ("7.weight", model[7]))}
    scores = L2(norm=2).score_units(weights, context(image_batches()))
    for name, w in weights.items():
        rows = torch.stack([torch.sqrt((r.double() ** 2).sum()) for r in w.detach()])
        torch.testing.assert_close(scores[name].double(), rows)
    scores = L2(norm=1).score_units(weights, context(image_batches()))
    torch.testing.assert_close(scores["7.weight"], weights["7.weight"].abs().sum(1))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_collapse_prevented_by_default(scope):
    model = ready(conv_net())
    _, report = prune_units(model, l1_units(scope=scope), 0.99)
    for m in (model[0], model[3], model[7]):
        assert int((m.weight.flatten(1) != 0).any(1).sum()) == 1
    assert report.collapsed == []


def test_collapse_allowed_is_reported_and_compacts():
    model = ready(conv_net())
    _, report = prune_units(model, l1_units(scope="global", allow_collapse=True), 0.99)
    assert report.collapsed  # 99% of 26 units, ranked globally: some layer has none left
    x = torch.randn(8, 1, 8, 8)
    small, recipe = compact.compact(model, x[:2])
    assert recipe["collapsed"] == report.collapsed
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), model(x), rtol=0, atol=1e-5)


def test_global_amount_is_a_fraction_of_removable_units():
    model = ready(conv_net())
    prune_units(model, l1_units(scope="global"), 0.4)
    removed = sum(int((m.weight.flatten(1) == 0).all(1).sum()) for m in (model[0], model[3],
                                                                           model[7]))
    assert removed == round(0.4 * (6 + 8 + 12))


def test_iterative_unit_pruning_keeps_removed_units():
    model = ready(conv_net())
    strategy = l1_units(scope="layer")
    masks = Masks(model)
    for amount in (0.25, 0.5):
        ctx = context(image_batches())
        masks.update(strategy.prune(model, masks.weights, masks.masks, ctx, amount).masks)
        masks.apply()
    first = (model[3].weight.flatten(1) == 0).all(1)
    assert int(first.sum()) == 4  # half of 8, the earlier quarter included


def test_save_and_load_round_trip(tmp_path):
    model = ready(res_net())
    prune_units(model, l1_units(scope="layer"), 0.5)
    x = torch.randn(4, 1, 8, 8)
    small, recipe = compact.compact(model, x[:2])
    model_cfg = {"_target_": "test_structured.res_net_for", "unused": 1}
    compact.save(tmp_path / "compact.pt", small, recipe, model_cfg, (1, 8, 8), 10)
    saved = torch.load(tmp_path / "compact.pt", weights_only=True)
    assert saved["pruning_history"] and saved["input_shape"] == [1, 8, 8]
    loaded = compact.load(tmp_path / "compact.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


def res_net_for(input_shape, num_classes, unused=None):  # a model config's _target_
    return res_net()


def test_cli_l2_writes_compact_model_that_loads_and_matches(cli):
    results, out = cli(["strategy=l2", "strategy.amount=0.5", "model=lenet300",
                        "inference.measure=true"])  # times the compact form too
    assert results["status"] == "ok"
    info = results["compact"]
    assert info["widths"] == {"1.weight": [150, 300], "3.weight": [50, 100]}
    assert info["fixed"] == {"5.weight": "classifier outputs"}
    assert info["max_abs_diff"] <= 1e-5 and info["collapsed"] == []
    for batch in ("batch_1", "batch_64"):
        assert info["latency"][batch]["dense_ms"] > 0 and info["latency"][batch]["compact_ms"] > 0

    small = compact.load(out / info["path"])
    assert sum(p.numel() for p in small.parameters()) == info["params"]
    assert info["params"] == results["final"]["total_nonzero"]
    assert info["params"] == 64 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10
    cfg = OmegaConf.create(results["config"])
    data = build.dataset(cfg)
    masked = build.model(cfg, data)
    masked.load_state_dict(torch.load(out / "checkpoints" / "final.pt", weights_only=True))
    x = next(batches(data, data.test, 256))[0]
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), masked.eval()(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_compaction_on_the_project_models(name):
    if not (ROOT / "conf" / "model" / f"{name}.yaml").exists():
        pytest.skip(f"model {name} not in this checkout")

    cfg = composed([f"model={name}"])
    shape = (1, 8, 8)
    data = SimpleNamespace(input_shape=shape, num_classes=10)
    torch.manual_seed(0)
    model = build.model(cfg, data)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # not the identity: random scale, shift, statistics
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    with torch.no_grad():
        model.train()(torch.randn(16, *shape))
    model.eval()
    prune_units(model, l1_units(scope="layer"), 0.5)
    x = torch.randn(8, *shape)
    small, recipe = compact.compact(model, x[:2])
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(small.eval()(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
    assert sum(p.numel() for p in small.parameters()) == nonzero_params(model)
    assert all(kept == total - round(total / 2) for kept, total in recipe["widths"].values())
    if name == "resnet20":  # block outputs are summed with the shortcut: only conv1s shrink
        assert set(recipe["widths"]) == {f"stages.{i}.conv1.weight" for i in range(9)}


def test_cli_gradual_schedule_reaches_the_unit_target(cli):
    # gradual prunes toward amount in steps; at neuron granularity amount counts units, so
    # the schedule must compare amounts, not the (higher) weight sparsity they leave
    results, _ = cli(["strategy=l2", "schedule=gradual", "finetune.epochs=2", "schedule.end=1",
                      "schedule.frequency=5"])
    assert results["status"] == "ok"
    assert len(results["events"]) > 1
    assert results["events"][-1]["amount"] == 0.5
    assert results["compact"]["widths"] == {"1.weight": [128, 256], "3.weight": [64, 128]}
