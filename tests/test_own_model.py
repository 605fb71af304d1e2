"""Prune what you already have: your own model class and a trained checkpoint.

The model lives in a module the test writes into a temporary working directory (no PYTHONPATH),
is trained here by hand, and its accuracy is computed here, with plain torch, as the reference
for the dense row the CLI reports.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from helpers import run_cli

from prunebench.config.errors import ConfigError
from prunebench.data import digits
from prunebench.models import checkpoint

NETS = '''
from torch import nn


class Tiny(nn.Module):
    """Own constructor arguments, no num_classes: digits are 8x8, 10 classes."""

    def __init__(self, width: int = 16, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x * self.scale))
'''


def load_module(folder):
    spec = importlib.util.spec_from_file_location("tiny_nets", folder / "tiny_nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalized(data, split):
    return (split.x.float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, state_dict, the test's own accuracy of it on digits' test split)."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "tiny_nets.py").write_text(NETS)
    torch.manual_seed(0)
    model = load_module(folder).Tiny(width=24, scale=0.5)
    data = digits.load()
    x, y = normalized(data, data.train), data.train.y
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):  # a few full-batch steps: well above chance, far from perfect
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        correct = int((model(normalized(data, data.test)).argmax(1) == data.test.y).sum())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / "tiny.pt")
    return folder, state, correct / len(data.test.y)


def test_sweep_on_a_checkpoint_of_your_own_class_trains_no_dense_model(trained):
    folder, state, accuracy = trained
    assert 0.3 < accuracy < 1.0
    sweep = folder / "sweep"
    run_cli(["-m", "model._target_=tiny_nets.Tiny", "+model.width=24", "+model.scale=0.5",
             "dense.checkpoint=tiny.pt", "strategy=l1,random,hessian", "strategy.amount=0.75",
             "finetune.epochs=1", f"hydra.sweep.dir={sweep}", f"cache.dir={folder / 'cache'}"],
            cwd=folder)
    jobs = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(3)]
    assert [j["config"]["strategy"]["name"] for j in jobs] == ["l1", "random", "hessian"]
    assert not list(folder.glob("cache/dense-*"))  # no dense model trained, nothing cached
    for job in jobs:
        assert job["status"] == "ok"
        assert job["config"]["model"] == {"_target_": "tiny_nets.Tiny", "name": "Tiny",
                                          "width": 24, "scale": 0.5}  # mlp's keys gone
        assert job["dense"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert job["history"]["train"] == [] and job["cache"]["dense_train_s"] == 0.0
        assert job["checkpoint"]["path"] == str(folder / "tiny.pt")
    # masks and fine-tuning as for a built-in model: 75% of 64*24 + 24*10 weights removed,
    # the zeros of the pruned model still zeros after fine-tuning, which changed the rest
    l1 = sweep / "0" / "checkpoints"
    pruned = torch.load(l1 / "pruned.pt", weights_only=True)
    final = torch.load(l1 / "final.pt", weights_only=True)
    prunable = 64 * 24 + 24 * 10
    zeros = sum(int((pruned[k] == 0).sum()) for k in ("body.1.weight", "head.weight"))
    assert zeros == round(0.75 * prunable) == prunable - jobs[0]["final"]["nonzero"]
    # the checkpoint's smallest weights are the ones l1 removed
    magnitudes = torch.cat([state[k].abs().flatten() for k in ("body.1.weight", "head.weight")])
    kept = torch.cat([pruned[k].flatten() != 0 for k in ("body.1.weight", "head.weight")])
    assert magnitudes[~kept].max() <= magnitudes[kept].min()
    for k in ("body.1.weight", "head.weight"):
        assert bool((final[k][pruned[k] == 0] == 0).all())
        assert not torch.equal(final[k], pruned[k])
    assert len(jobs[0]["history"]["finetune"]) == 1


def _model(trained):
    folder, _, _ = trained
    return load_module(folder).Tiny(width=24)


@pytest.mark.parametrize("form", ["plain", "state_dict", "model", "model_state_dict",
                                  "lightning", "safetensors"])
def test_checkpoint_formats_load_the_same_weights(trained, tmp_path, form):
    _, state, _ = trained
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.ckpt")
    if form == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    elif form == "plain":
        torch.save(state, path)
    elif form == "lightning":  # a LightningModule holding the net as `self.model`
        torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {f"model.{k}": v for k, v in state.items()}
                    | {"criterion.weight": torch.ones(10)},
                    "optimizer_states": [], "hyper_parameters": {"lr": 0.1}}, path)
    else:
        torch.save({form: state, "epoch": 3}, path)
    model = _model(trained)
    entry = checkpoint.dense_entry(path, model)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v) and torch.equal(entry["state_dict"][k], v)


def _error(trained, path) -> str:
    with pytest.raises(ConfigError) as err:
        checkpoint.dense_entry(path, _model(trained))
    message = str(err.value)
    assert "\n" not in message and f"dense.checkpoint={path}" in message
    return message


def test_checkpoint_errors_are_one_line_naming_the_first_key(trained, tmp_path):
    _, state, _ = trained
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "head.bias"} | {"extra.w": torch.ones(1)},
               missing)
    assert "key 'head.bias' missing" in _error(trained, missing)
    assert "1 missing, 1 unexpected, 0 of another shape" in _error(trained, missing)
    misshapen = tmp_path / "shape.pt"
    torch.save(state | {"head.weight": torch.zeros(10, 23)}, misshapen)
    assert ("'head.weight' has shape [10, 23] in the checkpoint, [10, 24] in the model"
            in _error(trained, misshapen))
    assert "no such file" in _error(trained, tmp_path / "nowhere.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((tmp_path / "shape.pt").read_bytes()[:300])
    assert "not a readable checkpoint" in _error(trained, corrupt)
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x00" * 64)
    assert "not a readable checkpoint" in _error(trained, bad_safetensors)


def test_cli_checkpoint_error_is_one_line(trained):
    folder, _, _ = trained
    proc = run_cli(["model._target_=tiny_nets.Tiny", "dense.checkpoint=tiny.pt",
                    "hydra.run.dir=wrong"], cwd=folder, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "prunebench: error: dense.checkpoint=tiny.pt does not fit model: 'body.1.weight' has "
        "shape [24, 64] in the checkpoint, [16, 64] in the model; 0 missing, 0 unexpected, "
        "3 of another shape")
