"""Results that would be silently wrong, and files that are not ours (issue 29), through the CLI.

Each test runs `prunebench` or `prunebench-report` in a subprocess and checks what it wrote
against a reference computed here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from torch import nn

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
    assert "'net.' and 'teacher.'" in line and "dense.checkpoint_prefix=net" in line
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
