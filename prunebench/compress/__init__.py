"""Compression after pruning: quantize the final model, fine-tune the shared values, record it
as the `quantized` phase, and (export.compressed) write it as a compact file.

    compress.quantize         none | int8 | kmeans        (compress/quantize.py)
    compress.bits             kmeans: 2^bits shared values per layer (1..16); int8: 8
    compress.finetune_epochs  epochs training the shared values, assignment and masks fixed
    compress.lr_scale         their learning rate = optimizer.lr * lr_scale (null:
                              finetune.lr_scale); a centroid's gradient is the sum over its
                              cluster, so a large layer may need a smaller rate than its weights
    compress.index_bits       width of the relative positions in the file; null: per layer,
                              the width that makes the layer smallest (compress/file.py)

The keys are checked here (`check`) and nowhere else.
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf

from prunebench.config.errors import ConfigError
from prunebench.config.values import choice, number

log = logging.getLogger(__name__)
MAX_BITS = 16
MAX_INDEX_BITS = 16


def _get(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, key, default=default)


def wanted(cfg: DictConfig) -> bool:
    return _get(cfg, "compress.quantize", "none") != "none"


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad compress.* / export.compressed value."""
    from prunebench.compress.quantize import KINDS

    kind = _get(cfg, "compress.quantize", "none")
    choice("compress.quantize", kind, KINDS)
    bits = _get(cfg, "compress.bits")
    if kind == "int8":
        if bits != 8:
            raise ConfigError(f"compress.bits={bits} is invalid with compress.quantize=int8: "
                              "allowed 8 (compress.quantize=kmeans for other widths)")
    else:
        number("compress.bits", bits, low=1, high=MAX_BITS, integer=True,
               allowed=f"an integer 1 <= bits <= {MAX_BITS}")
    number("compress.finetune_epochs", _get(cfg, "compress.finetune_epochs", 0), low=0,
           integer=True, allowed="an integer >= 0")
    number("compress.lr_scale", _get(cfg, "compress.lr_scale"), low=0, low_open=True,
           optional=True, allowed="null or a number > 0")
    number("compress.index_bits", _get(cfg, "compress.index_bits"), low=1, high=MAX_INDEX_BITS,
           integer=True, optional=True, allowed=f"null or an integer 1 <= index_bits <= "
           f"{MAX_INDEX_BITS}")
    if _get(cfg, "export.compressed", False) and kind == "none":
        raise ConfigError("export.compressed=true needs compress.quantize=int8 or kmeans")


def run(cfg: DictConfig, session, dense_state: dict, out_dir) -> dict:
    """Quantize the session's model in place, fine-tune its shared values, record the
    `quantized` phase, write the compressed file if asked; returns results.json's `compress`
    block (and `size`, the bytes of the model's forms, with the file)."""
    from prunebench import build
    from prunebench.compress import quantize, shared
    from prunebench.pruning import memory
    from prunebench.training.loop import fit

    kind, bits = cfg.compress.quantize, cfg.compress.bits
    epochs = _get(cfg, "compress.finetune_epochs", 0)
    start = time.perf_counter()
    with memory.peak(session.data.train.y.device) as used:
        layers = [q for name, w in session.masks.weights.items()
                  if (q := quantize.quantize(name, w, kind, bits)) is not None]
        if not layers:
            raise ConfigError(f"compress.quantize={kind}: no nonzero prunable weight is left "
                              "to quantize (every prunable layer is pruned away or excluded)")
        quantize.apply(session.model, layers)
    quantize_s = time.perf_counter() - start
    history = []
    if epochs:
        shared.tables_trainable(session.model, layers)
        try:
            optimizer = build.optimizer(cfg, session.model, lr_scale(cfg))
            history = fit(session.model, session.data, optimizer,
                          build.lr_scheduler(cfg, optimizer, epochs),
                          build.fit_settings(cfg, epochs), session.generator, "quantized")
        finally:
            shared.tables_back(session.model, layers)
    finetune_s = time.perf_counter() - start - quantize_s
    metrics = session.record("quantized")
    log.info("quantized (%s, %d bits): %d layers, %s", kind, bits, len(layers),
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                       if k in ("accuracy", "perplexity")))
    block = {"quantize": kind, "bits": bits, "finetune_epochs": epochs,
             "lr": cfg.optimizer.lr * lr_scale(cfg) if epochs else None,
             "layers": [{"name": q.name, "nonzero": int(q.codes.numel()), "levels": q.levels()}
                        for q in layers],
             "quantize_s": quantize_s, "finetune_s": finetune_s, "peak_mb": used["peak_mb"],
             "history": history}
    out = {"compress": block}
    if _get(cfg, "export.compressed", False):
        out["size"] = export(cfg, session, layers, dense_state, out_dir)
    return out


def lr_scale(cfg: DictConfig) -> float:
    """The centroid fine-tuning's share of optimizer.lr (compress.lr_scale, else finetune's)."""
    scale = _get(cfg, "compress.lr_scale")
    return cfg.finetune.lr_scale if scale is None else scale


def export(cfg: DictConfig, session, layers: list, dense_state: dict, out_dir) -> dict:
    """Write checkpoints/final.pbz, load it back and compare its outputs with the quantized
    model's; returns results.json's `size` block (bytes of each form, the ratio, the split)."""
    from pathlib import Path

    import torch

    from prunebench.compress import file
    from prunebench.data import batches
    from prunebench.runstate import files

    start = time.perf_counter()
    folder = Path(out_dir) / "checkpoints"
    state = {k: v.detach().cpu() for k, v in session.model.state_dict().items()}
    blob, sizes = file.encode(state, layers, _get(cfg, "compress.index_bits"),
                              {"model": cfg.model.name,
                               "input_shape": list(session.data.input_shape),
                               "num_classes": session.data.num_classes})
    path = folder / FILE
    files.write_bytes(path, blob)
    encode_s = time.perf_counter() - start
    loaded = load(path, cfg).to(session.data.test.y.device).eval()
    x = next(batches(session.data, session.data.test, 64))[0]
    session.model.eval()
    with torch.no_grad():
        diff = float((loaded(x) - session.model(x)).abs().max())
    dense_bytes = state_bytes(dense_state)
    size = {"file": f"checkpoints/{FILE}", "dense_bytes": dense_bytes,
            "dense_pt_bytes": (folder / "dense.pt").stat().st_size,
            "final_pt_bytes": (folder / "final.pt").stat().st_size,
            "compressed_bytes": len(blob), "ratio": dense_bytes / len(blob),
            "stages": {"dense": dense_bytes, "pruned": sizes["pruned_bytes"],
                       "quantized": sizes["quantized_bytes"], "coded": len(blob)},
            "coders": sizes["coders"], "coder": sizes["coder"], "max_abs_diff": diff,
            "encode_s": encode_s, "verify_s": time.perf_counter() - start - encode_s}
    log.info("compressed: %s, %s bytes (%s), %.1fx smaller than the dense fp32 state_dict "
             "(%s bytes); max |loaded - quantized| %.3g", size["file"], f"{len(blob):,}",
             sizes["coder"], size["ratio"], f"{dense_bytes:,}", diff)
    return size


FILE = "final.pbz"


def state_bytes(state: dict) -> int:
    """Bytes of a state_dict's tensors, each storage counted once (tied weights)."""
    seen = {}
    for t in state.values():
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())] = \
            t.numel() * t.element_size()
    return sum(seen.values())


def load(path, cfg: DictConfig):
    """The model a compressed file holds, built from `cfg`'s model node; ConfigError (one line
    naming the file) when the file is truncated, corrupt or written from another model."""
    from types import SimpleNamespace

    from prunebench import build
    from prunebench.compress import file

    try:
        manifest, state = file.read(path)
    except (OSError, file.CompressedFileError) as err:
        raise ConfigError(f"{path}: {err}") from None
    shapes = SimpleNamespace(input_shape=tuple(manifest.get("input_shape", ())),
                             num_classes=manifest.get("num_classes"))
    model = build.model(cfg, shapes)
    expected = {k: v for k, v in model.state_dict().items()}
    if file.fingerprint(expected) != manifest.get("fingerprint"):
        raise ConfigError(f"{path}: written from another model (its tensors do not match "
                          f"model={cfg.model.name}'s names and shapes)")
    model.load_state_dict(state)
    return model
