"""Hugging Face causal language models through `transformers` (the optional extra `lm`).

`model=hf model.name=ID_OR_FOLDER` loads AutoModelForCausalLM.from_pretrained: a local folder
(what people have on clusters) or, online, a hub id. The wrapper takes token windows [B, T] and
returns next-token logits [B, T, vocab] like prunebench's own GPT.

Prunable, as in the LLM-pruning papers, are the Linear layers inside the decoder blocks (the
model's first nn.ModuleList holding Linear layers); embeddings, norms, the LM head and any
projection outside the blocks stay dense (`dense_by_default`). GPT-2 keeps its block weights in
transformers' Conv1D (weight [in, out]); those are converted to nn.Linear at load, so masks,
N:M patterns along the input dimension, Wanda's rows and SparseGPT's columns mean the same for
every family.

`model.dtype` (float32 | bfloat16 | float16) is the dtype the weights are loaded, pruned,
evaluated and saved in; the criteria's calibration statistics and Hessians accumulate in
float32 whatever it is (strategies/calibration.py reads each layer's inputs as float32, as
Wanda's and SparseGPT's code do), and the logits are returned in float32.

`model.device_map=auto` (GPUs only; accelerate) places the blocks across the GPUs there are,
for loading and evaluation; such a model is not moved by `.to(device)` afterwards.

granularity=neuron: see `HFCausalLM.declared_units` (a gated MLP's channels; attention whole).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.models.hub import offline_unless_reachable

log = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16")
GATED_MLP = ("gate_proj", "up_proj", "down_proj")  # Llama, Mistral, Qwen2's MLP


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model=hf needs transformers: pip install 'prunebench[lm]'") from None
    return transformers


def load_tokenizer(name: str):
    """The tokenizer saved with a model (a folder or a hub id); one line when there is none."""
    transformers = require_transformers()
    offline_unless_reachable(f"model.tokenizer={name}", name)
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        where = "folder" if Path(name).expanduser().is_dir() else "hub id (offline?)"
        raise ConfigError(
            f"model.tokenizer={name}: no tokenizer found in that {where} "
            f"({first_line(err)}); set model.tokenizer=bytes to feed UTF-8 byte ids, which only "
            "makes sense for a model trained on them") from None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class HFCausalLM(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, name: str,
                 tokenizer: str | None = None, revision: str | None = None,
                 dtype: str = "float32", device_map: str | None = None,
                 offload: bool = False):
        super().__init__()
        if offload not in (True, False):
            raise ConfigError(f"model.offload={offload} is invalid: allowed true, false")
        if offload and device_map is not None:
            raise ConfigError("model.offload=true keeps the blocks off the device: leave "
                              "model.device_map null")
        self.offload = offload
        if dtype not in DTYPES:
            raise ConfigError(f"model.dtype={dtype} is invalid: allowed {', '.join(DTYPES)}")
        check_device_map(device_map)
        self.dispatched = device_map is not None
        transformers = require_transformers()
        local = Path(name).expanduser()
        offline_unless_reachable(f"model.name={name}", name)
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(local) if local.is_dir() else name, revision=revision,
                dtype=getattr(torch, dtype), device_map=device_map)
        except (OSError, ValueError) as err:
            where = "folder" if local.is_dir() else "local folder, nor a hub id reachable now"
            raise ConfigError(f"model.name={name} is not a loadable {where}: "
                              f"{first_line(err)}") from None
        config = self.model.config
        if num_classes > config.vocab_size:
            raise ConfigError(f"model.name={name} has a vocabulary of {config.vocab_size}, the "
                              f"data's tokens need {num_classes} (model.tokenizer={tokenizer})")
        positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)
        if positions and input_shape[0] > positions:
            raise ConfigError(f"dataset.seq_len={input_shape[0]} is longer than the "
                              f"{positions} positions of model.name={name}")
        converted = linear_from_conv1d(self.model)
        self.dense_by_default = outside_blocks(self)
        log.info("hf: %s, %d layers left dense outside the blocks%s", name,
                 len(self.dense_by_default),
                 f", {converted} Conv1D layers as Linear" if converted else "")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # logits in float32 whatever the weights' dtype: losses and perplexities are sums;
        # on the inputs' device (with device_map the last block may sit on another GPU)
        return self.model(input_ids=idx, use_cache=False).logits.float().to(idx.device)

    def to(self, *args, **kwargs):
        """A model placed across devices by accelerate (model.device_map) stays where it is.
        With model.offload the decoder blocks stay in CPU memory and the rest moves: each
        block goes to the device for its own forward and back (`stream_blocks`)."""
        if self.dispatched:
            return self
        if not self.offload:
            return super().to(*args, **kwargs)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        blocks = decoder_block_list(self.model)
        inside = {id(m) for m in blocks.modules()}
        for module in self.modules():
            if id(module) not in inside:
                module._apply(lambda t: t.to(device), recurse=False)
        stream_blocks(blocks, device)
        return self

    def declared_units(self) -> dict[str, list[tuple[str, int]]] | None:
        """granularity=neuron on a gated MLP (Llama, Mistral, Qwen2): a unit is one hidden
        channel, removed whole across gate_proj and up_proj (a row each) and down_proj (a
        column). Attention stays whole: its query heads are tied to shared key-value groups,
        and a Hugging Face config holds one head count for every layer, so a model with
        fewer heads in some layers would not load with from_pretrained. None for other
        families (GPT-2), whose units Torch-Pruning traces."""
        units = {}
        for name, module in self.named_modules():
            layers = [getattr(module, part, None) for part in GATED_MLP]
            if not all(isinstance(layer, nn.Linear) for layer in layers):
                continue
            gate, up, down = (f"{name}.{part}" for part in GATED_MLP)
            units[f"{gate}.weight"] = [
                *((f"{gate}.{p}", 0) for p, _ in layers[0].named_parameters()),
                *((f"{up}.{p}", 0) for p, _ in layers[1].named_parameters()),
                (f"{down}.weight", 1)]
        return units or None


def decoder_block_list(model: nn.Module) -> nn.ModuleList:
    """The first nn.ModuleList that holds Linear layers: the decoder blocks."""
    return next(m for m in model.modules() if isinstance(m, nn.ModuleList)
                and any(isinstance(c, nn.Linear) for c in m.modules()))


def stream_blocks(blocks: nn.ModuleList, device: torch.device | None) -> None:
    """Each block moved to `device` for its forward and back to the CPU after, unless it is
    held there (`offload_held`: the block-by-block pruning in strategies/offload.py)."""
    if device is None or torch.device(device).type == "cpu":
        return
    for block in blocks:
        if getattr(block, "offload_hooks", None):
            continue
        block.offload_hooks = (
            block.register_forward_pre_hook(
                lambda m, _args: None if getattr(m, "offload_held", False) else m.to(device)),
            block.register_forward_hook(
                lambda m, _args, _out: None if getattr(m, "offload_held", False)
                else m.to("cpu")))


def check_device_map(device_map: str | None) -> None:
    """model.device_map: null (the run's `device`) or auto (accelerate spreads the blocks
    over the GPUs there are, for loading and evaluation)."""
    if device_map is None:
        return
    if device_map != "auto":
        raise ConfigError(f"model.device_map={device_map} is invalid: allowed null, auto")
    if not torch.cuda.is_available():
        raise ConfigError("model.device_map=auto spreads a model over GPUs and this machine "
                          "has none: leave it null")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError("model.device_map=auto needs accelerate: pip install accelerate") \
            from None


def linear_from_conv1d(model: nn.Module) -> int:
    """Replace transformers' Conv1D (y = x W + b, W [in, out]) by the equal nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, conv in found:
        inputs, outputs = conv.weight.shape
        linear = nn.Linear(inputs, outputs, bias=conv.bias is not None, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return len(found)


def outside_blocks(model: nn.Module) -> tuple[str, ...]:
    """Exact-name patterns of the Linear layers outside the decoder blocks (the first
    nn.ModuleList that holds Linear layers): the LM head, input/output projections."""
    blocks = next((n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)
                   and any(isinstance(c, nn.Linear) for c in m.modules())), None)
    return tuple(re.escape(n) for n, m in model.named_modules() if isinstance(m, nn.Linear)
                 and (blocks is None or not n.startswith(blocks + ".")))


def save_folder(model: HFCausalLM, folder: Path, tokenizer: str | None) -> None:
    """The wrapped transformers model written with save_pretrained (safetensors and its config)
    and the tokenizer it was run with, so AutoModelForCausalLM.from_pretrained(folder) loads
    it as it is. A model with MLP channels removed gets the config's `intermediate_size` of
    its blocks (they must agree: transformers holds one for every layer)."""
    inner = model.model
    widths = {m.gate_proj.out_features for m in inner.modules()
              if all(isinstance(getattr(m, part, None), nn.Linear) for part in GATED_MLP)}
    if len(widths) > 1:
        raise ConfigError(f"export.hf: the blocks' MLPs have {sorted(widths)} channels; a "
                          f"transformers config holds one intermediate_size "
                          f"(strategy.scope=layer removes the same number in every block)")
    if widths and hasattr(inner.config, "intermediate_size"):
        inner.config.intermediate_size = widths.pop()
    inner.save_pretrained(folder, safe_serialization=True)
    if tokenizer and tokenizer != "bytes":
        load_tokenizer(tokenizer).save_pretrained(folder)


def load_folder(folder: Path, dtype: torch.dtype) -> nn.Module:
    """A folder written by `save_folder`, read back by transformers alone."""
    transformers = require_transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
