"""The Vision Transformer under every criterion and schedule (digits, one epoch each, in one
process: the pipeline the CLI runs, minus interpreter start-up), and its shapes and layers."""

from __future__ import annotations

import pytest
import torch
from helpers import composed

from prunebench import runner
from prunebench.cli import available
from prunebench.models.vit import ViT
from prunebench.pruning.masks import prunable_weights

TINY = ["model=vit", "model.dim=16", "model.depth=1", "model.heads=2", "train.epochs=1",
        "finetune.epochs=1", "cache.enabled=false", "train.batch_size=128",
        "inference.measure=false"]  # latency is tests/test_speed.py's
SCHEDULES = {"iterative": ["schedule.rounds=2"],
             "gradual": ["schedule.end=1", "schedule.frequency=4"],
             "dynamic": ["schedule.end=1", "schedule.frequency=4"]}
# criteria's own budgets cut to one batch or epoch (the pipeline, not the estimate, is tested)
# l0 with one epoch opens every gate by itself: a target keeps its sparsity measurable
CHEAP = {"l0": ["strategy.epochs=1", "strategy.amount=0.5"],
         "hessian": ["strategy.batches=1", "strategy.probes=1"],
         "activation": ["strategy.batches=1"], "gradient": ["strategy.batches=1"]}
# granularity=weight for every criterion, and neuron once (only the MLP's hidden units are
# removable: qkv's outputs are unbound into q, k, v; tests/test_language_models.py checks the
# compact model of the GPT, whose blocks are the same)
CASES = ([[f"strategy={s}", "strategy.granularity=weight", *CHEAP.get(s, [])]
          for s in available("strategy")]
         + [[f"schedule={s}", *SCHEDULES.get(s, [])] for s in available("schedule")]
         + [["strategy=wanda", "strategy.pattern=2:4"],
            ["strategy=l2", "strategy.granularity=neuron", "strategy.amount=0.5"]])


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: " ".join(o))
def test_every_criterion_and_schedule_prunes_a_vit(overrides, tmp_path):
    cfg = composed(TINY + overrides)
    results = runner.run(cfg, tmp_path)
    assert results["status"] == "ok"
    names = [layer["name"] for layer in results["final"]["layers"]]
    assert names and all(n.startswith("blocks.") for n in names)  # patch embed, head dense
    assert results["final"]["sparsity"] > 0.1
    assert 0 <= results["final"]["accuracy"] <= 1


def test_vit_shapes_and_prunable_layers():
    model = ViT((3, 32, 32), 10, patch_size=4, dim=32, depth=2, heads=4, mlp_ratio=2.0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.pos.shape == (1, 64, 32)
    assert list(prunable_weights(model)) == [
        f"blocks.{i}.{layer}.weight" for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")]
    assert model.blocks[0].mlp[0].out_features == 64  # mlp_ratio 2
