"""Sparse execution of unstructured weights: each prunable layer as a CSR matrix product.

A pruned model is a dense model full of zeros; torch runs it as fast as the dense one. Here a
Linear layer's weight becomes a CSR matrix W (out x in) and its forward is one
`torch.addmm(bias, W, x^T)` (CSR times dense: MKL's sparse BLAS on CPU, cuSPARSE on CUDA).
A Conv2d (groups 1, numeric padding) becomes the same product on its unfolded input
(im2col: W is out x in*kh*kw, the columns in*kh*kw x batch*positions); a 1x1 convolution
skips the unfold. Which kernel a layer uses is a switch (`SparseLayer.use_csr`): `choose`
times both on the layer's real input at the measured batch size and thread count and keeps
CSR only when it measured CSR_MIN_GAIN times faster, so `kernel=auto` never makes a layer
slower than its dense form by its own measurement, and a layer whose two kernels are even
stays dense (its 'gain' would be noise, and the model would not be faster). Layers denser
than MAX_DENSITY are never tried (torch's CSR product is several times slower than dense
there: LITERATURE.md, "Sparse execution"), so an unpruned model always runs its dense
kernels.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from prunebench.pruning.masks import PRUNABLE, prunable_weights
from prunebench.runstate import files

KERNELS = ("auto", "dense", "csr")
MAX_DENSITY = 0.5      # denser layers keep the dense kernel without being timed
LAYER_BLOCK_S = 0.001  # a layer's kernels timed in interleaved rounds of blocks this long,
LAYER_BUDGET_S = 0.02  # as many rounds as fit this budget,
LAYER_ROUNDS = (3, 9)  # within these bounds; the median round of each kernel is compared
CSR_MIN_GAIN = 1.25    # auto keeps CSR only when dense / csr time is at least this
CLEAR_LOSS = 3.0       # CSR this many times slower than dense in one call: not timed again
ROW_CHUNK = 256        # rows per CSR product of a Linear layer (see SparseLayer.linear_forward)


class SparseLayer(nn.Module):
    """A Linear or Conv2d that runs either its dense kernel or a CSR product of its weight."""

    def __init__(self, layer: nn.Linear | nn.Conv2d):
        super().__init__()
        self.dense = layer
        weight = layer.weight.detach()
        self.out_features = weight.shape[0]
        self.density = float(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        with warnings.catch_warnings():  # "CSR support is in beta": known, and tested here
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.reshape(weight.shape[0], -1).to_sparse_csr()
        self.register_buffer("csr", csr, persistent=False)
        bias = layer.bias.detach() if layer.bias is not None else None
        self.register_buffer("bias_column", None if bias is None else bias[:, None].clone(),
                             persistent=False)
        self.use_csr = False
        self.pointwise = isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) \
            and layer.stride == (1, 1) and layer.padding == (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse_forward(x) if self.use_csr else self.dense(x)

    def product(self, columns: Tensor) -> Tensor:
        """W @ columns (+ bias): the CSR matrix times a dense (in, n) matrix -> (out, n)."""
        if self.bias_column is None:
            return torch.sparse.mm(self.csr, columns)
        return torch.addmm(self.bias_column, self.csr, columns)

    def linear_forward(self, x: Tensor) -> Tensor:
        """x @ W^T + b, computed as (W x^T)^T, ROW_CHUNK rows of x at a time.

        The CSR product returns (out, rows); handing its transpose on as a view leaves every
        later op reading a column-major tensor (a GELU or LayerNorm on it took several times
        as long), and one transposing copy of the whole output runs out of cache. A chunk's
        transpose stays in cache, so the output is written contiguous at little cost.
        """
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape[0], self.out_features)
        for start in range(0, flat.shape[0], ROW_CHUNK):
            out[start:start + ROW_CHUNK] = self.product(flat[start:start + ROW_CHUNK].t()).t()
        return out.reshape(*x.shape[:-1], self.out_features)

    def sparse_forward(self, x: Tensor) -> Tensor:
        if isinstance(self.dense, nn.Linear):
            return self.linear_forward(x)
        conv, batch = self.dense, x.shape[0]
        if self.pointwise:  # a 1x1 convolution is a matrix product over all positions
            height, width = x.shape[2:]
            columns = x.transpose(0, 1).reshape(x.shape[1], -1)
        else:
            height, width = conv_output_size(conv, x.shape[2:])
            unfolded = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            columns = unfolded.transpose(0, 1).reshape(unfolded.shape[1], -1)
        out = self.product(columns).reshape(self.out_features, batch, height, width)
        return out.transpose(0, 1)


def conv_output_size(conv: nn.Conv2d, size) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
        size, conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True))


def convertible(module: nn.Module) -> bool:
    """Linear layers, and Conv2d layers that unfold + matmul reproduces exactly."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 \
        and module.padding_mode == "zeros" and not isinstance(module.padding, str)


@torch.no_grad()
def sparse_form(model: nn.Module) -> tuple[nn.Module, dict[str, SparseLayer]]:
    """A copy of `model` whose convertible prunable layers are SparseLayers (dense kernels on).

    Returns the copy and its SparseLayers by module name. The other prunable layers (grouped
    convolutions, Conv1d/3d) stay as they are and run dense.
    """
    form = copy.deepcopy(model).eval()
    layers = {}
    for name, module in list(form.named_modules()):
        if isinstance(module, PRUNABLE) and convertible(module) and name:
            layers[name] = SparseLayer(module)
            parent, _, child = name.rpartition(".")
            setattr(form.get_submodule(parent) if parent else form, child, layers[name])
    return form, layers


@torch.no_grad()
def layer_inputs(form: nn.Module, layers: dict[str, SparseLayer], x: Tensor) -> dict[str, Tensor]:
    """Each SparseLayer's input when `form` runs on `x`."""
    seen, hooks = {}, []
    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0].detach())))
    try:
        form(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def clock(threads: int, wall: bool = False) -> Callable[[], float]:
    """The clock a timing reads. At one thread, the calling thread's CPU time: torch runs a
    one-thread forward on it, and wall time on a shared machine also counts the waits for a
    core, which are the other processes' work (under a load of 15 on 2 cores, five wall-time
    ratios of the same pair of models ranged 1.2x-13.7x, thread CPU time 1.65x-1.84x). At more
    threads the work is spread over OpenMP's threads, so wall time: noisier when shared."""
    return time.thread_time if threads == 1 and not wall else time.perf_counter


def interleaved(fns: dict[str, Callable], threads: int, block_s: float, budget_s: float,
                rounds: tuple[int, int], wall: bool = False) -> dict[str, list[float]]:
    """ms per call of each function in each round, the functions timed in turn in a round
    (a burst of load hits them alike), in reverse order every other round (so none always
    runs right after another's cache traffic). Each is warmed up (two calls) first; a round
    calls each the same number of times, enough for the slowest to last `block_s`; as many
    rounds as fit `budget_s`, within `rounds` (min, max). `wall`: wall time at any thread
    count (a CUDA forward, whose work is not the calling thread's). At one thread the
    calling thread is pinned to the core it is on while it times (`one_core`)."""
    one = {}
    with one_core(threads == 1 and not wall):
        for name, fn in fns.items():
            once(fn, threads, wall)
            one[name] = once(fn, threads, wall) / 1e3
        calls = max(1, math.ceil(block_s / max(max(one.values()), 1e-9)))
        count = min(rounds[1], max(rounds[0], int(budget_s / (calls * sum(one.values()) + 1e-9))))
        times: dict[str, list[float]] = {name: [] for name in fns}
        order = list(fns)
        for i in range(count):
            for name in order if i % 2 == 0 else order[::-1]:
                fn = fns[name]
                block = once(lambda fn=fn: [fn() for _ in range(calls)], threads, wall)
                times[name].append(block / calls)
    return times


@contextlib.contextmanager
def one_core(pin: bool) -> Iterator[None]:
    """With `pin`, the calling thread bound to the CPU it runs on for the block (Linux
    sched_setaffinity on thread id 0), its affinity restored after: a thread the scheduler
    moves between cores refills its caches on the new one, which a busy machine does often.
    A no-op where the platform has no affinity call."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        yield
        return
    kept = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {current_cpu(kept)})
    except OSError:  # a container may forbid it: time unpinned
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, kept)


def current_cpu(allowed: set[int]) -> int:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat), else the
    first one it may run on."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return min(allowed)


def torch_benchmark():
    """torch.utils.benchmark, imported without the `No CUDA runtime is found, using
    CUDA_HOME=...` warning that its import of cpp_extension logs on a machine with a CUDA
    toolkit and no GPU (it says nothing about this run)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


@torch.no_grad()
def choose(layers: dict[str, SparseLayer], inputs: dict[str, Tensor], kernel: str,
           threads: int | None) -> list[dict]:
    """Set each layer's kernel; returns per layer {name, density, kernel, dense_us, csr_us}.

    auto: dense and CSR timed on the layer's own input (`time_both`); CSR only when it measured
    CSR_MIN_GAIN times faster (layer timings on a shared machine vary by 10-20% run to run, so
    a smaller gain would pick kernels at random between identical runs). Layers above
    MAX_DENSITY are not timed and keep the dense kernel.
    """
    table = []
    for name, layer in layers.items():
        x = inputs[name]
        row = {"name": name, "density": layer.density, "kernel": "dense", "dense_us": None,
               "csr_us": None}
        if kernel == "csr":
            row["kernel"] = "csr"
        elif kernel == "auto" and layer.density <= MAX_DENSITY:
            row["dense_us"], row["csr_us"] = time_both(layer, x, threads)
            row["kernel"] = "csr" if csr_wins(row["dense_us"], row["csr_us"]) else "dense"
        layer.use_csr = row["kernel"] == "csr"
        table.append(row)
    return table


def csr_wins(dense_us: float, csr_us: float) -> bool:
    return dense_us >= CSR_MIN_GAIN * csr_us


def time_both(layer: SparseLayer, x: Tensor, threads: int | None) -> tuple[float, float]:
    """(dense, csr) times of the layer on `x` in µs: medians of interleaved rounds.

    After a warm-up call of each (a kernel's first call pays its set-up), one call of each
    is timed; a CSR product CLEAR_LOSS times slower than that is not timed again (the usual
    case for convolutions, whose unfold alone costs more than the dense kernel), so hopeless
    layers cost four calls, not a timing of rounds.
    """
    threads = threads or torch.get_num_threads()
    once(lambda: layer.dense(x), threads), once(lambda: layer.sparse_forward(x), threads)
    dense, csr = once(lambda: layer.dense(x), threads), once(lambda: layer.sparse_forward(x),
                                                             threads)
    if csr >= CLEAR_LOSS * dense:
        return dense * 1e3, csr * 1e3
    rounds = interleaved({"dense": lambda: layer.dense(x), "csr": lambda: layer.sparse_forward(x)},
                         threads, LAYER_BLOCK_S, LAYER_BUDGET_S, LAYER_ROUNDS)
    return float(np.median(rounds["dense"])) * 1e3, float(np.median(rounds["csr"])) * 1e3


def once(fn, threads: int | None, wall: bool = False) -> float:
    """Time of one call in ms at `threads` threads, on `clock(threads, wall)`."""
    kept = torch.get_num_threads()
    threads = threads or kept
    torch.set_num_threads(threads)
    now = clock(threads, wall)
    try:
        start = now()
        fn()
        return (now() - start) * 1e3
    finally:
        torch.set_num_threads(kept)


@torch.no_grad()
def max_diff(model: nn.Module, form: nn.Module, layers: dict[str, SparseLayer],
             x: Tensor) -> dict:
    """Largest difference between the masked model and its sparse form with every
    convertible layer on CSR (every path any kernel choice can take), absolute and relative."""
    kept = {name: layer.use_csr for name, layer in layers.items()}
    for layer in layers.values():
        layer.use_csr = True
    try:
        reference, out = model(x), form(x)
    finally:
        for name, layer in layers.items():
            layer.use_csr = kept[name]
    diff = float((out.float() - reference.float()).abs().max())
    scale = max(float(reference.float().abs().max()), 1e-12)
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale}


def csr_state(state: dict[str, Tensor], prunable: set[str]) -> dict:
    """A state_dict with each prunable weight stored as CSR parts of its 2-D matrix.

    Plain tensors only (loads with weights_only=True): crow_indices, col_indices (int32 when
    they fit), values and the weight's shape.
    """
    out: dict = {"format": "prunebench-csr-v1", "dense": {}, "csr": {}}
    for name, value in state.items():
        if name not in prunable:
            out["dense"][name] = value.detach().cpu()
            continue
        matrix = value.detach().cpu().reshape(value.shape[0], -1).to_sparse_csr()
        index = torch.int32 if matrix.values().numel() < 2**31 else torch.int64
        out["csr"][name] = {"crow_indices": matrix.crow_indices().to(index),
                            "col_indices": matrix.col_indices().to(index),
                            "values": matrix.values(), "shape": list(value.shape)}
    return out


def dense_state(saved: dict) -> dict[str, Tensor]:
    """The plain state_dict back from `csr_state`'s dict."""
    state = dict(saved["dense"])
    for name, parts in saved["csr"].items():
        shape = parts["shape"]
        matrix = torch.sparse_csr_tensor(parts["crow_indices"].long(),
                                         parts["col_indices"].long(), parts["values"],
                                         (shape[0], math.prod(shape[1:])),
                                         check_invariants=True)  # files may come from anyone
        state[name] = matrix.to_dense().reshape(shape)
    return state


def export(model: nn.Module, cfg, out_dir) -> dict:
    """checkpoints/final_sparse.pt: the final weights with prunable ones as CSR parts.

    Returns results.json's exports.sparse: file, sizes against final.pt, and the largest
    difference of the weights read back (0 when the round trip is exact).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    exclude = OmegaConf.select(cfg, "strategy.exclude", default=()) or ()
    # CSR stores 8 bytes per nonzero (value, int32 column): smaller only below half density
    prunable = {name for name, w in prunable_weights(model, exclude).items()
                if torch.count_nonzero(w) < w.numel() / 2}
    checkpoints = out_dir / "checkpoints"
    files.save_torch(checkpoints / "final_sparse.pt", csr_state(state, prunable))
    back = dense_state(torch.load(checkpoints / "final_sparse.pt", weights_only=True))
    diff = max((float((back[k].float() - v.float()).abs().max()) for k, v in state.items()
                if v.numel()), default=0.0)
    size, dense_size = ((checkpoints / name).stat().st_size
                        for name in ("final_sparse.pt", "final.pt"))
    return {"file": "checkpoints/final_sparse.pt", "size": size, "dense_file":
            "checkpoints/final.pt", "dense_size": dense_size, "ratio": size / dense_size,
            "max_abs_diff": diff}
