"""Interruption and resume with real signals: a killed run, resumed, equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from helpers import BIN

# slow enough to be caught mid-phase: many small steps per epoch, one thread, and epochs left
# after the first (a phase of one fast epoch can end before the signal lands)
ARGS = ["cache.enabled=false", "train.epochs=4", "finetune.epochs=4", "train.batch_size=16",
        "train.threads=1", "strategy=random", "strategy.amount=0.7"]


def numbers(run) -> dict:
    """results.json without what wall clocks and the process's memory decide."""
    results = json.loads((run / "results.json").read_text())
    results.pop("timing")
    results.pop("cost")  # peak memory of the pruning step, sampled: a measurement
    results.pop("latency", None)  # forward times: a measurement
    results["cache"].pop("dense_train_s")
    return results


def start(run, cwd, *extra):
    return subprocess.Popen([str(BIN / "prunebench"), f"hydra.run.dir={run}", *ARGS, *extra],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(run, phase: str, fit: int, proc, timeout: float = 300) -> None:
    """Until checkpoints/state.pt (written atomically) is at `phase`, in its fine-tuning call
    `fit` or later, epoch >= 1."""
    path, deadline = run / "checkpoints" / "state.pt", time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            state = torch.load(path, weights_only=True)
            if (state["phase"] == phase and state.get("fit_index", 0) >= fit
                    and state["epoch"] >= 1):
                return
        time.sleep(0.02)
    raise TimeoutError(f"no {phase} state in call {fit}")


@pytest.mark.slow
@pytest.mark.parametrize("sig, phase, fit, schedule", [
    (signal.SIGTERM, "finetune", 0, []),
    (signal.SIGINT, "train", 0, []),
    # the second of two prune/fine-tune rounds: the first is replayed, not retrained
    (signal.SIGTERM, "finetune", 1, ["schedule=iterative", "schedule.rounds=2"]),
    # pruning every 20 steps from on_step, recording 'pruned' when the target is reached
    (signal.SIGUSR1, "finetune", 0, ["schedule=gradual", "schedule.end=2",
                                     "schedule.frequency=20"]),
    # dynamic sparsity: mask updates from on_step, before and after the saved epoch; DNS
    # trains the dense weights behind masks held in the forward pass
    (signal.SIGTERM, "finetune", 0, ["schedule=dynamic", "schedule.variant=dns",
                                     "schedule.end=2", "schedule.frequency=20"]),
    (signal.SIGTERM, "finetune", 0, ["schedule=dynamic", "schedule.variant=rigl",
                                     "schedule.end=2", "schedule.frequency=20"]),
])
def test_killed_mid_epoch_then_resumed_equals_uninterrupted(tmp_path, sig, phase, fit,
                                                            schedule):
    code = -sig if sig == signal.SIGINT else 128 + sig
    reference = start(tmp_path / "reference", tmp_path, *schedule)
    run = tmp_path / "run"
    proc = start(run, tmp_path, *schedule)
    wait_for_state(run, phase, fit, proc)
    time.sleep(0.05)  # into the epoch
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "the same command (same run folder) resumes it" in err
    interrupted = json.loads((run / "results.json").read_text())
    assert interrupted["status"] == "interrupted"

    resumed = start(run, tmp_path, *schedule)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    [log] = run.glob("*.log")
    assert f"resuming from {run / 'checkpoints' / 'state.pt'}: {phase}" in log.read_text()
    assert reference.wait(timeout=300) == 0
    assert numbers(run) == numbers(tmp_path / "reference")
    assert not (run / "checkpoints" / "state.pt").exists()  # finished: nothing to resume
