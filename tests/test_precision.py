"""train.amp and train.compile: CUDA-only autocast is an exact no-op on CPU, said in the log."""

from __future__ import annotations

import logging

import pytest
import torch

from prunebench.data.synthetic import load
from prunebench.models.mlp import MLP
from prunebench.training import precision
from prunebench.training.loop import FitSettings, fit


def train_once(amp: str | None) -> dict:
    data = load(train_size=128, test_size=32)
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, data, optimizer, None, FitSettings(epochs=2, batch_size=32, max_norm=1.0, amp=amp),
        torch.Generator().manual_seed(0), "test")
    return model.state_dict()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_is_an_exact_no_op_with_a_log_line(amp, caplog):
    reference = train_once(None)
    with caplog.at_level(logging.INFO, logger="prunebench.training.precision"):
        weights = train_once(amp)
    assert f"train.amp={amp} ignored on cpu" in caplog.text
    for name, value in reference.items():
        assert torch.equal(weights[name], value), name


def test_scaler_only_for_fp16_on_cuda():
    assert not precision.grad_scaler("bf16", True).is_enabled()
    assert not precision.grad_scaler("fp16", False).is_enabled()
    with precision.autocast("bf16", False):  # disabled: no autocast anywhere
        assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
    assert isinstance(precision.autocast("bf16", True), torch.autocast)


def test_compile_wraps_the_same_parameters():
    model = torch.nn.Linear(3, 2)
    assert precision.compiled(model, False) is model
    wrapped = precision.compiled(model, True)  # compiles lazily, at the first call
    assert wrapped is not model and list(wrapped.parameters())[0] is model.weight


def test_compiled_training_matches_eager_training():
    """train.compile runs the same steps through inductor's generated kernels (about 15 s of
    compilation on a 2-core CPU): the weights it trains match eager training closely."""
    data = load(train_size=64, test_size=16)
    trained = []
    for compile_model in (False, True):
        torch.manual_seed(0)
        model = MLP(data.input_shape, data.num_classes, (8,))
        initial = [p.detach().clone() for p in model.parameters()]
        fit(model, data, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), None,
            FitSettings(epochs=2, batch_size=16, compile=compile_model),
            torch.Generator().manual_seed(0), "train")
        assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(trained[1], trained[0], rtol=1e-4, atol=1e-5)
