"""Numerical and model-output edges, in-process: a Hessian that is not positive definite, and
model outputs that hold the logits inside a tuple or an output object."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset, Split
from prunebench.models import own
from prunebench.strategies import obs
from prunebench.strategies.sparsegpt import prune_layer


def constant_input_hessian(width: int = 8) -> torch.Tensor:
    """2 X^T X / N of inputs whose columns are all the same constant: rank one."""
    x = torch.full((32, width), 0.5)
    return 2 * x.T @ x / len(x)


def test_a_hessian_that_is_not_positive_definite_is_damped_more(caplog):
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    h = constant_input_hessian()
    with pytest.raises(RuntimeError):  # what strategy.damp=0 met before
        torch.linalg.cholesky(h)
    with caplog.at_level(logging.WARNING):
        pruned, keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", None, 4, 0.0, "fc")
    assert "the Hessian of layer fc is not positive definite with strategy.damp=0" in caplog.text
    assert "0.001 x its mean diagonal" in caplog.text
    # the same as asking for that damping: the fallback is that damping, nothing else
    expected, expected_keep = prune_layer(w, h, torch.ones_like(w), 0.5, "layer", None, 4, 1e-3)
    assert torch.equal(keep, expected_keep) and torch.equal(pruned, expected)
    assert int(keep.sum()) == 16


def test_obs_blocks_of_constant_inputs_are_damped_and_a_hopeless_one_names_the_key():
    h = constant_input_hessian().expand(3, 8, 8).clone()  # a batch of blocks, as OBS has
    lower, used = obs.damped_cholesky(h, h.diagonal(dim1=-2, dim2=-1).mean(), 0.0, "fc")
    assert torch.allclose(lower @ lower.transpose(-1, -2), used, atol=1e-5)
    nan = torch.full((2, 2), float("nan"))  # never positive definite, however damped
    with pytest.raises(ConfigError, match=r"^strategy.damp=0.0: the Hessian of layer fc"):
        obs.damped_cholesky(nan, torch.tensor(1.0), 0.0, "fc")


class Outputs(nn.Module):
    """A classifier whose forward returns its logits inside `kind` of container."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(4, 3)

    def forward(self, x):
        logits = self.fc(x)
        if self.kind == "tuple":
            return logits, logits.softmax(1)
        if self.kind == "hf":
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(loss=None, logits=logits)
        if self.kind == "dict":
            return {"logits": logits}
        return {"scores": logits}


def tiny_data() -> Dataset:
    split = Split(torch.randn(6, 4), torch.randint(3, (6,)))
    return Dataset("tiny", split, split, None, (4,), 3, torch.zeros(1), torch.ones(1), 1.0)


@pytest.mark.parametrize("kind", ["tuple", "hf", "dict"])
def test_logits_inside_an_output_are_handed_on_as_the_tensor(kind):
    if kind == "hf":
        pytest.importorskip("transformers")
    model, x = Outputs(kind), torch.randn(2, 4)
    own.check_output("Outputs", model, x, tiny_data())
    out = model(x)
    assert torch.is_tensor(out) and torch.equal(out, model.fc(x))
    assert list(model.state_dict()) == ["fc.weight", "fc.bias"]  # the class's own names


def test_an_output_without_clear_logits_is_one_line():
    with pytest.raises(ConfigError, match=r"dict with keys \['scores'\] and no 'logits'"):
        own.check_output("Outputs", Outputs("scores"), torch.randn(2, 4), tiny_data())
