"""Shared helpers: run the real CLI in a subprocess with tiny budgets, read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One torch thread in the test process and in every CLI run it starts (they inherit the
# environment): the models are tiny, and `make test` runs two pytest workers on two cores,
# where two OpenMP threads per process would wait for each other's core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# a wide console for the CLI's log lines, so a long temporary path (pytest-xdist's are longer)
# is not wrapped in the middle of the file name a test looks for
os.environ.setdefault("COLUMNS", "240")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# tiny budgets keep every CLI run to a few seconds on 2 CPU cores
FAST = ["train.epochs=3", "finetune.epochs=1"]
# Latency measurement (pruning/latency.py) costs a second or more per run, most of the suite's
# ~200 runs are about something else, and timings on a shared machine are noise anyway: runs
# skip it unless a test asks (`inference.measure=true`, as tests/test_speed.py does).
NO_LATENCY = "inference.measure=false"


def _quiet(args: list[str]) -> list[str]:
    """`args` with NO_LATENCY, for runs (not --help/--cfg) that do not set it themselves."""
    if any(a.startswith(("--help", "-h", "--cfg", "--info", "inference.measure", "--hydra-help"))
           for a in args):
        return args
    return [*args, NO_LATENCY]


def run_cli(args: list[str], cwd: Path, *, script: str = "prunebench",
            check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script; raises with its output when `check` and it fails."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR")
    if script == "prunebench":
        args = _quiet(args)
    proc = subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def checkpoint_accuracy(results: dict, checkpoint: Path) -> float:
    """Test accuracy of a saved state_dict, recomputed here from the run's resolved config."""
    import torch
    from omegaconf import OmegaConf

    from prunebench import build
    from prunebench.data import batches

    cfg = OmegaConf.create(results["config"])
    data = build.dataset(cfg)
    model = build.model(cfg, data)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    correct = total = 0
    with torch.no_grad():  # the batches as the model sees them (stored uint8, scaled here)
        for x, y in batches(data, data.test, 256, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


@pytest.fixture
def cli(tmp_path):
    """run(args) -> (results dict, run folder) for a single run in a fresh folder."""

    def run(args: list[str], *, fast: bool = True, name: str = "run"):
        out = tmp_path / name
        run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'cache'}",
                 *(FAST if fast else []), *args], cwd=tmp_path)
        return json.loads((out / "results.json").read_text()), out

    return run
