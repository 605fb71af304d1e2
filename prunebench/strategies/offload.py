"""model.offload=true: the layer-wise criteria one decoder block at a time, as SparseGPT's
sequential mode and llm-compressor's sequential onloading run them.

The inputs of the first block (its hidden states and the keyword arguments the model passes
every block: attention mask, rotary position embeddings) are captured once for all calibration
batches. Then, block after block: the block is loaded onto the device (from the CPU, or from
a safetensors file memory-mapped on disk), its layers' statistics are read over the cached
inputs and it is pruned (the criterion's own `start` / `prune_group`, the same calls as the
whole-model pass of calibration.py), the pruned block's outputs become the next block's inputs,
and the block is written back and released. Peak memory is one block plus the calibration
activations, logged in a memory plan before any work.

After each block, its pruned weights and masks are checkpointed in the run folder
(`offload/block-<i>.safetensors`, then `offload/progress.json`, each written to a temporary
name and renamed, runstate/files.py): a run killed mid-model and started again resumes at the
next block, its finished blocks read back and their outputs recomputed through them, so the
result equals an uninterrupted run's. The folder goes once the pruning call has finished.

`each_block` is the same walk over the dense model with nothing pruned or written back: OWL's
outlier statistics (the calibration batches through each block in turn) and a criterion whose
scores read only the weights (magnitude: no batches) use it.

Devices: the statistics accumulate in float32 on the device beside the block; the masks and
scores that outlive a block's turn stay where the blocks rest (the CPU) and are moved to the
block's device only for its turn (selection.py).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from prunebench.console import steps
from prunebench.runstate import files
from prunebench.strategies.autodiff import forward_hooks
from prunebench.strategies.calibration import Accumulate, collect, forward_order, split_to_fit

log = logging.getLogger(__name__)
MASK = "mask:"  # prefix of a mask's key beside the weights in a block's checkpoint
NO_CACHE = ("cache", "past_key_values", "past_key_value")  # a block call's cache arguments


class _Captured(Exception):
    """Raised by the first block's pre-hook: its inputs are all that is needed."""


@dataclass
class BlockStore:
    """Where the decoder blocks' weights live between their turns on the device.

    `sources[i]` are the safetensors files holding block i's parameters under their full names
    (disk residency: the blocks are on the meta device, `load` reads one from its file,
    memory-mapped); with no sources the blocks stay in CPU memory and `load` moves one to the
    device. `folder` (the run's `offload/`) receives each pruned block, which becomes its
    source.
    """

    folder: Path
    device: torch.device
    sources: dict[int, list[Path]] = field(default_factory=dict)

    @property
    def on_disk(self) -> bool:
        return bool(self.sources)

    def load(self, index: int, prefix: str, block: nn.Module) -> None:
        block.offload_held = True  # a model that streams its blocks leaves this one here
        if not self.on_disk:
            block.to(self.device)
            return
        from safetensors import safe_open

        dtypes = {k: v.dtype for k, v in block.state_dict().items()}
        state = {}
        for source in self.sources[index]:
            with safe_open(source, framework="pt") as f:
                for key in f.keys():
                    if key.startswith(f"{prefix}."):
                        name = key.removeprefix(f"{prefix}.")
                        state[name] = owned(f.get_tensor(key), self.device, dtypes[name])
        block.load_state_dict(state, assign=True)

    def release(self, block: nn.Module) -> None:
        block.to("meta" if self.on_disk else "cpu")
        block.offload_held = False

    def checkpoint(self, index: int, prefix: str, block: nn.Module, masks: dict[str, Tensor],
                   fingerprint: str) -> None:
        """Block `index` pruned: its parameters and masks, then the progress, each atomic."""
        from safetensors.torch import save

        state = {f"{prefix}.{k}": v.detach().contiguous() for k, v in block.state_dict().items()}
        state.update({f"{MASK}{n}": m.contiguous() for n, m in masks.items()})
        path = self.folder / f"block-{index}.safetensors"
        files.write_bytes(path, save({k: v.cpu() for k, v in state.items()}))
        files.write_json(self.folder / "progress.json",
                         {"fingerprint": fingerprint, "blocks_done": index + 1})
        if self.on_disk:
            self.sources[index] = [path]

    def blocks_done(self, fingerprint: str) -> int:
        """Blocks a killed run finished for this same pruning call (0: start afresh)."""
        progress = self.folder / "progress.json"
        if not progress.is_file():
            return 0
        saved = files.read_json(progress)
        if saved.get("fingerprint") != fingerprint:
            log.info("offload: %s is from another pruning call; starting afresh", self.folder)
            return 0
        return int(saved["blocks_done"])

    def restore(self, index: int, prefix: str, block: nn.Module) -> dict[str, Tensor]:
        """A finished block's checkpoint made its weights' home (read by `load`); its masks."""
        from safetensors.torch import load_file

        path = self.folder / f"block-{index}.safetensors"
        saved = load_file(path)
        if self.on_disk:
            self.sources[index] = [path]
        else:
            block.load_state_dict({k.removeprefix(f"{prefix}."): v for k, v in saved.items()
                                   if not k.startswith(MASK)})
        return {k.removeprefix(MASK): v for k, v in saved.items() if k.startswith(MASK)}

    def finish(self) -> None:
        """The call is done: blocks on disk keep their pruned files (they are the model's
        weights now), the progress goes; blocks in memory need none of the folder."""
        if self.on_disk:
            (self.folder / "progress.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def owned(tensor: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A tensor read by safetensors, copied: on the CPU it is a view of a copy-on-write
    mapping of the whole file, which a live view keeps mapped, its read pages counted as the
    process's memory, so holding it would hold every block read since."""
    return tensor.to(device=device, dtype=dtype, copy=True)


def decoder_blocks(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList]:
    """(prefix, blocks): the model's first ModuleList holding the prunable layers."""
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and names and all(
                n.startswith(f"{prefix}.") for n in names):
            return prefix, module
    raise ValueError("model.offload=true prunes decoder blocks one at a time: the prunable "
                     "layers must all sit in one nn.ModuleList of blocks (use strategy.exclude "
                     "for the others)")


def block_inputs(model: nn.Module, first: nn.Module, batches) -> list[tuple[tuple, dict]]:
    """(positional, keyword) arguments of the first block's call, for every batch."""
    captured = []

    def catch(_module, args, kwargs):
        # no key-value cache: each block would append its keys and values to it
        kwargs = {k: v for k, v in kwargs.items() if k not in NO_CACHE}
        captured.append((args, {**kwargs, "use_cache": False} if "use_cache" in kwargs
                         else kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for x, _ in batches:
            try:
                model(x)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def fingerprint(label: str, names: list[str], batches) -> str:
    """What identifies one pruning call: the criterion, its layers, the calibration ids."""
    digest = hashlib.sha256(f"{label}\n{names}".encode())
    for x, _ in batches:
        digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def memory_plan(prefix: str, blocks: nn.ModuleList, store: BlockStore,
                inputs: list[tuple[tuple, dict]], label: str) -> None:
    """Bytes of the largest block and of the calibration activations, logged before work."""
    def size(module: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    block = max(size(b) for b in blocks)
    activations = sum(a[0].numel() * a[0].element_size() for a, _ in inputs)
    log.info("%s offload memory plan: one block %.1f MB (the largest of %d in %s), "
             "calibration activations %.1f MB (%d batches of %s), %.1f MB at once on %s; the "
             "whole model's blocks %.1f MB stay %s", label, block / 2**20, len(blocks), prefix,
             activations / 2**20, len(inputs), tuple(inputs[0][0][0].shape),
             (block + 2 * activations) / 2**20, store.device, size(blocks) / 2**20,
             "on disk" if store.on_disk else "in CPU memory")


class _BlockPass:
    """A block called on the cached inputs, in the shape calibration.collect drives a model:
    `pass(i)` runs batch i; layers are found by their names in the whole model."""

    def __init__(self, model: nn.Module, block: nn.Module, inputs):
        self.model, self.block, self.inputs = model, block, inputs

    def get_submodule(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def __call__(self, i: int) -> Tensor:
        args, kwargs = self.inputs[i]
        out = self.block(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def batches(self) -> list[tuple[int, None]]:
        return [(i, None) for i in range(len(self.inputs))]


@torch.no_grad()
def sequential(model: nn.Module, weights: dict[str, Tensor], batches, store: BlockStore,
               start: Callable[[list[str]], Accumulate],
               prune_group: Callable[[list[str]], None], masks: dict[str, Tensor],
               cost: Callable[[str], int] | None = None, budget: float | None = None,
               label: str = "calibration") -> None:
    """calibration.sequential with one block on the device at a time. `masks` is the call's
    new masks, which `prune_group` fills; a resumed run's finished blocks fill it here."""
    names = list(weights)
    prefix, blocks = decoder_blocks(model, names)
    inputs = block_inputs(model, blocks[0], batches)
    key = fingerprint(label, names, batches)
    done = store.blocks_done(key)
    memory_plan(prefix, blocks, store, inputs, label)
    if done:
        log.info("%s: resuming at block %d of %d (%s)", label, done, len(blocks), store.folder)
    with steps(f"{label} (offload)", len(blocks)) as advance:
        for i, block in enumerate(blocks):
            here = f"{prefix}.{i}"
            mine = [n for n in names if n.startswith(f"{here}.")]
            if i < done:
                masks.update({n: m.to(masks[n].device, masks[n].dtype) for n, m in
                              store.restore(i, here, block).items()})
                store.load(i, here, block)
            else:
                store.load(i, here, block)
                weights.update({n: model.get_parameter(n) for n in mine})  # loaded anew
                run = _BlockPass(model, block, inputs)
                for group in block_groups(run, mine, cost, budget):
                    collect(run, group, run.batches(), start(group))
                    prune_group(group)
                store.checkpoint(i, here, block, {n: masks[n] for n in mine}, key)
            inputs = block_outputs(model, block, inputs)
            store.release(block)
            weights.update({n: model.get_parameter(n) for n in mine})  # nothing held on
            advance(1)
    store.finish()


@torch.no_grad()
def each_block(model: nn.Module, names: list[str], store: BlockStore,
               visit: Callable[[dict[str, Tensor]], None], batches=None,
               hooks: Callable[[list[str]], Iterable] | None = None,
               label: str = "offload") -> None:
    """The model as it is, one block on the device at a time, nothing written back: with
    `batches`, the calibration batches run through each block in turn, `hooks(its layers)`
    giving (module, hook) pairs that watch them; then `visit(the block's weights)` while the
    block is on the device (OWL's outlier ratios; a criterion that reads only the weights)."""
    prefix, blocks = decoder_blocks(model, names)
    inputs = block_inputs(model, blocks[0], batches) if batches is not None else None
    log.info("%s: %d blocks one at a time on %s (model.offload)", label, len(blocks),
             store.device)
    with steps(f"{label} (offload)", len(blocks)) as advance:
        for i, block in enumerate(blocks):
            here = f"{prefix}.{i}"
            mine = [n for n in names if n.startswith(f"{here}.")]
            store.load(i, here, block)
            if inputs is not None:
                with forward_hooks(hooks(mine) if hooks else ()):
                    inputs = block_outputs(model, block, inputs)
            visit({n: model.get_parameter(n) for n in mine})
            store.release(block)
            advance(1)


def block_outputs(model: nn.Module, block: nn.Module, inputs: list[tuple[tuple, dict]]
                  ) -> list[tuple[tuple, dict]]:
    """The next block's inputs: `block`'s outputs on each of its cached inputs."""
    run = _BlockPass(model, block, inputs)
    return [((run(j), *args[1:]), kwargs) for j, (args, kwargs) in enumerate(inputs)]


def block_groups(run: _BlockPass, names: list[str], cost, budget) -> list[list[str]]:
    """The block's layers in the order they run, cut to fit the criterion's budget."""
    if not names:
        return []
    order = forward_order(run, names, 0)  # the block pass stands in for the model
    return split_to_fit([order], cost, budget) if cost and budget else [order]


def open_checkpoint(folder: Path, work: Path, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> tuple[nn.Module, BlockStore]:
    """A Hugging Face checkpoint folder opened with its decoder blocks left on disk: the
    model built on the meta device (accelerate's init_empty_weights), the weights outside the
    blocks (embeddings, final norm, LM head) read from its safetensors files, and a BlockStore
    whose sources are those files (read a block at a time, memory-mapped). `work` is the
    folder the pruned blocks are written to."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors import safe_open

    config = transformers.AutoConfig.from_pretrained(folder)
    with init_empty_weights():  # parameters on meta, buffers (rotary frequencies) real
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    located = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            located.update((key, path) for key in f.keys())
    prefix = next(n for n, m in model.named_modules() if isinstance(m, nn.ModuleList))
    outside = {}
    for key, path in located.items():
        if not key.startswith(f"{prefix}."):
            with safe_open(path, framework="pt") as f:
                outside[key] = owned(f.get_tensor(key), device, dtype)
    model.load_state_dict(outside, strict=False, assign=True)
    model.tie_weights()
    model.config.use_cache = False
    blocks = model.get_submodule(prefix)
    sources = {i: sorted({p for k, p in located.items() if k.startswith(f"{prefix}.{i}.")})
               for i in range(len(blocks))}
    return model.eval(), BlockStore(Path(work), device, sources)
