"""Bad inputs and faults, table-driven, through the real CLI and report tool in subprocesses.

Each case asserts the exit code, exactly one line of output (or a `skipping` line for the
report), that the line names the key or file, and that the finished run folder the cases are
pointed at still holds its results, byte for byte. Most cases fail before any training.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from datafiles import write_idx, write_image_folder
from filelock import FileLock
from helpers import composed, run_cli

from prunebench import build
from prunebench.config import inputs
from prunebench.config.errors import ConfigError

# the finished run every value and ownership case is aimed at
BASE = ["train.epochs=1", "finetune.epochs=1"]


@dataclass
class Case:
    id: str
    args: list[str]
    names: str  # the key or file the one line must name
    code: int = 1
    also: str = ""  # another phrase the line must hold
    into: str = "finished"  # finished: the shared finished folder; fresh: a new one
    setup: str = ""  # name of a setup step (data files, lock, ...)
    script: str = "prunebench"
    lines: int = 1
    extra: dict = field(default_factory=dict)


VALUES = [  # bad numbers, refused before any work
    Case("amount-range", ["strategy.amount=1.5"], "strategy.amount"),
    Case("amount-nan", ["strategy.amount=nan"], "strategy.amount", also="finite"),
    Case("amount-inf", ["strategy.amount=inf"], "strategy.amount", also="finite"),
    Case("threshold-nan", ["strategy.amount=null", "strategy.threshold=nan"],
         "strategy.threshold", also="finite"),
    Case("threshold-inf", ["strategy.amount=null", "strategy.threshold=-inf"],
         "strategy.threshold", also="finite"),
    Case("lr-nan", ["optimizer.lr=nan"], "optimizer.lr", also="finite"),
    Case("lr-inf", ["optimizer.lr=inf"], "optimizer.lr", also="finite"),
    Case("momentum-nan", ["optimizer.momentum=nan"], "optimizer.momentum", also="finite"),
    Case("lr-scale-nan", ["finetune.lr_scale=nan"], "finetune.lr_scale", also="finite"),
    Case("l2-inf", ["train.regularization.l2=inf"], "train.regularization.l2"),
    Case("clip-nan", ["train.grad_clip.max_norm=nan"], "train.grad_clip.max_norm"),
    Case("val-fraction-nan", ["dataset.val_fraction=nan"], "dataset.val_fraction"),
    Case("damp-inf", ["strategy=hessian", "strategy.damp=inf"], "strategy.damp"),
    Case("objective-nan", ["objective.min_sparsity=nan"], "objective.min_sparsity"),
    Case("epochs-negative", ["train.epochs=-1"], "train.epochs"),
    Case("cache-dir-empty", ["cache.dir=''"], "cache.dir"),
]
KEYS = [  # unknown keys, with a "did you mean"
    Case("train-typo", ["+train.epoch=3"], "train.epoch", also="did you mean train.epochs"),
    Case("top-level-add", ["+foo=1"], "foo"),
    Case("top-level-set", ["foo=1"], "foo"),
    Case("finetune-typo", ["+finetune.epoch=1"], "finetune.epoch", also="finetune.epochs"),
    Case("cache-typo", ["+cache.dri=x"], "cache.dri", also="cache.dir"),
    Case("strategy-typo", ["strategy.amout=0.5"], "strategy.amout", also="strategy.amount"),
    Case("strategy-typo-add", ["+strategy.amout=0.5"], "strategy.amout"),
    Case("model-typo", ["+model.hiden=[4]"], "model.hiden", also="model.hidden"),
    Case("optimizer-typo", ["+optimizer.momentun=0.9"], "optimizer.momentun",
         also="optimizer.momentum"),
    Case("schedule-typo", ["schedule=iterative", "+schedule.round=2"], "schedule.round",
         also="schedule.rounds"),
    Case("dataset-typo", ["+dataset.val_fractoin=0.1"], "dataset.val_fractoin",
         also="dataset.val_fraction"),
]
DEVICES = [
    Case("cuda", ["device=cuda"], "device=cuda", also="not available"),
    Case("cuda-index", ["device=cuda:1"], "device=cuda:1", also="not available"),
    Case("mps", ["device=mps"], "device=mps", also="not available"),
    Case("unknown-device", ["device=tpu"], "device=tpu", also="invalid"),
]
SIZES = [  # model sizes: one line after composing, before any training, folder untouched
    Case("hidden-zero", ["model.hidden=[0]"], "model.hidden", into="fresh"),
    Case("hidden-negative", ["model.hidden=[-3,5]"], "model.hidden", into="fresh"),
    Case("resnet-depth", ["model=resnet", "model.depth=21"], "model.depth", into="fresh"),
    Case("resnet-widths", ["model=resnet", "model.widths=[16,0,64]"], "model.widths",
         into="fresh"),
    Case("vgg-depth", ["model=vgg", "model.depth=12"], "model.depth", into="fresh"),
]
UNSUPPORTED = [  # a criterion or granularity the model cannot take: one line, nothing trained
    # shufflenet's channel shuffle: Torch-Pruning cannot trace its units; said before training
    Case("neuron-untraceable", ["model=torchvision", "model.arch=shufflenet_v2_x0_5",
                                "dataset=synthetic", "dataset.channels=3", "strategy=l2",
                                "hydra.job_logging.root.level=WARNING"],
         "strategy.granularity=neuron", also="cannot trace", into="fresh"),
    # depthwise convolutions: refused once the model is built (its INFO line kept out)
    *[Case(f"{s}-grouped-conv", ["model=torchvision", "model.arch=mobilenet_v3_small",
                                  "dataset=synthetic", "dataset.channels=3", f"strategy={s}",
                                  "hydra.job_logging.root.level=WARNING"],
           f"strategy={s} cannot prune layer features.1.block.0.0", also="groups=16",
           into="fresh") for s in ("wanda", "sparsegpt")],
    Case("obs-grouped-conv", ["model=torchvision", "model.arch=mobilenet_v3_small",
                              "dataset=synthetic", "dataset.channels=3", "strategy=hessian",
                              "strategy.variant=obs", "hydra.job_logging.root.level=WARNING"],
         "strategy.variant=obs cannot prune layer features.1.block.0.0", into="fresh"),
]
HYDRA = [  # Hydra's own multi-line messages, condensed
    Case("wrong-type", ["strategy.amount=abc"], "strategy.amount=abc"),
    Case("wrong-int", ["seed=1.5"], "seed"),
    Case("unknown-experiment", ["+experiment=nope"], "experiment", also="snip_lenet300_mnist"),
    Case("unknown-group-option", ["strategy=nope"], "strategy", also="hessian"),
    Case("bare-group", ["strategy"], "strategy", also="l1"),
    Case("missing-searchpath", ["hydra.searchpath=[file:///nonexistent/conf]"],
         "hydra.searchpath", also="/nonexistent/conf"),
]
OWNERSHIP = [
    Case("other-config-finished", ["train.epochs=2", "finetune.epochs=1"], "train.epochs",
         also="resume=false"),
    Case("busy-folder", BASE, "is in use", also=f"pid {os.getpid()}", setup="lock"),
]
DATA = [  # corrupt IDX sources: named, and nothing copied into dataset.root
    Case("gz-truncated", [], "train-images-idx3-ubyte.gz", into="fresh", setup="truncate"),
    Case("gz-not-gzip", [], "t10k-labels-idx1-ubyte.gz", into="fresh", setup="notgzip"),
    Case("idx-bad-magic", [], "train-labels-idx1-ubyte.gz", into="fresh", setup="magic"),
    Case("idx-count-mismatch", [], "t10k-labels-idx1-ubyte.gz", into="fresh",
         setup="count"),
    Case("idx-short-payload", [], "train-images-idx3-ubyte.gz", into="fresh", setup="short"),
]
SWEEPS = [
    Case("sweep-wrong-type", ["-m", "strategy.amount=0.5,abc"], "strategy.amount=abc",
         into="sweep"),
    Case("sweep-unknown-key", ["-m", "+train.epoch=1,2"], "train.epoch", into="sweep"),
]
REPORT = [
    Case("report-out-is-file", ["--out", "{file}"], "--out", code=2, script="prunebench-report"),
    Case("report-group-by", ["--group-by", "nonsense"], "nonsense", code=2,
         script="prunebench-report"),
    Case("report-baseline", ["--baseline", "nope"], "--baseline nope", code=2,
         script="prunebench-report"),
    Case("report-missing-path", ["{missing}"], "does-not-exist", code=2,
         script="prunebench-report"),
]
# your own models (own_models.py, written into the working directory): checked when built,
# before any training. Each fails once composed, so it goes to a fresh folder
OWN_MODELS = """
import torch
from torch import nn


class NoLayers(nn.Module):  # parameters, but no Linear or Conv layer
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, x):
        return x.flatten(1)[:, :len(self.scale)] * self.scale


class DictOut(nn.Module):  # a dict without logits: which entry is meant is not clear
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        return {"scores": self.fc(x.flatten(1))}


class ListOut(DictOut):  # a list whose first element is not a tensor
    def forward(self, x):
        return ["logits", self.fc(x.flatten(1))]


class ThreeClasses(nn.Module):  # logits of the wrong width for digits' 10 classes
    def __init__(self, input_shape):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def number():
    return 3


def text():
    return "a model"
"""
YOURS = [
    *[Case(f"own-returns-{kind}", [f"model._target_=own_models.{kind}"],
           f"model._target_=own_models.{kind}", also="not a torch.nn.Module", into="fresh",
           setup="own") for kind in ("number", "text")],
    Case("own-no-layers", ["model._target_=own_models.NoLayers"],
         "model._target_=own_models.NoLayers", also="no Linear or Conv layer", into="fresh",
         setup="own"),
    *[Case(f"own-{name.lower()}", [f"model._target_=own_models.{name}"],
           f"model._target_=own_models.{name}", also="expected the logits", into="fresh",
           setup="own") for name in ("DictOut", "ListOut")],
    Case("own-wrong-width", ["model._target_=own_models.ThreeClasses"],
         "model._target_=own_models.ThreeClasses", also="expected [2, 10]", into="fresh",
         setup="own"),
    Case("own-cannot-import", ["model._target_=own_models.Missing"],
         "model._target_=own_models.Missing", also="cannot import", into="fresh", setup="own"),
    Case("own-unknown-key", ["model._target_=own_models.ThreeClasses", "+model.width=3"],
         "model.width", also="not a setting of model", setup="own"),
    Case("exclude-everything", ["strategy.exclude=[.*]"], "strategy.exclude=['.*']",
         also="matches every Linear and Conv layer", into="fresh"),
    Case("exclude-not-a-pattern", ["strategy.exclude=['[']"], "strategy.exclude",
         also="not a regular expression"),
]
AFTER = [  # the keys of the steps after training: bad values refused like any other
    Case("export-onnx-type", ["export.onnx=maybe"], "export.onnx=maybe", also="bool"),
    Case("export-typo", ["+export.onxx=true"], "export.onxx", also="export.onnx"),
    Case("inference-kernel", ["inference.kernel=gpu"], "inference.kernel=gpu"),
    Case("inference-measure-type", ["inference.measure=abc"], "inference.measure=abc"),
    Case("objective-name", ["objective.name=nope"], "objective.name=nope",
         also="final_accuracy"),
    Case("objective-min-sparsity", ["objective.min_sparsity=2"], "objective.min_sparsity"),
    Case("logger-unknown", ["logger=nope"], "logger", also="tensorboard"),
    Case("logger-unknown-key", ["logger=csv", "+logger.csv.bogus=1"], "logger.csv.bogus"),
    Case("threads-zero", ["train.threads=0"], "train.threads"),
    Case("sparsegpt-damp-negative", ["strategy=sparsegpt", "strategy.damp=-1"], "strategy.damp"),
    Case("sparsegpt-block-zero", ["strategy=sparsegpt", "strategy.block_size=0"],
         "strategy.block_size"),
    Case("sparsegpt-wbits-one", ["strategy=sparsegpt", "strategy.wbits=1"], "strategy.wbits=1"),
    Case("sparsegpt-groupsize-alone", ["strategy=sparsegpt", "strategy.groupsize=64"],
         "strategy.groupsize=64", also="strategy.wbits"),
]
SENSITIVITY = [  # prunebench-sensitivity shares prunebench's checks and says the same line
    Case(f"sensitivity-{c.id}", c.args, c.names, also=c.also, setup=c.setup, code=c.code,
         script="prunebench-sensitivity")
    for c in [Case("out-is-file", ["--out", "{file}"], "--out", also="is a file"),
              Case("out-under-file", ["--out", "{file}/x"], "--out", also="Not a directory"),
              Case("lr-nan", ["optimizer.lr=nan"], "optimizer.lr", also="finite"),
              Case("amount-range", ["strategy.amount=1.5"], "strategy.amount"),
              Case("unknown-key", ["+train.epoch=3"], "train.epoch", also="train.epochs"),
              Case("strategy-typo", ["strategy.amout=0.5"], "strategy.amout"),
              Case("unknown-option", ["strategy=nope"], "strategy", also="hessian"),
              Case("wrong-type", ["strategy.amount=abc"], "strategy.amount=abc"),
              Case("device", ["device=cuda:1"], "device=cuda:1", also="not available"),
              Case("own-returns-number", ["model._target_=own_models.number"],
                   "model._target_=own_models.number", setup="own"),
              Case("exclude-everything", ["strategy.exclude=[.*]"], "strategy.exclude"),
              Case("amounts", ["--amounts", "0.5,1.5"], "--amounts", code=2)]
]
HF = ["model=hf", "model.name=/nonexistent/model"]  # refused before the folder is read
IMAGES = ["dataset=image_folder", "dataset.path={images}", "dataset.image_size=8"]
NEW_KEYS = [  # keys this round added: Hugging Face models, image folders, checkpoints, export.hf
    Case("hf-name-missing", ["model=hf"], "model.name", also="has no value"),
    Case("hf-dtype", [*HF, "model.dtype=float64"], "model.dtype=float64",
         also="float32, bfloat16, float16", into="fresh"),
    Case("hf-dtype-nan", [*HF, "model.dtype=nan"], "model.dtype=nan", also="finite"),
    Case("hf-dtype-typo", [*HF, "+model.dtpye=float16"], "model.dtpye", also="model.dtype"),
    Case("export-hf-type", ["export.hf=maybe"], "export.hf=maybe"),
    Case("export-hf-not-hf", ["export.hf=true"], "export.hf=true", also="needs model=hf"),
    Case("workers-zero", [*IMAGES, "dataset.workers=0"], "dataset.workers=0", into="fresh"),
    Case("workers-nan", [*IMAGES, "dataset.workers=nan"], "dataset.workers=nan",
         also="finite"),
    Case("checkpoint-missing", ["dense.checkpoint=/nonexistent/dense.pt"], "dense.checkpoint",
         also="no such file"),
    Case("eval-tasks-string", ["eval.tasks=boolq"], "eval.tasks=boolq"),
    Case("eval-tasks-not-hf", ["eval.tasks=[boolq]"], "eval.tasks", also="needs model=hf",
         into="fresh"),
    Case("eval-limit-zero", ["eval.limit=0"], "eval.limit=0", into="fresh"),
    Case("eval-include-missing", ["eval.include_path=/nonexistent"], "eval.include_path",
         also="not a folder", into="fresh"),
    Case("calibration-samples-zero", ["calibration.samples=0"], "calibration.samples=0"),
    Case("calibration-samples-nan", ["calibration.samples=nan"], "calibration.samples=nan"),
    Case("calibration-typo", ["+calibration.sampels=3"], "calibration.sampels",
         also="calibration.samples"),
    # compression (compress.*, export.compressed): more cases in tests/test_compress.py
    Case("compress-bits-nan", ["compress.quantize=kmeans", "compress.bits=nan"],
         "compress.bits=nan"),
    Case("compress-bits-type", ["compress.quantize=kmeans", "compress.bits=four"],
         "compress.bits=four"),
    Case("compress-quantize-typo", ["compress.quantize=kmean"], "compress.quantize=kmean",
         into="fresh"),
    Case("compress-key-typo", ["+compress.bit=4"], "compress.bit", also="compress.bits"),
    Case("compress-finetune-inf", ["compress.quantize=kmeans", "compress.finetune_epochs=inf"],
         "compress.finetune_epochs=inf"),
    Case("export-compressed-alone", ["export.compressed=true"], "export.compressed",
         also="compress.quantize", into="fresh"),
]
# the value checks run in-process below (test_bad_value_is_one_line_naming_the_key); a sample
# of them also goes through the real CLI, with the finished folder checked untouched
THROUGH_CLI = VALUES[:3]
CASES = (THROUGH_CLI + KEYS + DEVICES + SIZES + UNSUPPORTED + HYDRA + OWNERSHIP + DATA + SWEEPS
         + REPORT + YOURS + AFTER + SENSITIVITY + NEW_KEYS)


def digest(folder: Path) -> dict:
    """What a finished run folder holds: its results and checkpoints, by content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted([folder / "results.json", *(folder / "checkpoints").glob("*.pt")])}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run, shared by every case that points at it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "finished"
    run_cli([f"hydra.run.dir={run}", f"cache.dir={root / 'cache'}", *BASE], cwd=root)
    assert json.loads((run / "results.json").read_text())["status"] == "ok"
    return root, run, digest(run)


def corrupt(src: Path, how: str) -> None:
    """Write the four IDX .gz files, then spoil one the way `how` says."""
    write_idx(src)

    def raw(name: str) -> bytes:
        return gzip.decompress((src / name).read_bytes())

    if how == "truncate":
        path = src / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:200])
    elif how == "notgzip":
        (src / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>not found</html>")
    elif how == "magic":  # a labels file with the images magic number
        data = raw("train-labels-idx1-ubyte.gz")
        (src / "train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">I", 0x803) + data[4:]))
    elif how == "count":  # one label fewer than images
        data = raw("t10k-labels-idx1-ubyte.gz")
        n = struct.unpack(">I", data[4:8])[0]
        (src / "t10k-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x801, n - 1) + data[8:-1]))
    elif how == "short":  # the header promises more pixels than follow
        data = raw("train-images-idx3-ubyte.gz")
        (src / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-10]))


def output_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, finished, tmp_path):
    root, run, before = finished
    folder = {"finished": run, "fresh": tmp_path / "run", "sweep": tmp_path / "sweep"}[case.into]
    args = [a.format(file=tmp_path / "a-file", missing=tmp_path / "does-not-exist",
                     images=tmp_path / "images") for a in case.args]
    if any("{images}" in a for a in case.args):
        write_image_folder(tmp_path / "images")
    lock = None
    if case.setup == "own":
        (root / "own_models.py").write_text(OWN_MODELS)
    if case.script == "prunebench-report":
        (tmp_path / "a-file").write_text("x")
        argv = args if case.id == "report-missing-path" else [str(run), *args]
    elif case.script == "prunebench-sensitivity":  # its --out by default, the case's wins
        (tmp_path / "a-file").write_text("x")
        argv = ["--out", str(tmp_path / "sensitivity"), *BASE, f"cache.dir={root / 'cache'}",
                *args]
    else:  # flags (-m) first; the case's overrides last, so they win
        argv = [*[a for a in args if a.startswith("-")], *BASE, f"hydra.run.dir={folder}",
                f"hydra.sweep.dir={folder}", f"cache.dir={root / 'cache'}",
                *[a for a in args if not a.startswith("-")]]
        if case.setup == "lock":  # a run holding the folder: its lock and holder file
            lock = FileLock(str(run / ".prunebench.lock"))
            lock.acquire()
            (run / ".prunebench.holder").write_text(
                json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        if case in DATA:
            corrupt(tmp_path / "src", case.setup)
            argv += ["dataset=mnist", f"dataset.source_dir={tmp_path / 'src'}",
                     f"dataset.root={tmp_path / 'data'}", "finetune.epochs=0"]
    try:
        proc = run_cli(argv, cwd=root, script=case.script, check=False)
    finally:
        if lock is not None:
            (run / ".prunebench.holder").unlink(missing_ok=True)
            lock.release()
    lines = output_lines(proc)
    assert proc.returncode == case.code, (proc.returncode, lines)
    assert len(lines) == case.lines, lines
    assert case.names in lines[-1] and case.also in lines[-1], lines
    assert "Traceback" not in proc.stderr
    assert digest(run) == before  # the finished run lost nothing
    if case.into == "fresh":
        assert not (folder / "checkpoints").exists()  # nothing trained
        results = folder / "results.json"
        assert not results.exists() or json.loads(results.read_text())["status"] == "failed"
    if case in DATA:  # the bad source was named and not copied into dataset.root
        assert not list((tmp_path / "data").rglob("*ubyte*"))
    if case.into == "sweep":  # refused before any job ran
        assert not any(folder.glob("*/results.json"))
    if case in SENSITIVITY:  # refused before any work: nothing written
        assert not (tmp_path / "sensitivity").exists()


@pytest.mark.parametrize("case", VALUES, ids=[c.id for c in VALUES])
def test_bad_value_is_one_line_naming_the_key(case: Case):
    """The checks the CLI runs before any work (config.inputs, then build.check), on the
    config it would compose: one ConfigError line naming the key."""
    cfg = composed([*BASE, *case.args])
    with pytest.raises(ConfigError) as err:
        inputs.check(cfg)
        build.check(cfg)
    line = str(err.value)
    assert "\n" not in line and case.names in line and case.also in line, line


def test_orphaned_temporary_files_are_cleaned_and_the_finished_run_reused(finished):
    root, run, before = finished
    orphans = [run / "checkpoints" / ".prunebench-tmp.state.pt.k1ll3d.tmp",
               run / ".prunebench-tmp.results.json.x9.tmp"]
    # a user's own files that look like temporary ones are not ours to delete
    theirs = [run / ".notes.tmp", run / "checkpoints" / ".state.pt.mine.tmp",
              run / ".prunebench-tmp.kept", run / ".hf.tmp" / "config.json"]
    orphans.append(run / ".prunebench-tmp.hf.x1.tmp" / "config.json")  # export.hf's folder
    for path in orphans + theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a write")
    proc = run_cli([*BASE, f"hydra.run.dir={run}", f"cache.dir={root / 'cache'}"], cwd=root)
    assert "already holds this run" in proc.stderr
    assert not any(p.exists() for p in orphans)
    assert not (run / ".prunebench-tmp.hf.x1.tmp").exists()
    assert all(p.read_bytes() == b"half a write" for p in theirs)
    for path in theirs:
        path.unlink()
    (run / ".hf.tmp").rmdir()
    assert digest(run) == before


def test_report_skips_nan_accuracy_and_a_fifo_without_hanging(finished, tmp_path):
    _, run, _ = finished
    tree = tmp_path / "tree"
    results = json.loads((run / "results.json").read_text())
    for name, final_accuracy in (("good", None), ("nan", float("nan"))):
        (tree / name).mkdir(parents=True)
        copy = json.loads(json.dumps(results))
        if final_accuracy is not None:
            copy["final"]["accuracy"] = final_accuracy
        (tree / name / "results.json").write_text(json.dumps(copy))
    (tree / "fifo").mkdir()
    os.mkfifo(tree / "fifo" / "results.json")
    proc = run_cli([str(tree), "--out", str(tmp_path / "out"), "--format", "json"], cwd=tmp_path,
                   script="prunebench-report", env={"COLUMNS": "1000"})  # rich: no wrapping
    skips = [line for line in output_lines(proc) if "skipping" in line]
    assert any("nan/results.json" in s and "final_acc is nan" in s for s in skips), skips
    assert any("fifo/results.json" in s and "not a regular file" in s for s in skips), skips
    groups = json.loads((tmp_path / "out" / "comparison.json").read_text())
    groups = groups["rows"] if isinstance(groups, dict) else groups
    assert [g["n"] for g in groups] == [1]  # the good run alone


def test_sweep_with_a_failed_job_exits_non_zero_and_marks_pruning_everything(finished,
                                                                             tmp_path):
    root, run, before = finished
    sweep = tmp_path / "sweep"
    # job 0 prunes all but a millionth: nothing is left; job 1 is a bad value
    proc = run_cli(["-m", "train.epochs=1", "finetune.epochs=0", f"hydra.sweep.dir={sweep}",
                    f"cache.dir={root / 'cache'}", "strategy.amount=0.999999,1.5"],
                   cwd=root, check=False)
    lines = output_lines(proc)
    assert proc.returncode == 1, lines
    assert lines[-1] == (f"prunebench: error: 1 of 2 jobs failed (see {sweep / 'comparison.md'})")
    assert (sweep / "comparison.md").exists()
    empty = json.loads((sweep / "0" / "results.json").read_text())
    assert empty["status"] == "ok" and empty["final"]["nonzero"] == 0
    assert "every prunable weight" in empty["warnings"][0]
    assert len(empty["empty_layers"]) == len(empty["final"]["layers"])
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "failed"
    assert digest(run) == before


def test_a_bad_copy_in_dataset_root_is_replaced_from_good_sources(tmp_path):
    from prunebench.data import vision

    written = write_idx(tmp_path / "src")
    raw = tmp_path / "root" / vision.SOURCES["mnist"].folder
    raw.mkdir(parents=True)
    for name in vision.IDX_FILES:  # what an older version left: unpacked copies, one spoiled
        (raw / name).write_bytes(gzip.decompress((tmp_path / "src" / f"{name}.gz").read_bytes()))
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03truncated")
    data = vision.load("mnist", root=str(tmp_path / "root"), source_dir=str(tmp_path / "src"),
                       val_fraction=0)
    assert data.train.x.numpy().tobytes() == written["train_x"].tobytes()


def stop_on_first_call(monkeypatch, owner, name: str) -> list:
    """Patch owner.name to send SIGINT on its first call (as a Ctrl-C arriving mid-step);
    returns the list of calls made."""
    import signal

    original, calls = getattr(owner, name), []

    def first_call_stops(*args, **kwargs):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, first_call_stops)
    return calls


def test_a_stop_signal_during_exact_hessian_scoring_stops_at_the_next_rows(monkeypatch):
    import torch
    from torch import nn

    from prunebench.runstate.signals import Interrupted, stop_on_signals
    from prunebench.strategies.base import PruneContext
    from prunebench.strategies.hessian import exact_diagonal

    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    batches = [(torch.randn(8, 6), torch.randint(3, (8,)))]
    ctx = PruneContext(batches=lambda: iter(batches), loss=nn.functional.cross_entropy,
                       device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    weights = {"1.weight": model[1].weight, "3.weight": model[3].weight}
    rows = stop_on_first_call(monkeypatch, torch.autograd, "grad")  # mid first rows
    with stop_on_signals(), pytest.raises(Interrupted):
        exact_diagonal(model, weights, batches, ctx, chunk=4)
    # the gradient pass and one chunk of 4 rows ran, not all 24 + 12 rows
    assert len(rows) == 2


def test_a_stop_signal_during_synflow_or_obs_stops_after_the_current_round(monkeypatch):
    import torch
    from torch import nn

    from prunebench.runstate.signals import Interrupted, stop_on_signals
    from prunebench.strategies import gradient, obs
    from prunebench.strategies.base import PruneContext

    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    batches = [(torch.randn(8, 6), torch.randint(3, (8,))) for _ in range(3)]
    weights = {"1.weight": model[1].weight, "3.weight": model[3].weight}
    ctx = PruneContext(batches=lambda: iter(batches), loss=nn.functional.cross_entropy,
                       device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                       model=model, amount=0.5, masks={n: torch.ones_like(w)
                                                       for n, w in weights.items()})
    rounds = stop_on_first_call(monkeypatch, gradient, "synflow_scores")
    strategy = gradient.Gradient(variant="synflow", iterations=10)
    with stop_on_signals(), pytest.raises(Interrupted):
        strategy.score(weights, ctx)
    assert len(rounds) == 1  # of 10

    forwards = stop_on_first_call(monkeypatch, model, "forward")
    with stop_on_signals(), pytest.raises(Interrupted):
        obs.layer_curvatures(model, weights, batches, 0.01, 128, 1.0)
    assert len(forwards) == 1  # of 3 batches


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_a_present_gpu_is_accepted_as_device(name, monkeypatch):
    """The device check asks torch.cuda (torch.backends.cuda has no is_available): with a GPU
    present, device=cuda passes. Found on the first run on a GPU, where every device=cuda run
    was refused; here the GPU's presence is simulated."""
    import torch

    from prunebench.config.errors import ConfigError
    from prunebench.config.inputs import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device(name)
    with pytest.raises(ConfigError, match="device=cuda:1 is not available"):
        check_device("cuda:1")
