"""results.json's `latency`: the deployed model's forward time against dense, with its noise.

Forms: `dense` (the trained dense weights), `masked` (the final model as trained: dense kernels
over zeros), `sparse` (its CSR form, each layer's kernel picked by `inference.kernel`, see
pruning/sparse.py) and `compact` (the physically smaller model, at granularity=neuron), and on
CPU `int8` (the final model with torch's dynamic-int8 quantized Linear layers, torch.ao's
quantize_dynamic, where this torch offers it: its own speedup against dense; the deployed
form only when the run ships int8 weights, `compress.quantize=int8`, since otherwise its
outputs differ from the model's). Each is timed at batch 1 and batch
64 on real test inputs, at one thread and at the default thread count. `auto` picks kernels
separately for each batch size and thread count.

The speedup is the *deployed* form against dense: the int8 form when the run ships int8
weights (what a user of that model runs), else the compact model at neuron granularity, else
the sparse form with the kernels chosen. The deployed form follows from what ships, never from
which form timed fastest (picking the fastest of several noisy timings biases the ratio up).
The masked form is recorded, never a speedup (it runs the dense computation: its ratio to
dense is noise). When every layer kept its dense
kernel the deployed form is the dense model itself: the speedup is exactly 1.0, form `dense`,
and nothing is timed against it.

The forms are timed interleaved (dense, masked, deployed, then deployed, masked, dense...)
over `rounds` rounds, each form's round a block of calls lasting about BLOCK_S, so a burst of
load on a shared machine hits every form alike (sparse.interleaved); at one thread the clock is
the thread's CPU time, which leaves out the waits for a core (sparse.clock), and the thread is
pinned to one core while it times (sparse.one_core). The speedup is the median of the paired
rounds' ratios (dense round / deployed round: a load that changes between rounds slows both
sides of a pair alike and cancels in its ratio), with a 95% percentile-bootstrap interval of
that median (scipy.stats.bootstrap); an interval that contains 1 is not significant. The budget
scales with the model: SETTING_S of rounds per setting when forwards are short (a 0.1 ms
forward is measured in well under a second for all four settings), at least ROUNDS[0] calls
of each form when they are long; the headline setting, when a deployed form is timed against
dense, gets HEADLINE_S and up to HEADLINE_ROUNDS[1] rounds.

    latency.forms[form][batch_B][threads_T]   median ms per forward over the rounds
    latency.kernels[batch_B][threads_T]       per layer: kernel, density, dense_us, csr_us
    latency.speedups[batch_B][threads_T]      ratio, low, high (95%), significant, form, rounds
    latency.rounds_ms[form]                   the headline setting's ms per call in each round
    latency.int8_speedups[batch_B][threads_T] the `int8` form against dense, the same way
    latency.int8_max_abs_diff                 largest |int8 - masked| output on the test batch
    latency.speedup (+ speedup_low, speedup_high, speedup_significant, speedup_form)
                                              the same at the largest batch and one thread
                                              (the most repeatable setting on a shared machine)
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from prunebench.console import steps
from prunebench.data import Dataset, batches
from prunebench.pruning import sparse

log = logging.getLogger(__name__)
BATCHES = (1, 64)
BLOCK_S = 0.002          # one form's share of a round: enough calls to last this long
SETTING_S = 0.1          # rounds per setting: as many as fit this budget, within the bounds
ROUNDS = (7, 21)         # at least and at most this many rounds
HEADLINE_S = 1.0         # the headline speedup's setting: more rounds, a tighter median
HEADLINE_ROUNDS = (21, 201)
RESAMPLES = 2000         # bootstrap resamples of the paired rounds


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
    ships_int8 = cfg.compress.quantize == "int8"
    result = measure(model, dense, x, kernel, small, torch.device("cpu"), ships_int8=ships_int8)
    device = next(model.parameters()).device
    if device.type == "cuda":  # cuSPARSE through the same addmm (not tested: no GPU here)
        result["cuda"] = measure(model, dense, x, kernel, small, device)
    log.info("latency: %s at %s (kernel=%s), measured in %.1f s", speedup_text(result),
             result["speedup_at"], kernel, result["measure_s"])
    return result


def speedup_text(result: dict) -> str:
    """`x2.95 [2.80, 3.10] (sparse form)`, `x1.00 (dense form: ...)` or `... not significant`."""
    if result["speedup_form"] == "dense":
        return "x1.00 (dense form: every layer kept its dense kernel)"
    text = (f"x{result['speedup']:.2f} [{result['speedup_low']:.2f}, "
            f"{result['speedup_high']:.2f}] ({result['speedup_form']} form)")
    return text if result["speedup_significant"] else text + ", not significant"


def example_batch(x: Tensor, size: int) -> Tensor:
    """`size` test inputs (cycled when the test batch is smaller)."""
    return x[torch.arange(size) % len(x)].contiguous()


@torch.no_grad()
def measure(masked: nn.Module, dense: nn.Module, x: Tensor, kernel: str,
            small: nn.Module | None, device: torch.device,
            batch_sizes: tuple[int, ...] = BATCHES, ships_int8: bool = False) -> dict:
    start = time.perf_counter()
    masked = copy.deepcopy(masked).to(device).eval()
    models = {"dense": dense.to(device).eval(), "masked": masked}
    form, layers = sparse.sparse_form(masked)
    if small is not None:
        models["compact"] = small.to(device).eval()
    int8 = dynamic_int8(masked) if device.type == "cpu" else None
    if int8 is not None:
        models["int8"] = int8
    x = x.to(device)
    threads = sorted({1, torch.get_num_threads()}) if device.type == "cpu" else [1]
    forms: dict[str, dict] = {}
    kernels, speedups, int8_speedups, rounds_ms = {}, {}, {}, {}
    with steps("latency", len(batch_sizes) * len(threads)) as advance:
        for size in batch_sizes:
            xb = example_batch(x, size)
            inputs = sparse.layer_inputs(form, layers, xb)
            b = f"batch_{size}"
            kernels[b], speedups[b], int8_speedups[b] = {}, {}, {}
            for count in threads:
                t = f"threads_{count}"
                kernels[b][t] = sparse.choose(layers, inputs, kernel, count)
                timed = dict(models)
                if any(row["kernel"] == "csr" for row in kernels[b][t]):
                    timed["sparse"] = form  # else it is the masked model: nothing to time
                at_headline = (size, count) == (max(batch_sizes), 1)
                deployed = deployed_form(timed, ships_int8)
                budget, bounds = (HEADLINE_S, HEADLINE_ROUNDS) \
                    if at_headline and deployed != "dense" else (SETTING_S, ROUNDS)
                rounds = sparse.interleaved(
                    {n: forward(m, xb) for n, m in timed.items()}, count, BLOCK_S, budget,
                    bounds, wall=device.type != "cpu")
                if at_headline:
                    rounds_ms = rounds
                for name, ms in rounds.items():
                    forms.setdefault(name, {}).setdefault(b, {})[t] = float(np.median(ms))
                speedups[b][t] = paired_speedup(rounds, deployed)
                if int8 is not None:
                    int8_speedups[b][t] = paired_speedup(rounds, "int8")
                advance(1)
    diffs = sparse.max_diff(masked, form, layers, example_batch(x, max(batch_sizes)))
    at = (f"batch_{max(batch_sizes)}", "threads_1")
    headline = speedups[at[0]][at[1]]
    return {"device": device.type, "kernel": kernel, "batches": list(batch_sizes),
            "threads": threads, "forms": forms, "kernels": kernels, "speedups": speedups,
            "speedup": headline["ratio"], "speedup_low": headline["low"],
            "speedup_high": headline["high"], "speedup_significant": headline["significant"],
            "speedup_form": headline["form"], "speedup_at": "/".join(at), **diffs,
            "rounds_ms": rounds_ms,
            **({"int8_speedups": int8_speedups, "int8_max_abs_diff": float(
                (int8(x) - masked(x)).abs().max())} if int8 is not None else {}),
            "measure_s": time.perf_counter() - start}


def dynamic_int8(model: nn.Module) -> nn.Module | None:
    """The model with torch's dynamic-int8 Linear (int8 weights, activations quantized per
    batch), on CPU; None where this torch has no quantized engine. torch.ao.quantization is
    deprecated upstream: its warnings are silenced here, its absence is not an error."""
    import warnings

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # per output channel, as compress.quantize=int8 rounds the weights it ships
            return quantize_dynamic(copy.deepcopy(model).cpu().eval(),
                                    {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    except Exception as err:  # no engine, a removed API: the form is left out
        log.info("latency: no dynamic-int8 form (%s)", type(err).__name__)
        return None


def deployed_form(timed: dict[str, nn.Module], ships_int8: bool = False) -> str:
    """What a user would run: the int8 model when int8 weights ship, else the compact model,
    else the sparse form when some layer runs CSR (it is timed only then), else the dense
    model (the sparse form with dense kernels is the dense computation)."""
    candidates = ("int8", "compact", "sparse") if ships_int8 else ("compact", "sparse")
    return next((form for form in candidates if form in timed), "dense")


def forward(model: nn.Module, x: Tensor):
    """model(x), waited for on CUDA (its kernels run asynchronously)."""
    if x.device.type != "cuda":
        return lambda: model(x)
    return lambda: (model(x), torch.cuda.synchronize(x.device))


def paired_speedup(rounds: dict[str, list[float]], form: str) -> dict:
    """The median of the paired rounds' ratios dense ms / `form` ms, with a 95% bootstrap
    interval of that median; exactly 1 (no interval needed) when the deployed form is the
    dense model."""
    count = len(rounds["dense"])
    if form == "dense":
        return {"ratio": 1.0, "low": 1.0, "high": 1.0, "significant": False, "form": "dense",
                "rounds": count}
    from scipy.stats import bootstrap  # imported here: scipy.stats takes a second to import

    ratios = np.asarray(rounds["dense"]) / np.asarray(rounds[form])
    interval = bootstrap((ratios,), np.median, vectorized=True, n_resamples=RESAMPLES,
                         method="percentile",
                         random_state=np.random.default_rng(0)).confidence_interval
    low, high = float(interval.low), float(interval.high)
    return {"ratio": float(np.median(ratios)), "low": low, "high": high,
            "significant": not low <= 1.0 <= high, "form": form, "rounds": count}
