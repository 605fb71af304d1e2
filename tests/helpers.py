"""What the tests share: the CLI in a subprocess, configs composed in-process, tiny models and
pruning contexts, and the budget argument lists that keep every run to seconds.

conftest.py keeps only the pytest fixture (`cli`); tests import the rest from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# One torch thread in the test process and in every CLI run it starts (they inherit the
# environment): the models are tiny, and `make test` runs two pytest workers on two cores,
# where two OpenMP threads per process would wait for each other's core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# a wide console for the CLI's log lines, so a long temporary path (pytest-xdist's are longer)
# is not wrapped in the middle of the file name a test looks for
os.environ.setdefault("COLUMNS", "240")

import torch  # noqa: E402 (after the thread count)
import torch.nn.functional as F  # noqa: E402
import warm_cli  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from torch import nn  # noqa: E402

from prunebench.pruning.masks import prunable_weights  # noqa: E402
from prunebench.strategies.context import PruneContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# --- budgets: argument lists that keep a CLI run to a few seconds on 2 CPU cores ----------
FAST = ["train.epochs=3", "finetune.epochs=1"]
# synthetic data: 512 training images, batch 64 -> 8 steps per epoch
SYNTHETIC = ["dataset=synthetic", "train.batch_size=64", "train.threads=1"]
ONE_THREAD = ["train.threads=1"]  # tiny nets: threads only add contention
TINY_RESNET = ["model=resnet", "model.depth=8", "+model.widths=[4,8,8]"]
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


WARM = warm_cli.Server()


def run_cli(args: list[str], cwd: Path, *, script: str = "prunebench",
            check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script in a process of its own; raises with its output when `check` and
    it fails. The process is a fork of a warm interpreter where that runs as a fresh one would
    (tests/warm_cli.py), else a fresh interpreter."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR")
    if script == "prunebench":
        args = _quiet(args)
    if WARM.runs_like_a_fresh_process(script, args, full_env):  # tests/warm_cli.py
        with tempfile.TemporaryDirectory() as streams:
            proc = WARM.run(str(BIN / script), script, args, cwd, full_env, 600, Path(streams))
    else:
        proc = subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True,
                              text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def composed(overrides: list[str] | tuple[str, ...] = ()):
    """The job config the CLI would compose for `overrides` (no `hydra` node)."""
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def checkpoint_accuracy(results: dict, checkpoint: Path) -> float:
    """Test accuracy of a saved state_dict, recomputed here from the run's resolved config."""
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


# --- tiny models and pruning contexts for in-process tests ---------------------------------
def tiny_net(seed: int = 0) -> nn.Module:
    """Linear, Conv1d and Linear layers on 6 features, 3 classes: small enough for brute force
    (a full Hessian by autograd)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Unflatten(1, (1, 5)), nn.Conv1d(1, 2, 3),
                         nn.Flatten(), nn.Linear(6, 3))


def tiny_layers(seed: int = 0) -> nn.Module:
    """Prunable layers of three shapes for selection tests (their weights only, never run)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Conv1d(1, 3, 3), nn.Flatten(),
                         nn.Linear(9, 4))


def context(batches=(), model: nn.Module | None = None, *, seed: int = 0,
            amount: float | None = None) -> PruneContext:
    """A PruneContext over fixed (x, y) `batches` on the CPU, with its generator seeded; with
    `model`, also the model and all-ones masks of its prunable weights."""
    batches = list(batches)
    masks = None if model is None else {
        n: torch.ones_like(w) for n, w in prunable_weights(model).items()}
    return PruneContext(lambda: iter(batches), F.cross_entropy, torch.device("cpu"),
                        torch.Generator().manual_seed(seed), model, masks, amount)
