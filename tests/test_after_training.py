"""A step after training that fails (an export, a tracker) does not throw the work away, and a
command that changes only the keys of those steps continues a folder's run from its
checkpoints: through the real CLI, with a model that counts its training steps."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, run_cli

# data-dependent control flow: torch.export cannot trace it, so its ONNX export fails; every
# forward in training mode is counted in the file STEPS_FILE names
BRANCHY = '''
import os
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(int(torch.tensor(input_shape).prod()), 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        if self.training:
            with open(os.environ["STEPS_FILE"], "a") as f:
                f.write("step\\n")
        h = torch.relu(self.fc1(x.flatten(1)))
        if h.mean() > 0.5:
            h = h * 2
        return self.fc2(h)
'''


def checkpoints(run: Path) -> dict:
    """The trained model's checkpoints, by content."""
    return {name: hashlib.sha256((run / "checkpoints" / name).read_bytes()).hexdigest()
            for name in ("dense.pt", "pruned.pt", "final.pt")}


def test_a_failed_export_keeps_the_run_and_another_export_key_does_not_train_again(tmp_path):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    steps, run = tmp_path / "steps.txt", tmp_path / "run"
    args = [f"hydra.run.dir={run}", "cache.enabled=false", "model._target_=branchy.Branchy",
            "train.epochs=1", "finetune.epochs=1", "export.safetensors=true"]
    env = {"STEPS_FILE": str(steps)}
    proc = run_cli([*args, "export.onnx=true"], cwd=tmp_path, env=env)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["final"]["sparsity"] > 0.85
    [failed] = results["failed_steps"]
    assert failed["step"] == "export.onnx" and "cannot export the model" in failed["error"]
    assert "\n" not in failed["error"]
    assert [e["file"] for e in results["exports"]] == ["checkpoints/final.safetensors"]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "export.onnx failed" in warnings[0], warnings
    assert "Traceback" not in proc.stderr and "def forward" not in proc.stderr
    assert not (run / "checkpoints" / "final.onnx").exists()
    trained, before = steps.read_text().count("step"), checkpoints(run)
    assert trained > 0

    # the same folder, only export and inference keys changed: no training step runs, the
    # finished results are kept and the steps after training run under the new keys
    proc = run_cli([*args, "export.onnx=false", "export.sparse=true",
                    "inference.measure=true"], cwd=tmp_path, env=env)
    again = json.loads((run / "results.json").read_text())
    assert steps.read_text().count("step") == trained  # not one training forward
    assert checkpoints(run) == before
    assert "run again from its checkpoints" in " ".join(proc.stderr.split())  # unwrapped
    assert again["status"] == "ok" and "failed_steps" not in again
    for phase in ("dense", "pruned", "final", "history", "events"):
        assert again[phase] == results[phase]
    assert again["config"]["export"]["onnx"] is False and again["config"]["inference"]["measure"]
    assert [e["file"] for e in again["exports"]] == ["checkpoints/final.safetensors",
                                                     "checkpoints/final_sparse.pt"]
    assert again["latency"]["forms"]["dense"]  # measured on the checkpoints' models
    # and the same command once more is the finished run, reused as it is
    proc = run_cli([*args, "export.onnx=false", "export.sparse=true",
                    "inference.measure=true"], cwd=tmp_path, env=env)
    assert "already holds this run" in " ".join(proc.stderr.split())
    assert json.loads((run / "results.json").read_text()) == again


def test_an_unfinished_run_resumes_under_other_export_keys_but_not_other_training(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from prunebench.config.errors import ConfigError
    from prunebench.runstate.resume import RunState

    cfg = OmegaConf.create({"seed": 0, "resume": "auto", "train": {"epochs": 2},
                            "export": {"onnx": True}, "inference": {"measure": True}})
    saved = RunState(cfg, tmp_path)
    saved.save_training({"phase": "train", "epoch": 1})
    cfg.export.onnx, cfg.inference.measure = False, False
    state = RunState(cfg, tmp_path)
    assert state.open("auto", tmp_path / "results.json") is None
    assert state.take("train")["epoch"] == 1  # resumed, not started over
    cfg.train.epochs = 3
    with pytest.raises(ConfigError, match=r"train\.epochs: 2 there, 3 in the command"):
        RunState(cfg, tmp_path).open("auto", tmp_path / "results.json")
    assert torch.load(state.path, weights_only=True)["epoch"] == 1  # kept


def test_a_tracker_store_that_breaks_mid_run_is_one_warning_line(tmp_path):
    pytest.importorskip("mlflow")
    db, run = tmp_path / "mlflow.db", tmp_path / "run"
    proc = subprocess.Popen(
        [str(BIN / "prunebench"), f"hydra.run.dir={run}", "cache.enabled=false",
         "train.epochs=3", "finetune.epochs=1", "inference.measure=false", "logger=mlflow",
         f"logger.tracking_uri=sqlite:///{db}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    holder = None
    try:  # once the tracker has started (its state file written), another process locks it
        while proc.poll() is None and holder is None:
            if (run / "tracking.json").exists():
                holder = sqlite3.connect(db, timeout=30)
                holder.execute("BEGIN EXCLUSIVE")
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=600)
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
    assert holder is not None, output
    assert proc.returncode == 0, output
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["final"]["accuracy"] > 0.5
    [failed] = results["failed_steps"]
    assert failed["step"] == "logger.mlflow" and "database is locked" in failed["error"]
    mentions = [line for line in output.splitlines() if "mlflow" in line.lower()
                or "Traceback" in line or "sqlalchemy" in line.lower()]
    assert len(mentions) == 1 and "WARNING" in mentions[0], mentions
