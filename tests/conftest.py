"""Shared helpers: run the real CLI in a subprocess with tiny budgets, read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# tiny budgets keep every CLI run to a few seconds on 2 CPU cores
FAST = ["train.epochs=3", "finetune.epochs=1"]


def run_cli(args: list[str], cwd: Path, *, script: str = "prunebench",
            check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script; raises with its output when `check` and it fails."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR")
    proc = subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli(tmp_path):
    """run(args) -> (results dict, run folder) for a single run in a fresh folder."""

    def run(args: list[str], *, fast: bool = True, name: str = "run"):
        out = tmp_path / name
        run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'cache'}",
                 *(FAST if fast else []), *args], cwd=tmp_path)
        return json.loads((out / "results.json").read_text()), out

    return run
