"""Text for language models: one token stream cut into a contiguous train / validation / test
split, each split cut into non-overlapping windows of `seq_len` tokens.

A window's targets are the next tokens (x = stream[i:i+T], y = stream[i+1:i+T+1]), so every
token of a split but the last is predicted once; perplexity over the test windows is the
LLM-pruning papers' protocol (exp of the mean token cross-entropy). Tokens are UTF-8 bytes
(vocabulary 256) for prunebench's own models, or a Hugging Face tokenizer's ids
(`tokenizer=ID_OR_FOLDER`, which model=hf sets to its own).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from prunebench.config.errors import ConfigError
from prunebench.data.batches import Dataset, Split
from prunebench.data.calibration import CalibrationText, calibration_text
from prunebench.data.tokens import FORTUNES, hub_dataset, read_text, tokenize

log = logging.getLogger(__name__)


def load(name: str = "text", path: str | None = None, seq_len: int = 128,
         val_fraction: float = 0.05, test_fraction: float = 0.05, tokenizer: str = "bytes",
         max_tokens: int | None = None, calibration: str | None = None,
         calibration_path: str | None = None) -> Dataset:
    """`path` null reads the fortunes corpus; `max_tokens` keeps the stream's first tokens;
    `calibration` (c4 | wikitext2 | text) another text to calibrate on (data/calibration.py)."""
    calibrate = calibration_text(calibration, calibration_path, tokenizer)
    text = read_text(path)
    tokens, vocab = tokenize(text, tokenizer)
    if max_tokens:
        tokens = tokens[:max_tokens]
    n_test = round(len(tokens) * test_fraction)
    n_val = round(len(tokens) * val_fraction)
    n_train = len(tokens) - n_val - n_test
    parts = {"train": tokens[:n_train], "val": tokens[n_train:n_train + n_val],
             "test": tokens[n_train + n_val:]}
    log.info("text: %s tokens (vocabulary %d): %d train, %d validation, %d test",
             f"{len(tokens):,}", vocab, n_train, n_val, len(tokens) - n_train - n_val)
    source = f"{path or FORTUNES}, cut {1 - val_fraction - test_fraction:g} / {val_fraction:g} / " \
        f"{test_fraction:g} into train / validation / test"
    return token_dataset(name, parts, seq_len, vocab, source, tokenizer, calibrate)


def token_dataset(name: str, parts: dict[str, Tensor], seq_len: int, vocab: int,
                  source: str = "", tokenizer: str = "bytes",
                  calibration: CalibrationText | None = None) -> Dataset:
    splits = {k: windows(v, seq_len) for k, v in parts.items() if len(v)}
    for split in ("train", "test"):
        if split not in splits or len(splits[split]) == 0:
            raise ConfigError(f"dataset.seq_len={seq_len} is too long: the {split} split has "
                              f"{len(parts.get(split, []))} tokens, fewer than seq_len + 1")
    val = splits.get("val")
    protocol = {"text": source, "tokenizer": tokenizer, "split": "test", "seq_len": seq_len,
                "windows": len(splits["test"]), "overlapping": False,
                "tokens_scored": len(splits["test"]) * seq_len,
                "perplexity": "exp of the mean next-token cross-entropy over every token of "
                              "the test windows"}
    return Dataset(name, splits["train"], splits["test"], val if val and len(val) else None,
                   (seq_len,), vocab, mean=torch.zeros(1), std=torch.ones(1), scale=1.0,
                   task="lm", protocol=protocol, calibration=calibration)


def windows(tokens: Tensor, seq_len: int) -> Split:
    """Non-overlapping windows [N, seq_len] and their next-token targets."""
    n = (len(tokens) - 1) // seq_len
    x = tokens[:n * seq_len].view(n, seq_len)
    y = tokens[1:n * seq_len + 1].view(n, seq_len)
    return Split(x.contiguous(), y.contiguous())


def load_wikitext2(name: str = "wikitext2", seq_len: int = 128,
                   tokenizer: str = "bytes", config: str = "wikitext-2-raw-v1",
                   calibration: str | None = None,
                   calibration_path: str | None = None) -> Dataset:
    """WikiText-2 through the `datasets` library (Wanda's and SparseGPT's evaluation text):
    each split joined with blank lines into one stream, as both repositories do."""
    calibrate = calibration_text(calibration, calibration_path, tokenizer)
    raw = hub_dataset("dataset=wikitext2", "wikitext", config)
    parts, vocab = {}, 256
    for split, ours in (("train", "train"), ("validation", "val"), ("test", "test")):
        parts[ours], vocab = tokenize("\n\n".join(raw[split]["text"]), tokenizer)
    return token_dataset(name, parts, seq_len, vocab, f"wikitext/{config} through datasets, "
                         "each split joined with blank lines", tokenizer, calibrate)
