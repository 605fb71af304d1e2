"""One run on two ranks (torchrun, gloo on CPU) equals the one-process run at the same global
batch: final weights within 1e-5 relative, identical masks, one run folder, one results.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import NO_LATENCY, ROOT, run_cli

# tiny: 256 generated 8x8 images; a global batch of 45 leaves a last batch of 31, split 16/15,
# so the loss weighting of unequal parts is exercised; BatchNorm in the ResNet
BASE = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=100",
        "train.batch_size=45", "train.epochs=2", "finetune.epochs=1", "cache.enabled=false",
        "device=cpu", "train.threads=1", NO_LATENCY]
RESNET = ["model=resnet", "model.depth=8", "model.widths=[4,8,8]"]
MLP = ["model=mlp", "model.hidden=[32]"]


def command(ranks: int, run, *args) -> list[str]:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}"] if ranks > 1 else [sys.executable])
    return [*launch, "-m", "prunebench", f"hydra.run.dir={run}", *BASE, *args]


def run_ranks(ranks: int, run, *args, env: dict | None = None, check: bool = True):
    """torchrun with `ranks` processes; one rank is the plain CLI (forked: tests/warm_cli.py)."""
    if ranks == 1:
        proc = run_cli([f"hydra.run.dir={run}", *BASE, *args], cwd=run.parent, check=False,
                       env=env)
    else:
        proc = subprocess.run(command(ranks, run, *args), cwd=run.parent, capture_output=True,
                              text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "final.pt", weights_only=True)


def assert_same_run(one, two) -> None:
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        if tensor.is_floating_point():
            err = (tensor - b[name]).norm() / tensor.norm().clamp_min(1e-12)
            assert err <= 1e-5, (name, float(err))
            if name.endswith("weight") and tensor.dim() > 1:  # the masks
                assert torch.equal(tensor == 0, b[name] == 0), name
        else:
            assert torch.equal(tensor, b[name]), name
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (one, two))
    assert rb["status"] == "ok" and (ra["ranks"], rb["ranks"]) == (1, 2)
    for phase in ("dense", "pruned", "final"):
        assert rb[phase]["accuracy"] == ra[phase]["accuracy"]  # exact counts, reduced
        assert rb[phase]["nonzero"] == ra[phase]["nonzero"]
        assert rb[phase]["loss"] == pytest.approx(ra[phase]["loss"], rel=1e-5)
    assert [e["pruned"] for e in rb["events"]] == [e["pruned"] for e in ra["events"]]


@pytest.mark.parametrize("case", [
    [*MLP, "strategy=l1"],
    [*RESNET, "strategy=gradient", "deterministic=true"],  # torch's deterministic kernels
    [*MLP, "strategy=hessian"],
    [*RESNET, "strategy=l0", "strategy.epochs=1"],
    [*RESNET, "strategy=l1", "schedule=gradual", "schedule.end=1", "schedule.frequency=3",
     "finetune.epochs=2"],
    # the dynamic schedules change masks inside fine-tuning (on every rank, from the same
    # synchronized weights and batches); distillation and a control twin train through DDP too
    [*RESNET, "strategy=l1", "schedule=dynamic", "schedule.variant=dns",
     "schedule.frequency=2", "schedule.end=1", "finetune.epochs=2"],
    [*MLP, "strategy=l1", "schedule=dynamic", "schedule.variant=rigl", "schedule.frequency=2",
     "schedule.end=1", "finetune.epochs=2"],
    [*MLP, "strategy=l1", "finetune.distill.alpha=0.5"],
    [*MLP, "strategy=l1", "baseline.random_same_density=true"],
], ids=["l1-mlp", "gradient-resnet", "hessian-mlp", "l0-resnet", "gradual-resnet", "dns-resnet",
        "rigl-mlp", "distill-mlp", "control-mlp"])
def test_two_ranks_equal_one(tmp_path, case):
    one, two = tmp_path / "one", tmp_path / "two"
    run_ranks(1, one, *case)
    if case[-1] == "strategy=l1":  # Hydra's default outputs/<date>/<time>, from rank 0's clock
        two.mkdir()
        proc = subprocess.run([a for a in command(2, two, *case)
                               if not a.startswith("hydra.run.dir=")],
                              cwd=two, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [two] = (two / "outputs").glob("*/*")  # one folder for both ranks
    else:
        proc = run_ranks(2, two, *case)
    assert_same_run(one, two)
    # one folder, written by rank 0 alone: no second folder, one log, one table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert len(list(two.glob("*.log"))) == 1
    assert proc.stdout.count("prunebench: ok") == 1


def test_rank_failure_one_line_and_failed_results(tmp_path):
    """A rank that raises: one line naming it, non-zero exit, results.json failed, no hang."""
    module = tmp_path / "boom.py"
    module.write_text(
        "import os\nfrom torch import nn\n"
        "class Boom(nn.Linear):\n"
        "    def __init__(self, input_shape, num_classes):\n"
        "        super().__init__(input_shape[0] * input_shape[1] * input_shape[2], num_classes)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if self.training and self.calls == 3 and os.environ['RANK'] == '1':\n"
        "            raise ValueError('boom on purpose')\n"
        "        return super().forward(x.flatten(1))\n")
    run = tmp_path / "run"
    start = time.monotonic()
    proc = run_ranks(2, run, "model._target_=boom.Boom", check=False,
                     env={"PYTHONPATH": str(tmp_path), "PRUNEBENCH_TIMEOUT_S": "60"})
    assert proc.returncode != 0
    # rank 0 stopped because its peer's connection closed, not by waiting out the timeout
    # (60 s here); the bound on the wall time is generous for a loaded machine's start-up
    assert "timed out" not in proc.stderr.lower() and "timeout" not in proc.stderr.lower()
    assert time.monotonic() - start < 300
    ours = [line for line in proc.stderr.splitlines() if line.startswith("prunebench:")]
    assert ours == ["prunebench: error: rank 1: ValueError: boom on purpose"], proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "failed" and results["rank"] == 1
    assert "boom on purpose" in results["error"]


def test_sigterm_then_rerun_equals_uninterrupted(tmp_path):
    args = [*MLP, "strategy=random", "finetune.epochs=4", "train.batch_size=8"]
    reference = subprocess.Popen(command(2, tmp_path / "reference", *args), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(command(2, run, *args), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state, deadline = run / "checkpoints" / "state.pt", time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if state.exists():
            saved = torch.load(state, weights_only=True)
            if saved["phase"] == "finetune" and saved["epoch"] >= 1:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)  # torchrun passes it to its ranks
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads((run / "results.json").read_text())["status"] == "interrupted", err
    run_ranks(2, run, *args)
    assert reference.wait(timeout=300) == 0
    assert "resuming from" in next(run.glob("*.log")).read_text()
    for name, tensor in weights(tmp_path / "reference").items():
        assert torch.equal(tensor, weights(run)[name]), name
    a, b = (json.loads((r / "results.json").read_text()) for r in (run, tmp_path / "reference"))
    assert a["history"] == b["history"] and a["final"]["loss"] == b["final"]["loss"]


def test_python_m_prunebench_help():
    proc = subprocess.run([sys.executable, "-m", "prunebench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "prunebench" in proc.stdout


def _checksum_rank(rank: int, store: str, differ: bool, out) -> None:
    import torch.distributed as dist

    from prunebench import distributed

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    masks = [torch.ones(3, 4), torch.tensor([1.0, 0.0, 1.0])]
    if differ and rank == 1:
        masks[1] = torch.tensor([1.0, 1.0, 0.0])  # the same count, a moved zero
    try:
        distributed.check_same(masks, "masks")
        out.put((rank, "same"))
    except distributed.RankMismatch as err:
        out.put((rank, str(err)))
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_mask_checksums_agree_or_stop_every_rank(tmp_path, differ):
    import torch.multiprocessing as mp

    context = mp.get_context("fork")  # torch is imported already: no second import
    out = context.SimpleQueue()
    procs = [context.Process(target=_checksum_rank,
                             args=(rank, str(tmp_path / "store"), differ, out))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    answers = dict(out.get() for _ in procs)
    if differ:
        assert all("the ranks' masks differ" in a for a in answers.values()), answers
    else:
        assert answers == {0: "same", 1: "same"}


def test_slurm_tasks_are_ranks(tmp_path):
    """hydra/launcher=submitit_local with tasks_per_node=2 runs the code path of a multi-task
    Slurm job (submitit's JobEnvironment): two tasks, one run of two ranks, rank 0 speaking."""
    sweep = tmp_path / "sweep"
    run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
             f"hydra.sweep.dir={sweep}", *BASE, *MLP, "train.epochs=1"], cwd=tmp_path)
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["status"] == "ok" and results["ranks"] == 2
    logs = {int(p.name.split("_")[1]): p.read_text() for p in sweep.rglob("*_log.err")}
    assert "mask update" in logs[0] and "mask update" not in logs[1]  # rank 1: errors only
