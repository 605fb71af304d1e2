"""A plain (non-editable) wheel install runs `prunebench` from any working directory.

The wheel is built from a copy of the source, installed with --no-deps into a fresh virtual
environment that borrows this environment's dependencies through a .pth file (so no torch
download), and run from an unrelated folder: this proves conf/ ships inside the package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import ROOT


def sh(*args, cwd=None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


BUILD_NOISE = shutil.ignore_patterns(".venv", "outputs", ".git", "build", "*.egg-info",
                                     "__pycache__", ".*cache")


def skipped(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: build noise anywhere; at the root also the decoded datasets
    and Hypothesis's database, which tests on the other pytest worker may be writing."""
    out = set(BUILD_NOISE(folder, names))
    if Path(folder) == ROOT:
        out |= {"data", ".hypothesis"} & set(names)
    return out


@pytest.mark.slow
def test_wheel_install_runs_from_another_directory(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=skipped)
    # setuptools >= 70.1 builds wheels by itself; an older one needs pip's isolated build env
    modern = tuple(int(p) for p in version("setuptools").split(".")[:2]) >= (70, 1)
    isolation = ["--no-build-isolation"] if modern else []
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
       "-w", tmp_path / "dist", source)
    wheel = next((tmp_path / "dist").glob("prunebench-*.whl"))

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    site = Path(sh(venv / "bin" / "python", "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    sh(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
       wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = sh(venv / "bin" / "python", "-c", "import prunebench; print(prunebench.__file__)",
               cwd=elsewhere)
    assert str(site) in where  # the installed copy, not the source tree
    sh(venv / "bin" / "prunebench", "hydra.run.dir=run", "cache.enabled=false",
       "train.epochs=1", "finetune.epochs=1", "strategy.amount=0.5", cwd=elsewhere)
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["final"]["sparsity"] > 0.49
