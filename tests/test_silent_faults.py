"""Results that would be silently wrong, and files that are not ours (issue 29), through the CLI.

Each test runs `prunebench` or `prunebench-report` in a subprocess and checks what it wrote
against a reference computed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.data import digits
from prunebench.models.mlp import MLP

TINY = ["model.hidden=[16]"]  # digits: 64 -> 16 -> 10


def one_error_line(proc) -> str:
    """The single error line a refused command ends with (log lines before it, no traceback)."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], lines
    assert lines[-1].startswith("prunebench: error: "), lines
    return lines[-1]


# --- a checkpoint holding two wrapped models ---------------------------------------------------

@pytest.fixture(scope="module")
def student_and_teacher(tmp_path_factory):
    """A real PyTorch Lightning checkpoint of a module holding `net` and a `teacher` of the
    same shape (distillation), saved by Lightning's Trainer after one training step."""
    pl = pytest.importorskip("pytorch_lightning")

    class Distill(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.teacher = MLP((1, 8, 8), 10, hidden=(16,))
            torch.manual_seed(2)
            self.net = MLP((1, 8, 8), 10, hidden=(16,))
            self.teacher.requires_grad_(False)

        def training_step(self, batch, _):
            x, y = batch
            soft = self.teacher(x).softmax(1)
            logits = self.net(x)
            return nn.functional.cross_entropy(logits, y) + nn.functional.cross_entropy(
                logits, soft)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    folder = tmp_path_factory.mktemp("lightning")
    data = digits.load()
    x = data.train.x.float() / 255
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, data.train.y),
                                         batch_size=64)
    module = Distill()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=folder)
    trainer.fit(module, loader)
    path = folder / "distill.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=False)
    assert "pytorch-lightning_version" in stored  # Lightning's own container
    assert {k.split(".")[0] for k in stored["state_dict"]} == {"net", "teacher"}
    return path, {name: {k: v.clone() for k, v in getattr(module, name).state_dict().items()}
                  for name in ("net", "teacher")}


def test_two_wrapped_models_are_refused_in_one_line_and_a_key_chooses(
        student_and_teacher, tmp_path, cli):
    path, weights = student_and_teacher
    assert not torch.equal(weights["net"]["1.weight"], weights["teacher"]["1.weight"])
    refused = run_cli([*TINY, f"dense.checkpoint={path}", f"hydra.run.dir={tmp_path / 'r'}"],
                      cwd=tmp_path, check=False)
    line = one_error_line(refused)
    assert f"dense.checkpoint={path} is ambiguous" in line
    assert "under 'net.' and 'teacher.' each fit" in line
    assert "dense.checkpoint_prefix=net (or teacher)" in line
    for chosen in ("teacher", "net"):
        results, out = cli([*TINY, f"dense.checkpoint={path}",
                            f"dense.checkpoint_prefix={chosen}", "strategy.amount=0.5"],
                           name=chosen)
        dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)
        assert dense.keys() == weights[chosen].keys()
        assert all(torch.equal(dense[k], v) for k, v in weights[chosen].items())
        assert results["config"]["dense"]["checkpoint_prefix"] == chosen
    absent = run_cli([*TINY, f"dense.checkpoint={path}", "dense.checkpoint_prefix=student",
                      f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path, check=False)
    assert "dense.checkpoint_prefix=student: no weights under 'student.'" in one_error_line(
        absent)
    assert "prefixes there: net, teacher" in absent.stderr


def test_a_prefix_without_a_checkpoint_is_refused(tmp_path):
    proc = run_cli(["dense.checkpoint_prefix=net", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path, check=False)
    assert "dense.checkpoint_prefix=net has no checkpoint" in one_error_line(proc)
    assert not (tmp_path / "r").exists()  # before any work


def test_a_teacher_of_another_shape_is_not_ambiguous(student_and_teacher, tmp_path):
    """Only one wrapped model fits the model's names and shapes: it is taken, unasked."""
    from prunebench.models import checkpoint

    path, weights = student_and_teacher
    stored = torch.load(path, weights_only=True)
    stored["state_dict"] = {k: v for k, v in stored["state_dict"].items()
                            if k.startswith("net.")} | {
        f"teacher.{k}": torch.zeros(2 * v.shape[0], *v.shape[1:])
        for k, v in weights["teacher"].items()}
    wider = tmp_path / "wider_teacher.ckpt"
    torch.save(stored, wider)
    model = MLP((1, 8, 8), 10, hidden=(16,))
    checkpoint.dense_entry(wider, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights["net"].items())
    # the names as stored fit too, beside an `ema.` copy: ambiguous, '' chooses them
    both = tmp_path / "with_ema.pt"
    torch.save(weights["net"] | {f"ema.{k}": v for k, v in weights["teacher"].items()}, both)
    with pytest.raises(ConfigError, match="the names as stored and 'ema.' each fit"):
        checkpoint.dense_entry(both, MLP((1, 8, 8), 10, hidden=(16,)))
    for prefix, chosen in (("", "net"), ("ema", "teacher")):
        model = MLP((1, 8, 8), 10, hidden=(16,))
        checkpoint.dense_entry(both, model, prefix=prefix)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in weights[chosen].items())


# --- two layers sharing one weight tensor --------------------------------------------------------

TIED = '''
import torch
from torch import nn


class Tied(nn.Module):
    """Two layers that share one weight tensor (tied weights), between two plain ones."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        h = torch.relu(self.b(torch.relu(self.a(h))))
        return self.head(h)
'''


def test_a_weight_shared_by_two_layers_is_counted_and_pruned_once(cli, tmp_path):
    (tmp_path / "tied_nets.py").write_text(TIED)
    results, out = cli(["model._target_=tied_nets.Tied", "strategy.amount=0.5"])
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    assert torch.equal(final["a.weight"], final["b.weight"])
    distinct = {k: final[k] for k in ("inp.weight", "a.weight", "head.weight")}
    params = sum(w.numel() for w in distinct.values())
    nonzero = {k: int(torch.count_nonzero(w)) for k, w in distinct.items()}
    assert params == 64 * 16 + 16 * 16 + 16 * 10  # 1440, not 1696
    for phase in ("pruned", "final"):
        assert results[phase]["params"] == params
        assert results[phase]["all_prunable"]["params"] == params
    assert results["pruned"]["nonzero"] == params - round(0.5 * params)  # an exact count
    assert results["final"]["nonzero"] == sum(nonzero.values())
    assert results["final"]["sparsity"] == pytest.approx(1 - sum(nonzero.values()) / params)
    layers = results["final"]["layers"]
    assert [layer["name"] for layer in layers] == list(distinct)
    assert layers[1]["shared_with"] == ["b.weight"] and "shared_with" not in layers[0]
    # MACs: the shared weight computes twice (two calls), at its one density
    macs = {"inp.weight": 64 * 16, "a.weight": 2 * 16 * 16, "head.weight": 16 * 10}
    assert results["final"]["flops"] == sum(macs.values())
    effective = sum(round(macs[k] * nonzero[k] / w.numel()) if k != "a.weight" else
                    2 * round(16 * 16 * nonzero[k] / w.numel()) for k, w in distinct.items())
    assert results["final"]["effective_flops"] == effective
    assert results["final"]["total_params"] == params + 16 + 16 + 16 + 10  # biases once each


def test_units_of_a_shared_weight_are_refused_at_neuron_granularity(tmp_path):
    """Masking a unit's input columns in a tied weight would cut them from the other layer."""
    (tmp_path / "tied_nets.py").write_text(TIED)
    proc = run_cli(["model._target_=tied_nets.Tied", "strategy.granularity=neuron",
                    "strategy.amount=0.5", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                   check=False)
    assert ("strategy.granularity=neuron: layers a.weight and b.weight share one weight tensor"
            in one_error_line(proc))
    assert not (tmp_path / "r" / "checkpoints").exists()  # before any training


def test_a_shared_weight_stays_dense_when_any_of_its_layers_is_excluded(tmp_path):
    import importlib.util

    from prunebench.pruning.masks import prunable_weights, sparsity_report

    (tmp_path / "tied_nets.py").write_text(TIED)
    spec = importlib.util.spec_from_file_location("tied_nets", tmp_path / "tied_nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Tied()
    assert list(prunable_weights(model)) == ["inp.weight", "a.weight", "head.weight"]
    # excluding the second user of the tensor keeps the tensor, and so the first, dense
    assert list(prunable_weights(model, ["b"])) == ["inp.weight", "head.weight"]
    model.again = model.a  # one module under two names: one tensor, counted once
    assert sparsity_report(model)["params"] == 1440


# --- N:M against an amount it cannot reach -----------------------------------------------------

def test_a_pattern_with_an_amount_it_cannot_give_is_refused_and_recorded(tmp_path):
    refused = run_cli([*TINY, "strategy.pattern=2:4", "strategy.amount=0.9",
                       f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path, check=False)
    line = one_error_line(refused)
    assert "strategy.amount=0.9 contradicts strategy.pattern=2:4" in line
    assert "strategy.amount=0.5" in line
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY, "train.epochs=1", "finetune.epochs=0", "strategy.pattern=2:4",
                    "strategy.amount=0.5,0.9", f"hydra.sweep.dir={sweep}",
                    f"cache.dir={tmp_path / 'cache'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr
    ok, failed = (json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1))
    assert ok["status"] == "ok" and ok["final"]["sparsity"] == pytest.approx(0.5)
    weights = torch.load(sweep / "0" / "checkpoints" / "final.pt", weights_only=True)
    for name in ("1.weight", "3.weight"):  # exactly 2 of every 4 consecutive inputs removed
        groups = (weights[name] != 0).reshape(weights[name].shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all())
    assert failed["status"] == "failed"
    assert "strategy.amount=0.9 contradicts strategy.pattern=2:4" in failed["error"]
    assert "failed" in (sweep / "comparison.md").read_text()


@pytest.mark.parametrize("args, line", [
    (["strategy.amount=null", "strategy.threshold=0.01", "strategy.allocation=erk"],
     "strategy.allocation=erk divides strategy.amount among the layers"),
    (["strategy.pattern=2:4", "strategy.amount=0.5", "strategy.allocation=lamp"],
     "strategy.allocation=lamp contradicts strategy.pattern=2:4")])
def test_an_allocation_with_nothing_to_divide_is_refused(tmp_path, args, line):
    """Keys that used to override each other silently: the selection went on without the
    allocation while results.json's `allocation.name` said it was used."""
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, check=False)
    assert line in one_error_line(proc)
    assert not (tmp_path / "r").exists()


# --- strategy.exclude and the sparsity denominators --------------------------------------------

@pytest.fixture(scope="module")
def with_and_without_exclude(tmp_path_factory):
    """Two finished runs of the same target: every layer pruned, and the classifier excluded."""
    root = tmp_path_factory.mktemp("exclude")
    runs = {}
    for name, extra in (("all", []), ("excluded", ["strategy.exclude=[3]"])):
        run_cli([*TINY, "train.epochs=2", "finetune.epochs=1", "strategy.amount=0.5", *extra,
                 f"hydra.run.dir={root / 'runs' / name}", f"cache.dir={root / 'cache'}"],
                cwd=root)
        runs[name] = root / "runs" / name
    return root, runs


def test_exclude_reports_both_denominators_and_the_table_compares_them(
        with_and_without_exclude):
    root, runs = with_and_without_exclude
    read = {k: json.loads((v / "results.json").read_text()) for k, v in runs.items()}
    # counted here from the checkpoints: 1.weight is 16x64, 3.weight (the classifier) 10x16
    for name, run in runs.items():
        final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
        kept = {k: int(torch.count_nonzero(final[k])) for k in ("1.weight", "3.weight")}
        everything = read[name]["final"]["all_prunable"]
        assert everything == {"params": 1184, "nonzero": sum(kept.values()),
                              "sparsity": pytest.approx(1 - sum(kept.values()) / 1184)}
        if name == "excluded":
            assert kept["3.weight"] == 160  # left dense
            assert read[name]["final"]["params"] == 1024
            assert read[name]["final"]["nonzero"] == kept["1.weight"]
            assert read[name]["pruned"]["sparsity"] == pytest.approx(0.5)  # of the 1024
            assert everything["sparsity"] == pytest.approx((1024 - kept["1.weight"]) / 1184)
        else:
            assert read[name]["final"]["sparsity"] == everything["sparsity"]
    run_cli([str(root / "runs"), "--group-by", "strategy.exclude", "--baseline", "none",
             "--out", str(root / "report")], cwd=root, script="prunebench-report")
    table = json.loads((root / "report" / "comparison.json").read_text())
    by_exclude = {str(r["strategy.exclude"]): r for r in table}
    assert len(by_exclude) == 2
    for name, row in by_exclude.items():
        run = read["excluded" if "3" in name else "all"]["final"]
        assert row["sparsity_mean"] == pytest.approx(run["sparsity"])
        assert row["sparsity_all_mean"] == pytest.approx(run["all_prunable"]["sparsity"])
    assert "sparsity, all prunable" in (root / "report" / "comparison.md").read_text()


def test_an_exclude_pattern_that_names_no_layer_is_refused(tmp_path):
    """A typo in strategy.exclude used to prune every layer while the config said one was
    kept dense."""
    proc = run_cli([*TINY, "strategy.exclude=[clasifier]", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path, check=False)
    line = one_error_line(proc)
    assert "strategy.exclude: 'clasifier' matches no Linear or Conv layer" in line
    assert "(its layers: 1, 3)" in line
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained


# --- names from results.json never leave the report's folder ----------------------------------

@pytest.mark.parametrize("model_name, dataset_name", [
    ("../../x", "../../../y"), ("/tmp/evil", "digits"), ("..", "."), ("$\\frac{", "a\nb")])
def test_report_plots_stay_in_out_whatever_the_names(with_and_without_exclude, tmp_path,
                                                     model_name, dataset_name):
    root, runs = with_and_without_exclude
    results = json.loads((runs["all"] / "results.json").read_text())
    results["config"]["model"]["name"] = model_name
    results["config"]["dataset"]["name"] = dataset_name
    tree = tmp_path / "a" / "b" / "tree"
    (tree / "run").mkdir(parents=True)
    (tree / "run" / "results.json").write_text(json.dumps(results))
    out = tmp_path / "a" / "b" / "out"
    before = {p for p in tmp_path.rglob("*")} | set(Path("/tmp").glob("evil*"))
    proc = run_cli([str(tree), "--plot", "--format", "md,html", "--out", str(out)], cwd=tree,
                   script="prunebench-report")
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out or out in p.parents for p in written), written
    assert not list(Path("/tmp").glob("evil*"))
    plots = sorted(p.name for p in out.glob("*.png"))
    assert len(plots) == 3 and all(p.startswith("accuracy_") or p.startswith("layer_")
                                   for p in plots), plots
    assert all(str(p) in proc.stderr for p in out.glob("*.png"))
    table = (out / "comparison.md").read_text().splitlines()
    assert len(table) == 3 and all(line.startswith("|") for line in table)  # one row
