"""Text to token ids, for the evaluation text (data/text.py) and the calibration text
(data/calibration.py): a local UTF-8 file or Debian's fortunes corpus, a dataset of the Hugging
Face hub through `datasets`, and the tokenizer (UTF-8 bytes or a Hugging Face tokenizer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from prunebench.config.errors import ConfigError

FORTUNES = Path("/usr/share/games/fortunes")  # Debian's `fortunes` package: ~2.5 MB English


def read_text(path: str | None, key: str = "dataset.path") -> str:
    """The UTF-8 file `path` (the config key `key` names it), or the fortunes corpus."""
    if path is None:
        if not FORTUNES.is_dir():
            raise ConfigError(f"{key} is null and there is no fortunes corpus in {FORTUNES}: "
                              f"`apt-get install fortunes`, or set {key}=FILE")
        # the text files only: not the .dat indexes nor the .u8 links to the same files
        found = sorted(p for p in FORTUNES.iterdir()
                       if p.is_file() and not p.is_symlink() and not p.suffix)
        return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in found)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no such file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}={path} is not UTF-8 text (byte {err.start})") from None


def encoder(tokenizer: str) -> tuple[Callable[[str], Tensor], int]:
    """(text -> token ids as int64, vocabulary size); the tokenizer is loaded once."""
    if tokenizer == "bytes":
        def encode_bytes(text: str) -> Tensor:
            raw = bytearray(text.encode("utf-8"))
            return torch.frombuffer(raw, dtype=torch.uint8).long() if raw else \
                torch.zeros(0, dtype=torch.long)
        return encode_bytes, 256
    from prunebench.models.hf import load_tokenizer

    tok = load_tokenizer(tokenizer)

    def encode(text: str) -> Tensor:
        ids = tok(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    return encode, len(tok)


def tokenize(text: str, tokenizer: str) -> tuple[Tensor, int]:
    """(token ids as int64, vocabulary size)."""
    encode, vocab = encoder(tokenizer)
    return encode(text), vocab


def hub_dataset(key: str, *args, **kwargs):
    """`datasets.load_dataset(*args, **kwargs)` for the config setting `key`: one line naming
    it when the library is missing, the hub is out of reach and nothing is cached."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key} needs the `datasets` library: "
                          "pip install 'prunebench[wikitext]'") from None
    from huggingface_hub import constants

    from prunebench.models.hub import offline_unless_reachable

    offline_unless_reachable(key)
    if constants.HF_HUB_OFFLINE:  # datasets copied the setting when imported
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(datasets.config, flag):
                setattr(datasets.config, flag, True)
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # noqa: BLE001  offline, or the hub refused: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}: could not load {args[0]} (offline? {first}); offline, use "
                          "a local file (dataset=text dataset.path=FILE, "
                          "dataset.calibration=text dataset.calibration_path=FILE)") from None
