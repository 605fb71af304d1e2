"""Structured configs: every YAML composes against the schema; wrong types and keys fail there."""

from __future__ import annotations

from importlib import resources

import pytest
from helpers import composed, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from prunebench.cli import GROUPS, available
from prunebench.config import schema

schema.register()


def every_option() -> list[str]:
    options = [f"{group}={name}" for group in GROUPS for name in available(group)]
    experiments = resources.files("prunebench.conf") / "experiment"
    if experiments.is_dir():
        options += [f"+experiment={p.name[:-5]}" for p in experiments.iterdir()
                    if p.name.endswith(".yaml")]
    return options


@pytest.mark.parametrize("option", every_option())
def test_every_yaml_composes_against_the_schema(option):
    cfg = composed([option])
    assert OmegaConf.get_type(cfg.train, "epochs") is int  # the schema is in force
    group = option.lstrip("+").split("=")[0]
    if group in GROUPS:
        assert cfg[group]._target_


@pytest.mark.parametrize("override", [
    "train.epochs=abc", "strategy.amount=lots", "cache.enabled=maybe", "finetune.lr_scale=x",
    "seed=1.5"])
def test_wrong_type_fails_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        composed([override])


def test_criterion_keys_stay_open_and_unknown_keys_fail_in_yaml(tmp_path):
    # an option's own keys are free (the target's signature checks them when built) ...
    assert composed(["strategy=l1", "+strategy.extra=1"]).strategy.extra == 1
    # ... but a typo under a typed node in a user's YAML fails at composition, in the CLI
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text(
        "# @package _global_\ntrain:\n  epoch: 3\n")
    proc = run_cli([f"hydra.searchpath=[file://{tmp_path}]", "+experiment=typo",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "epoch" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()

