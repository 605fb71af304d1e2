"""A trained model instead of dense training: `dense.checkpoint=PATH`.

Reads what people have: a plain state_dict, a dict holding one under `state_dict`, `model` or
`model_state_dict` (training scripts, PyTorch Lightning's `.ckpt`), a `.safetensors` file, or
a compressed model (`.pbz`, export.compressed).
Pickles load with `weights_only=True`, so a checkpoint cannot run code. Keys carrying a wrapper's
prefix (Lightning's `model.`, DataParallel's `module.`) are matched to the model without it. When
more than one prefix holds a whole model (a LightningModule with `net` and a `teacher`), nothing
is guessed: `dense.checkpoint_prefix=net` names the one to load. Every problem is one line naming
the file and the first offending key.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from prunebench.config.errors import ConfigError

log = logging.getLogger(__name__)
NESTED_KEYS = ("state_dict", "model", "model_state_dict")


def dense_entry(path: str | Path, model: nn.Module, prefix: str | None = None) -> dict:
    """The dense entry the runner would otherwise train: the checkpoint's weights, no history.

    `prefix` (dense.checkpoint_prefix) names the wrapper attribute whose weights to load; None
    finds it. Loads them into `model` as well, so a bad file stops here with its one line.
    """
    path = Path(path).expanduser()
    state = read(path)
    state = match_to(state, model, path, prefix)
    model.load_state_dict(state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log.info("dense: weights loaded from %s (sha256 %s), no dense training", path, digest[:12])
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "history": [], "gradients": None, "snapshots": {}, "train_s": 0.0,
            "checkpoint": {"path": str(path.resolve()), "sha256": digest}}


def read(path: Path) -> dict[str, Tensor]:
    """The state_dict stored in `path`, whatever the container."""
    key = f"dense.checkpoint={path}"
    if not path.is_file():
        raise ConfigError(f"{key}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix == ".pbz":  # export.compressed's file (prunebench/compress/file.py)
            from prunebench.compress import file

            return file.read(path)[1]
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle of arbitrary objects
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{key}: not a readable checkpoint ({type(err).__name__}: "
                          f"{first[:160]})") from None
    state = _state_dict_in(blob)
    if state is None:
        found = ", ".join(map(str, list(blob)[:5])) if isinstance(blob, dict) else type(blob)
        raise ConfigError(f"{key}: holds no state_dict (expected tensors by name, or one "
                          f"under {', '.join(NESTED_KEYS)}; found {found})")
    return state


def _state_dict_in(blob) -> dict[str, Tensor] | None:
    if _is_state_dict(blob):
        return blob
    if isinstance(blob, dict):
        for key in NESTED_KEYS:
            if _is_state_dict(blob.get(key)):
                return blob[key]
    return None


def _is_state_dict(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()))


def match_to(state: dict[str, Tensor], model: nn.Module, path: Path,
             prefix: str | None = None) -> dict[str, Tensor]:
    """`state` with names the model uses; one line on missing, unexpected or misshapen keys."""
    expected = model.state_dict()
    if prefix is None:
        state = _without_wrapper_prefix(state, expected, path)
    else:
        state = _under_prefix(state, prefix, path, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or misshapen):
        return state
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} " \
             f"of another shape"
    if missing:
        first = f"key {missing[0]!r} missing from the checkpoint"
    elif unexpected:
        first = f"unexpected key {unexpected[0]!r} (not in the model)"
    else:
        k = misshapen[0]
        first = (f"{k!r} has shape {list(state[k].shape)} in the checkpoint, "
                 f"{list(expected[k].shape)} in the model")
    raise ConfigError(f"dense.checkpoint={path} does not fit model: {first}; {counts}")


def _under_prefix(state: dict[str, Tensor], prefix: str, path: Path,
                  expected: dict) -> dict[str, Tensor]:
    """The entries under `prefix` (dense.checkpoint_prefix), renamed without it; '' takes the
    names as stored. Other entries (another wrapped model's) go."""
    head = prefix.removesuffix(".")
    if not head:
        return {k: v for k, v in state.items() if k in expected}
    inner = {k[len(head) + 1:]: v for k, v in state.items() if k.startswith(head + ".")}
    if not inner:
        raise ConfigError(f"dense.checkpoint_prefix={prefix}: no weights under {head + '.'!r} "
                          f"in {path} (prefixes there: {', '.join(_heads(state)) or 'none'})")
    log.info("dense.checkpoint: using the weights under %r (%d of %d entries)", head + ".",
             len(inner), len(state))
    return inner


def _heads(state: dict[str, Tensor]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in state if "." in k})


def _fits(state: dict[str, Tensor], expected: dict) -> bool:
    return all(k in state and state[k].shape == v.shape for k, v in expected.items())


def _without_wrapper_prefix(state: dict[str, Tensor], expected: dict,
                            path: Path) -> dict[str, Tensor]:
    """The weights under a wrapper's attribute (Lightning's `model.`, DataParallel's
    `module.`, `net.`), renamed as the model names them, when the model's names start without
    it. Other entries of the wrapper (a loss's buffers) go.

    The prefix whose entries hold every weight of the model, by name and shape, is taken; two
    such prefixes (a student and a same-sized teacher) are refused rather than one of them
    picked. When none holds them all, the one matching most names is taken, so that match_to
    names what is missing (a tie is refused as well).
    """
    if state.keys() <= expected.keys():
        return state
    inner = {head: {k[len(head) + 1:]: v for k, v in state.items() if k.startswith(head + ".")}
             for head in _heads(state)}
    # the names as stored (prefix '') are a candidate too: an `ema.` copy beside them is
    # as ambiguous as a teacher
    fitting = [""] * _fits(state, expected) + [
        head for head, entries in inner.items() if _fits(entries, expected)]
    if not fitting:
        matches = {head: len(entries.keys() & expected.keys()) for head, entries in inner.items()}
        best = max(matches.values(), default=0)
        if best <= len(state.keys() & expected.keys()):
            return state
        fitting = [head for head, n in matches.items() if n == best]
    if len(fitting) > 1:
        names = [f"{h + '.'!r}" if h else "the names as stored" for h in fitting]
        choices = [h or "''" for h in fitting]
        raise ConfigError(f"dense.checkpoint={path} is ambiguous: the weights under "
                          f"{', '.join(names[:-1])} and {names[-1]} each fit the model; "
                          f"choose with dense.checkpoint_prefix={choices[0]} (or "
                          f"{', '.join(choices[1:])})")
    if fitting == [""]:
        return state  # match_to names the entries the model does not have
    head = fitting[0]
    log.info("dense.checkpoint: using the weights under %r (%d of %d entries)", head + ".",
             len(inner[head]), len(state))
    return inner[head]
