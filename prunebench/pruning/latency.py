"""results.json's `latency`: measured forward time of every form of the final model.

Forms: `dense` (the trained dense weights), `masked` (the final model as trained: dense
kernels over zeros), `sparse` (its CSR form, each layer's kernel picked by
`inference.kernel`, see pruning/sparse.py) and `compact` (the physically smaller model, at
granularity=neuron). Each is timed at batch 1 and batch 64 on real test inputs, at one thread
and at the default thread count, with torch.utils.benchmark (warm-up calls, then the
median of its blocks; a forward lasting a block by itself is timed alone, sparse.time_ms);
the forms are timed in turn, FORM_REPEATS times, keeping the best, so
a burst of load on a shared machine hits all forms alike. `auto` picks kernels separately for
each batch size and thread count, on that setting's inputs.

    latency.forms[form][batch_B][threads_T]   ms
    latency.kernels[batch_B][threads_T]       per layer: kernel, density, dense_us, csr_us
    latency.speedups[batch_B][threads_T]      dense ms / best other form's ms, and that form
    latency.speedup                           the same at the largest batch and one thread (the most
                                              repeatable setting on a shared machine)
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from prunebench.console import steps
from prunebench.data import Dataset, batches
from prunebench.pruning import sparse

log = logging.getLogger(__name__)
BATCHES = (1, 64)
FORM_REPEATS = 2
FORM_MIN_RUN_S = 0.03


def run(cfg: DictConfig, model: nn.Module, dense_state: dict, data: Dataset,
        out_dir: Path) -> dict:
    """Measure the final model's forms on CPU (and on its CUDA device when it has one)."""
    x = next(batches(data, data.test, max(BATCHES)))[0]
    dense = copy.deepcopy(model)
    dense.load_state_dict(dense_state)
    small = None
    if cfg.strategy.granularity == "neuron" and (out_dir / "checkpoints" / "compact.pt").exists():
        from prunebench.pruning import compact
        small = compact.load(out_dir / "checkpoints" / "compact.pt")
    kernel = cfg.inference.kernel
    result = measure(model, dense, x, kernel, small, torch.device("cpu"))
    device = next(model.parameters()).device
    if device.type == "cuda":  # cuSPARSE through the same addmm (not tested: no GPU here)
        result["cuda"] = measure(model, dense, x, kernel, small, device)
    log.info("latency: x%.2f faster than dense at %s (%s form, kernel=%s), measured in %.1f s",
             result["speedup"], result["speedup_at"], result["speedup_form"], kernel,
             result["measure_s"])
    return result


def example_batch(x: Tensor, size: int) -> Tensor:
    """`size` test inputs (cycled when the test batch is smaller)."""
    return x[torch.arange(size) % len(x)].contiguous()


@torch.no_grad()
def measure(masked: nn.Module, dense: nn.Module, x: Tensor, kernel: str,
            small: nn.Module | None, device: torch.device,
            batch_sizes: tuple[int, ...] = BATCHES) -> dict:
    start = time.perf_counter()
    masked = copy.deepcopy(masked).to(device).eval()
    models = {"dense": dense.to(device).eval(), "masked": masked}
    form, layers = sparse.sparse_form(masked)
    if kernel != "dense":  # with dense kernels the sparse form is the masked model
        models["sparse"] = form
    if small is not None:
        models["compact"] = small.to(device).eval()
    x = x.to(device)
    threads = sorted({1, torch.get_num_threads()}) if device.type == "cpu" else [1]
    forms = {name: {} for name in models}
    kernels, speedups = {}, {}
    with steps("latency", len(batch_sizes) * len(threads)) as advance:
        for size in batch_sizes:
            xb = example_batch(x, size)
            inputs = sparse.layer_inputs(form, layers, xb)
            b = f"batch_{size}"
            kernels[b], speedups[b] = {}, {}
            for count in threads:
                t = f"threads_{count}"
                kernels[b][t] = sparse.choose(layers, inputs, kernel, count)
                best = time_forms(models, xb, count)
                for name, ms in best.items():
                    forms[name].setdefault(b, {})[t] = ms
                fastest = min((n for n in models if n != "dense"), key=best.get)
                speedups[b][t] = {"ratio": best["dense"] / best[fastest], "form": fastest}
                advance(1)
    diffs = sparse.max_diff(masked, form, layers, example_batch(x, max(batch_sizes)))
    at = (f"batch_{max(batch_sizes)}", "threads_1")
    headline = speedups[at[0]][at[1]]
    return {"device": device.type, "kernel": kernel, "batches": list(batch_sizes),
            "threads": threads, "forms": forms, "kernels": kernels, "speedups": speedups,
            "speedup": headline["ratio"], "speedup_form": headline["form"],
            "speedup_at": "/".join(at), **diffs,
            "measure_s": time.perf_counter() - start}


def time_forms(models: dict[str, nn.Module], xb: Tensor, threads: int) -> dict[str, float]:
    """Each form's best median forward time in ms, the forms timed in turn FORM_REPEATS
    times (interleaved: a burst of load hits every form alike)."""
    best = {name: float("inf") for name in models}
    for _ in range(FORM_REPEATS):
        for name, m in models.items():
            best[name] = min(best[name], sparse.time_ms(lambda m=m: m(xb), threads,
                                                        FORM_MIN_RUN_S))
    return best
