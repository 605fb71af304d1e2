"""Files for use outside prunebench, written from the final model and checked after writing.

    export.onnx=true         checkpoints/final.onnx (and compact.onnx at granularity=neuron),
                             exported by torch.onnx.export (the torch.export-based exporter)
                             with a dynamic batch dimension, then run by onnxruntime on a test
                             batch: results.json records the largest |onnxruntime - torch|
    export.safetensors=true  checkpoints/final.safetensors (safetensors.torch.save_model)
    export.sparse=true       checkpoints/final_sparse.pt: prunable weights as CSR parts, with
                             its size against final.pt's (pruning/sparse.py)
    export.hf=true           hf/ in the run folder (model=hf): the final model in transformers'
                             own format (save_pretrained: safetensors, config, tokenizer), the
                             compact one at granularity=neuron (intermediate_size updated),
                             loaded back with from_pretrained and its logits compared

results.json's `exports` lists {file, size (bytes), max_abs_diff (ONNX only)} per file.
"""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from prunebench.config.errors import ConfigError, one_line
from prunebench.data import Dataset, batches
from prunebench.runstate import files

log = logging.getLogger(__name__)
BATCH = 32  # test images the ONNX model is checked on
# the exporter's optimization passes log every rewrite at INFO
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


def wanted(cfg: DictConfig) -> bool:
    return any(OmegaConf.select(cfg, f"export.{k}", default=False)
               for k in ("onnx", "safetensors", "sparse", "hf"))


def check(cfg: DictConfig) -> None:
    """export.hf's one-line errors, before any work."""
    value = OmegaConf.select(cfg, "export.hf", default=False)
    if value not in (True, False):
        raise ConfigError(f"export.hf={value} is invalid: allowed true, false")
    if not value:
        return
    if OmegaConf.select(cfg, "model._target_") != "prunebench.models.hf.HFCausalLM":
        raise ConfigError("export.hf=true writes a Hugging Face model: it needs model=hf")
    if (OmegaConf.select(cfg, "strategy.granularity") == "neuron"
            and OmegaConf.select(cfg, "strategy.scope") != "layer"):
        raise ConfigError("export.hf=true at strategy.granularity=neuron needs "
                          "strategy.scope=layer: a transformers config holds one "
                          "intermediate_size, so every block must keep as many channels")


def run(cfg: DictConfig, model: nn.Module, data: Dataset, out_dir: Path,
        attempt: Callable | None = None) -> list[dict]:
    """Write each file asked for; `attempt(step, call, *args)` runs each export (the caller's
    way of recording one that fails, results/after_training.py), by default plainly."""
    attempt = attempt or (lambda step, call, *args: call(*args))
    folder = out_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    exports = []
    if OmegaConf.select(cfg, "export.onnx", default=False):
        x = next(batches(data, data.test, BATCH))[0].cpu()
        exports.append(attempt("export.onnx", onnx, model, x, folder / "final.onnx"))
        if (folder / "compact.pt").exists():  # granularity=neuron: the smaller model too
            from prunebench.pruning import compact

            exports.append(attempt("export.onnx", lambda: onnx(
                compact.load(folder / "compact.pt"), x, folder / "compact.onnx")))
    if OmegaConf.select(cfg, "export.safetensors", default=False):
        exports.append(attempt("export.safetensors", safetensors, model,
                               folder / "final.safetensors"))
    if OmegaConf.select(cfg, "export.sparse", default=False):  # CSR parts (pruning/sparse.py)
        from prunebench.pruning import sparse

        exports.append(attempt("export.sparse", sparse.export, model, cfg, out_dir))
    if OmegaConf.select(cfg, "export.hf", default=False):
        x = next(batches(data, data.test, BATCH))[0].cpu()
        exports.append(attempt("export.hf", hf_folder, cfg, model, x, out_dir))
    exports = [e for e in exports if e is not None]
    for e in exports:
        log.info("export: %s, %s bytes%s", e["file"], f"{e['size']:,}",
                 f", max |onnxruntime - torch| {e['max_abs_diff']:.3g}" if "max_abs_diff" in e
                 else "")
    return exports


def onnx(model: nn.Module, x: Tensor, path: Path) -> dict:
    """Export with a dynamic batch dimension, then compare onnxruntime with torch on `x`."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("export.onnx needs onnx, onnxscript and onnxruntime: "
                          "pip install 'prunebench[export]'") from None
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        expected = model(x)
    # a model torch.export cannot trace makes the exporter print its graph (dozens of
    # lines) before it raises: the error's first line is what the run records
    with quiet(*EXPORTER_LOGGERS, "torch.fx", "torch.export"), \
            redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as err:  # e.g. control flow that depends on the data
            raise RuntimeError(f"torch.onnx.export cannot export the model "
                               f"({one_line(err)})") from None
    _atomic_save(path, lambda tmp: program.save(tmp, external_data=False))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float((torch.from_numpy(got) - expected).abs().max())
    return {"file": f"checkpoints/{path.name}", "size": path.stat().st_size,
            "max_abs_diff": diff}


def safetensors(model: nn.Module, path: Path) -> dict:
    try:
        from safetensors.torch import save_model
    except ImportError:
        raise ConfigError("export.safetensors needs safetensors: "
                          "pip install 'prunebench[export]'") from None
    # save_model drops the duplicates of tied weights, which save_file refuses
    _atomic_save(path, lambda tmp: save_model(copy.deepcopy(model).cpu(), tmp))
    return {"file": f"checkpoints/{path.name}", "size": path.stat().st_size}


def hf_folder(cfg: DictConfig, model: nn.Module, x: Tensor, out_dir: Path) -> dict:
    """hf/ written whole or not at all, then loaded by transformers and compared on `x`."""
    import shutil
    import tempfile

    from prunebench.models import hf

    compact_path = out_dir / "checkpoints" / "compact.pt"
    if compact_path.exists():  # granularity=neuron: the smaller model
        from prunebench.pruning import compact

        model = compact.load(compact_path)
    model = copy.deepcopy(model).cpu().eval()
    path = out_dir / "hf"
    tmp = Path(tempfile.mkdtemp(prefix=f"{files.TMP_PREFIX}hf.", suffix=".tmp", dir=out_dir))
    try:
        hf.save_folder(model, tmp, OmegaConf.select(cfg, "model.tokenizer"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    loaded = hf.load_folder(path, next(model.parameters()).dtype)
    with torch.no_grad():
        diff = float((loaded(input_ids=x).logits.float() - model(x)).abs().max())
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {"file": "hf", "size": size, "max_abs_diff": diff}


@contextmanager
def quiet(*names: str):
    """Raise these loggers to WARNING for the duration (their handlers are left alone)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _atomic_save(path: Path, save) -> None:
    """`save(name)` writes a file by name; it appears at `path` whole or not at all."""
    fd, tmp = files.temporary(path)
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
