"""Fused optimizer kernels by default: the same updates as torch's reference implementation,
also where fused SGD alone goes wrong (a skipped fp16 first step, a late first gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import composed
from torch import nn

from prunebench import build
from prunebench.cli import available
from prunebench.config import schema
from prunebench.config.errors import ConfigError
from prunebench.training import optimizers

schema.register()


def optimizer_config(*overrides: str):
    return composed(overrides)


def reference_settings(name: str) -> dict:
    """The YAML's hyper-parameters for torch's single-tensor implementation."""
    cfg = optimizer_config(f"optimizer={name}").optimizer
    return {k: (tuple(v) if k == "betas" else v) for k, v in cfg.items()
            if not k.startswith("_")} | {"foreach": False}


def two_layers() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"a": nn.Linear(5, 4), "b": nn.Linear(5, 4)})


@pytest.mark.parametrize("name", available("optimizer"))
def test_optimizers_are_fused_by_default_unless_the_config_says(name):
    model = nn.Linear(4, 3)
    assert build.optimizer(optimizer_config(f"optimizer={name}"), model).defaults["fused"]
    for opt_out in ("+optimizer.fused=false", "+optimizer.foreach=true"):
        plain = build.optimizer(optimizer_config(f"optimizer={name}", opt_out), model)
        assert not plain.defaults.get("fused")
    # parameters the fused kernels cannot take get the default implementation
    complex_model = nn.Linear(4, 3, dtype=torch.complex64)
    assert not build.optimizer(optimizer_config(f"optimizer={name}"),
                               complex_model).defaults.get("fused")
    with pytest.raises(ConfigError, match="optimizer:"):  # a bad value stays the user's error
        build.optimizer(optimizer_config(f"optimizer={name}", "optimizer.lr=-1"), model)


def steps(model, optimizer, scaler=None, late: bool = False, overflow_first: bool = False):
    """Five steps; `late`: layer b gets no gradient at the first; `overflow_first`: an inf
    gradient at the first step, which the fp16 scaler must skip."""
    torch.manual_seed(1)
    for i in range(5):
        x = torch.randn(8, 5)
        loss = model["a"](x).pow(2).mean() + (0 if late and i == 0 else model["b"](x).mean())
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if overflow_first and i == 0:
            model["a"].weight.grad[0, 0] = float("inf")
        if scaler:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", available("optimizer"))
@pytest.mark.parametrize("case", ["plain", "late", "fp16_skip"])
def test_fused_default_matches_the_reference_implementation(name, case):
    fused_model, reference_model = two_layers(), two_layers()
    fused = build.optimizer(optimizer_config(f"optimizer={name}"), fused_model)
    plain = type(fused)(reference_model.parameters(), **reference_settings(name))
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    kwargs = {"late": case == "late"}
    if case == "fp16_skip":  # GradScaler's CPU flavour drives the same skip logic as CUDA's
        kwargs |= {"overflow_first": True}
        got = steps(fused_model, fused, torch.amp.GradScaler("cpu", init_scale=2.0**4), **kwargs)
        want = steps(reference_model, plain, torch.amp.GradScaler("cpu", init_scale=2.0**4),
                     **kwargs)
    else:
        got, want = steps(fused_model, fused, **kwargs), steps(reference_model, plain, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_from_another_implementation_resumes_on_the_fused_one():
    model = two_layers()
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    saved = copy.deepcopy(plain.state_dict())  # before any step: no momentum buffers yet
    fused = build.optimizer(optimizer_config("optimizer=sgd"), model)
    optimizers.load_state(fused, saved)
    assert all(group["fused"] for group in fused.param_groups)
    assert fused.param_groups[0]["lr"] == 0.1 and fused.param_groups[0]["momentum"] == 0.9
    for param in model.parameters():  # zero buffers again, so a late gradient is no failure
        assert torch.equal(fused.state[param]["momentum_buffer"], torch.zeros_like(param))
    steps(model, fused, late=True)
