"""Where a language model's calibration windows come from (`dataset.calibration`), apart from
the text it is evaluated on, as the LLM-pruning papers calibrate:

- null: the dataset's own training split (batches drawn like training batches);
- c4: the English documents of allenai/c4's first training shard
  (en/c4-train.00000-of-01024.json.gz) through `datasets`, as the Wanda and SparseGPT
  repositories do: each window from a random document longer than the window, at a random
  offset;
- wikitext2: WikiText-2 raw's training split (wikitext/wikitext-2-raw-v1) as one stream, a
  window at a random offset;
- text: a local UTF-8 file (`dataset.calibration_path`; null: Debian's fortunes) as one
  stream, a window at a random offset.

Nothing is downloaded unless the hub is reachable; offline, c4 and wikitext2 fail in one line
naming the key (unless `datasets` has them cached). The session draws `calibration.samples`
windows (null: 128, the papers' count) of `dataset.seq_len` tokens with the calibration
generator (calibration.seed) at every calibration draw, and results.json's `calibration`
names the source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunebench.config.errors import ConfigError
from prunebench.data.batches import Split
from prunebench.data.tokens import encoder, hub_dataset, read_text

SOURCES = ("c4", "wikitext2", "text")
DEFAULT_SAMPLES = 128  # Wanda's and SparseGPT's nsamples
C4 = ("allenai/c4", "en/c4-train.00000-of-01024.json.gz")
WIKITEXT2 = ("wikitext", "wikitext-2-raw-v1")
TRIES_PER_WINDOW = 1000  # documents tried for one window before giving up


@dataclass
class CalibrationText:
    """Documents to cut calibration windows from, tokenized when first drawn."""

    name: str  # c4 | wikitext2 | text: results.json calibration's `source`
    source: str  # what results.json records as its `text`
    documents: Sequence[str]
    encode: Callable[[str], Tensor]
    _tokens: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def tokens(self, index: int) -> Tensor:
        if index not in self._tokens:
            self._tokens[index] = self.encode(self.documents[index])
        return self._tokens[index]

    def draw(self, samples: int, seq_len: int, generator: torch.Generator) -> Split:
        """`samples` windows of `seq_len` tokens and their next tokens, each from a random
        document with more than seq_len tokens, at a random offset."""
        xs, ys = [], []
        for _ in range(samples):
            tokens = self._long_document(seq_len, generator)
            start = int(torch.randint(len(tokens) - seq_len, (1,), generator=generator))
            xs.append(tokens[start:start + seq_len])
            ys.append(tokens[start + 1:start + seq_len + 1])
        return Split(torch.stack(xs), torch.stack(ys))

    @property
    def key(self) -> str:
        return f"dataset.calibration={self.name}"

    def _long_document(self, seq_len: int, generator: torch.Generator) -> Tensor:
        for _ in range(TRIES_PER_WINDOW):
            index = int(torch.randint(len(self.documents), (1,), generator=generator))
            if len(self.tokens(index)) > seq_len:
                return self.tokens(index)
        longest = max(len(t) for t in self._tokens.values())
        raise ConfigError(f"{self.key}: no document with more than dataset.seq_len={seq_len} "
                          f"tokens (the longest tried has {longest})")


def calibration_text(source: str | None, path: str | None,
                     tokenizer: str) -> CalibrationText | None:
    """The calibration text `dataset.calibration` names (None: the training split)."""
    if source is None:
        if path is not None:
            raise ConfigError(f"dataset.calibration_path={path} is set but "
                              "dataset.calibration is null: set dataset.calibration=text")
        return None
    if source not in SOURCES:
        raise ConfigError(f"dataset.calibration={source} is invalid: allowed null, "
                          f"{', '.join(SOURCES)}")
    key = f"dataset.calibration={source}"
    if path is not None and source != "text":
        raise ConfigError(f"dataset.calibration_path={path} is read by "
                          f"dataset.calibration=text only, not {source}")
    encode, _ = encoder(tokenizer)
    if source == "text":
        return CalibrationText(source, f"text file {path or 'fortunes corpus'}, one stream, "
                               "windows at random offsets", [read_text(
                                   path, "dataset.calibration_path")], encode)
    if source == "wikitext2":
        raw = hub_dataset(key, *WIKITEXT2, split="train")
        # joined with spaces, as both papers' code joins the training split
        return CalibrationText(source, f"{'/'.join(WIKITEXT2)} train split through datasets, "
                               "joined with spaces, windows at random offsets",
                               [" ".join(raw["text"])], encode)
    raw = hub_dataset(key, C4[0], data_files={"train": C4[1]}, split="train")
    return CalibrationText(source, f"{C4[0]} {C4[1]} through datasets, windows at random offsets "
                           "of random documents longer than seq_len", Column(raw, "text"),
                           encode)


@dataclass
class Column(Sequence):
    """One column of a `datasets` table, read a row at a time (the c4 shard's 356,317
    documents stay memory-mapped; only the drawn ones are read)."""

    table: object
    name: str

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> str:
        return self.table[index][self.name]
