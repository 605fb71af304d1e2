"""Compression after pruning: quantize the final model, fine-tune the shared values, record it
as the `quantized` phase, and (export.compressed) write it as a compact file.

    compress.quantize         none | int8 | kmeans        (compress/quantize.py)
    compress.bits             kmeans: 2^bits shared values per layer (1..16); int8: 8
    compress.finetune_epochs  epochs training the shared values, assignment and masks fixed
    compress.index_bits       width of the relative positions in the file; null: per layer,
                              the width that makes the layer smallest (compress/file.py)

The keys are checked here (`check`) and nowhere else.
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf

from prunebench.config.checks import choice, number
from prunebench.config.errors import ConfigError

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
    with memory.peak(session.data.train.x.device) as used:
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
            optimizer = build.optimizer(cfg, session.model, cfg.finetune.lr_scale)
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
             "layers": [{"name": q.name, "nonzero": int(q.codes.numel()), "levels": q.levels()}
                        for q in layers],
             "quantize_s": quantize_s, "finetune_s": finetune_s, "peak_mb": used["peak_mb"],
             "history": history}
    return {"compress": block}
