"""Every experiment preset composes, and the SNIP recipe runs end to end on embedded data."""

from __future__ import annotations

import pytest
from helpers import ROOT, run_cli

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_documents_its_source(tmp_path, preset):
    job = run_cli([f"+experiment={preset}", "--cfg", "job"], cwd=tmp_path).stdout
    assert "model:" in job and "strategy:" in job
    text = (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_") and "prunebench" in text  # says how to run


def test_snip_recipe_prunes_at_initialization_then_trains(cli):
    results, _ = cli(["+experiment=snip_lenet300_mnist", "dataset=digits", "finetune.epochs=2",
                      "train.lr_step_size=1"], fast=False)
    cfg = results["config"]
    assert cfg["strategy"]["name"] == "gradient" and cfg["strategy"]["variant"] == "snip"
    assert cfg["train"]["epochs"] == 0 and results["history"]["train"] == []
    assert results["final"]["sparsity"] == pytest.approx(0.95, abs=1e-4)
    # all the training happens with the mask held, under the step schedule of the recipe
    assert [e["lr"] for e in results["history"]["finetune"]] == pytest.approx([0.1, 0.01])
    assert results["final"]["accuracy"] > results["pruned"]["accuracy"]
