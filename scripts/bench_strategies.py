"""Scoring cost of every strategy as a ratio to one forward+backward over the same batches.

    python scripts/bench_strategies.py [--model lenet300] [--dataset digits] [--batches 8]
                                       [--device cpu] [--threads 1]

Each strategy (every conf/strategy/*.yaml, and each variant / estimator of gradient and
hessian) scores the same trained-at-init model on the same `--batches` training batches.
Time: median of `--repeats` runs of Strategy.prune (scores, selection and any compensation),
divided by the median time of one forward+backward pass over those batches, measured again
right after each strategy so that a shared machine's changing load cancels out. Memory: peak
memory above the starting point (CUDA: torch.cuda.max_memory_allocated; CPU: peak resident
set size of a forked child), divided by the same figure for the forward+backward.
The Hutchinson rows show the cost of P probes against P single Hessian-vector products.
`--only hessian/obd/exact --model mlp` adds the exact diagonal (one HVP per weight: slow).

    python scripts/bench_strategies.py --lm --offload [--layers 16] [--width 1024]

SparseGPT (50%) on a random-init Llama of `--layers` blocks of width `--width` (GQA, MLP 2.75x
wide, vocabulary 32000: 245M parameters at the defaults, float32), saved as a safetensors
checkpoint, pruned from that folder in a fresh process per run: without offload (the model
loaded whole, the whole-model pass of strategies/calibration.py) and with it (its blocks left
on disk and pruned one at a time, strategies/offload.py), the two alternating `--repeats`
times. Peak memory: the child's peak RSS (VmHWM, reset after a warm-up) above its RSS then;
time: loading and
pruning; both under MALLOC_MMAP_THRESHOLD_=65536 (freed blocks go back to the system). Ratios
offload / whole with a 95% bootstrap interval over the paired repeats; the
table goes to --csv (default docs/performance/data/bench_offload.csv).

    python scripts/bench_strategies.py --lm [--windows 128] [--seq-len 128] [--threads 2]

The LM criteria on one GPT-2-sized MLP layer at a time, Linear(768, 3072) (weight 3072 x 768)
and Linear(3072, 768) (weight 768 x 3072), calibrated on `--windows` windows of `--seq-len`
tokens of hidden states (random normal: timing does not depend on the values), 50% and 2:4:
time of Strategy.prune against one forward pass of the layer over the same windows (the two
interleaved `--repeats` times: the ratio of medians with a 95% bootstrap interval over the
repeats), and peak memory (as above) in MiB and against that forward pass; the table also goes
to --csv (default docs/performance/data/bench_strategies_lm.csv, which the documentation
includes), with its provenance beside it (scripts/benchtable.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from benchtable import DOCS_DATA, ratio, write
from hydra import compose, initialize_config_module

from prunebench import build
from prunebench.data import batches as iterate
from prunebench.pruning.masks import prunable_weights
from prunebench.strategies.base import PruneContext

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"
# variants beyond each YAML's default: (label, overrides)
VARIANTS = [
    *[(f"gradient/{v}", ["strategy=gradient", f"strategy.variant={v}"])
      for v in ("snip", "taylor", "grasp", "synflow")],
    *[(f"hessian/obd/{e}", ["strategy=hessian", "strategy.variant=obd",
                            f"strategy.estimator={e}"]) for e in ("hutchinson", "fisher")],
    ("hessian/obs", ["strategy=hessian", "strategy.variant=obs"]),
    ("l0 (1 epoch)", ["strategy=l0", "strategy.epochs=1"]),
]
# one Hessian row (an HVP) per weight: for small models only, so run on request (--only)
EXACT = ("hessian/obd/exact", ["strategy=hessian", "strategy.variant=obd",
                               "strategy.estimator=exact", "strategy.batches=1"])


def setup(args):
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", f"dataset={args.dataset}"])
    device = torch.device(args.device)
    data = build.dataset(cfg).to(device)
    torch.manual_seed(0)
    model = build.model(cfg, data).to(device)
    chosen = []
    for xy in iterate(data, data.train, args.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0)):
        if len(chosen) == args.batches:
            break
        chosen.append(xy)
    return model, chosen, device


def strategy_configs(args, batches: int) -> list[tuple[str, object]]:
    common = [f"strategy.batches={batches}"]
    out = []
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    runs = [(n, [f"strategy={n}"]) for n in names if n not in ("gradient", "hessian", "l0")]
    exact = [EXACT] if EXACT[0] in args.only.split(",") else []
    for label, overrides in runs + VARIANTS + exact:
        with initialize_config_module("prunebench.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        keys = [o for o in common if o.split("=")[0].split(".")[1] in cfg.strategy
                and o.split("=")[0] not in " ".join(overrides)]
        with initialize_config_module("prunebench.conf", version_base="1.3"):
            # an N:M pattern takes only amount N/M (config/checks.py): 2:4 runs at 0.5
            amount = "0.5" if any(o.startswith("strategy.pattern=2:4") for o in overrides) \
                else "0.9"
            cfg = compose("config", overrides=overrides + keys + [f"strategy.amount={amount}",
                                                                    "strategy.threshold=null"])
        out.append((label, cfg))
    return out


def context(model, batches, device) -> PruneContext:
    return PruneContext(lambda: iter(batches), F.cross_entropy, device,
                        torch.Generator().manual_seed(0))


def forward_backward(model, batches, device):
    def run():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
    return run


def hvp_once(model, batches, device):
    """One Hessian-vector product over the batches, from scratch (the unit Hutchinson pays)."""
    params = list(prunable_weights(model).values())
    vs = [torch.ones_like(p) for p in params]

    def run():
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
            torch.autograd.grad(grads, params, vs)
    return run


def pruner(cfg, model, batches, device):
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(state)  # compensating strategies move weights: start afresh
        selection = build.selection(cfg)
        weights = prunable_weights(model)
        masks = {n: torch.ones_like(w) for n, w in weights.items()}
        selection.prune(model, weights, masks, context(model, batches, device),
                        cfg.strategy.amount)
    return run


def once(fn, device) -> float:
    """Seconds of one call of fn (synchronized on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    return statistics.median(once(fn, device) for _ in range(repeats))


def interleaved(fn, base_fn, repeats: int, device) -> tuple[list[float], list[float]]:
    """Seconds of fn and of base_fn, called in turn `repeats` times (after a warm-up each)."""
    fn()
    base_fn()
    pairs = [(once(fn, device), once(base_fn, device)) for _ in range(repeats)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(fn, queue):
    # a forked child cannot use the parent's OpenMP pool (it hangs in its first parallel
    # region when the parent ran with --threads > 1): memory is measured on one thread
    torch.set_num_threads(1)
    start = rss_bytes()
    fn()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start)


def peak_memory(fn, device) -> float:
    """Bytes of peak memory the call needs above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child, args=(fn, queue))
    child.start()
    child.join()
    return max(queue.get(), 1)


LM_CRITERIA = [
    ("wanda 50%", ["strategy=wanda"]),
    ("wanda 2:4", ["strategy=wanda", "strategy.pattern=2:4"]),
    ("sparsegpt 50%", ["strategy=sparsegpt"]),
    ("sparsegpt 2:4", ["strategy=sparsegpt", "strategy.pattern=2:4"]),
    ("l1 50% (magnitude)", ["strategy=l1", "strategy.scope=layer"]),
]


def forward_only(model, batches):
    @torch.no_grad()
    def run():
        for x, _ in batches:
            model(x)
    return run


def lm_layers(args) -> None:
    """SparseGPT and Wanda on the two MLP layers of a GPT-2-small block."""
    device = torch.device(args.device)
    per_batch = max(1, args.windows // args.lm_batches)
    print(f"{args.windows} calibration windows of {args.seq_len} tokens "
          f"({args.windows * args.seq_len} tokens) in batches of {per_batch}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'layer':>22s} {'criterion':20s} {'time s':>8s} {'x fwd [95%]':>18s} "
          f"{'peak MiB':>9s} {'x fwd':>6s}")
    rows = []
    for d_in, d_out in ((768, 3072), (3072, 768)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out)).to(device)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(per_batch, args.seq_len, d_in, generator=g).to(device), None)
                   for _ in range(args.windows // per_batch)]
        base_fn = forward_only(model, batches)
        base_t, base_m = timed(base_fn, args.repeats, device), peak_memory(base_fn, device)
        print(f"{f'Linear({d_in}, {d_out})':>22s} {'one forward pass':20s} {base_t:8.2f} "
              f"{'1.00x':>18s} {base_m / 2**20:9.1f} {1:6.1f}", flush=True)
        layer = f"Linear({d_in}, {d_out})"
        rows.append(lm_row(layer, "one forward pass", base_t, "1.00x", base_m, 1))
        for label, overrides in LM_CRITERIA:
            with initialize_config_module("prunebench.conf", version_base="1.3"):
                cfg = compose("config", overrides=overrides + [
                    f"strategy.batches={len(batches)}", "strategy.amount=0.5"]
                    if "l1" not in label else overrides + ["strategy.amount=0.5"])
            fn = pruner(cfg, model, batches, device)
            # the baseline timed in turn with it, under the same load
            runs, local = interleaved(fn, base_fn, args.repeats, device)
            t, x_time = statistics.median(runs), ratio(runs, local)
            m = peak_memory(fn, device)
            print(f"{'':22s} {label:20s} {t:8.2f} {x_time:>18s} {m / 2**20:9.1f} "
                  f"{m / base_m:6.1f}", flush=True)
            rows.append(lm_row(layer, label, t, x_time, m, m / base_m))
    write(args.csv, rows)


def lm_row(layer: str, criterion: str, seconds: float, x_time: str, peak: float,
           x_memory: float) -> dict:
    return {"layer": layer, "criterion": criterion, "time s": f"{seconds:.2f}",
            "time x forward": x_time, "peak MiB": f"{peak / 2**20:.0f}",
            "memory x forward": f"{x_memory:.1f}"}


def lm_offload(args) -> None:
    """SparseGPT on a random Llama checkpoint, whole in memory and from disk, alternating."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    if args.csv == str(DOCS_DATA / "bench_strategies_lm.csv"):
        args.csv = str(DOCS_DATA / "bench_offload.csv")
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as tmp:
        folder, params = llama_checkpoint(Path(tmp) / "llama", args.layers, args.width)
        print(f"Llama, {args.layers} blocks of width {args.width}: {params / 1e6:.0f}M "
              f"parameters, {params * 4 / 2**20:.0f} MiB float32; SparseGPT 50%, "
              f"{args.windows} windows of {args.seq_len} tokens, {args.threads} threads")
        measured = {"whole": [], "offload": []}
        for repeat in range(args.repeats):
            for mode in (("whole", "offload") if repeat % 2 == 0 else ("offload", "whole")):
                child = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(folder),
                     str(Path(tmp) / f"work-{repeat}"), "--windows", str(args.windows),
                     "--seq-len", str(args.seq_len), "--lm-batches", str(args.lm_batches),
                     "--threads", str(args.threads)], capture_output=True, text=True,
                    check=True, env={**os.environ, **ALLOCATOR})
                measured[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(f"  {mode:8s} {measured[mode][-1]}", flush=True)
    rows = []
    for mode in ("whole", "offload"):
        seconds = [m["seconds"] for m in measured[mode]]
        peaks = [m["peak"] for m in measured[mode]]
        rows.append({"model": f"Llama {params / 1e6:.0f}M ({args.layers} x {args.width})",
                     "mode": mode, "time s": f"{statistics.median(seconds):.1f}",
                     "time x whole": ratio(seconds, [m["seconds"] for m in measured["whole"]]),
                     "peak MiB": f"{statistics.median(peaks) / 2**20:.0f}",
                     "memory x whole": ratio(peaks, [m["peak"] for m in measured["whole"]])})
        print(rows[-1])
    write(args.csv, rows)


# glibc serves allocations under its (self-raising) mmap threshold from heaps that keep freed
# memory: a block's tensors, freed, would stay counted; both modes run with large allocations
# mapped and unmapped (MALLOC_MMAP_THRESHOLD_, which also stops the threshold's raising)
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def llama_checkpoint(folder: Path, layers: int, width: int) -> tuple[Path, int]:
    """A random Llama (GQA, 4 query heads per key-value head) written straight to safetensors."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    config = transformers.AutoConfig.for_model(
        "llama", vocab_size=32000, hidden_size=width, intermediate_size=width * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=width // 64,
        num_key_value_heads=width // 256, max_position_embeddings=2048,
        tie_word_embeddings=False)
    with init_empty_weights():
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(0)
    state = {n: (torch.ones(p.shape) if "norm" in n else torch.randn(p.shape, generator=g) * 0.02)
             for n, p in skeleton.state_dict().items()}
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors")
    return folder, sum(v.numel() for v in state.values())


def offload_child(args) -> None:
    """One measured run (a fresh process): prints {"seconds", "peak"} as JSON."""
    import json

    import transformers

    from prunebench.strategies import calibration, offload, sparsegpt

    mode, folder, work = args.child
    g = torch.Generator().manual_seed(1)
    per_batch = max(1, args.windows // args.lm_batches)
    batches = [(torch.randint(32000, (per_batch, args.seq_len), generator=g), None)
               for _ in range(args.windows // per_batch)]
    warm_up(folder)  # the libraries' one-time allocations, before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts here: the warm-up's own peak is not counted
    base = rss_bytes()
    start = time.perf_counter()
    if mode == "whole":
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        model.config.use_cache = False
        store = None
    else:
        model, store = offload.open_checkpoint(Path(folder), Path(work), torch.device("cpu"))
    weights = {n: p for n, p in model.named_parameters()
               if ".layers." in n and p.dim() == 2}
    new = {n: torch.ones((), dtype=torch.bool).expand(p.shape) for n, p in weights.items()}
    sums: dict = {}

    def begin(group):
        sums.clear()
        return lambda n, x: sums.__setitem__(n, (sums.get(n, (0, 0))[0] + x.T @ x,
                                                 sums.get(n, (0, 0))[1] + len(x)))

    def prune_group(group):
        for n in group:
            gram, count = sums.pop(n)
            w, keep = sparsegpt.prune_layer(weights[n], 2 * gram / count, new[n], 0.5, "layer",
                                            None, 128, 0.01, n)
            weights[n].copy_(w)
            new[n] = keep

    with torch.no_grad():
        if store is None:
            calibration.sequential(model, weights, batches, begin, prune_group)
        else:
            offload.sequential(model, weights, batches, store, begin, prune_group, new)
    seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith("VmHWM:")) - base
    print(json.dumps({"seconds": seconds, "peak": peak}))


def warm_up(folder: str) -> None:
    """A 1-block copy of the checkpoint's config built and run once."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    config.num_hidden_layers, config.vocab_size = 1, 64
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), use_cache=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated labels to run")
    parser.add_argument("--lm", action="store_true", help="the LM criteria on GPT-2 MLP layers")
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_strategies_lm.csv"),
                        help="--lm: where its table goes (the docs include it)")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lm-batches", type=int, default=8)
    parser.add_argument("--offload", action="store_true",
                        help="--lm: SparseGPT on a Llama with and without model.offload")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # MODE FOLDER WORK
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return offload_child(args)
    if args.lm and args.offload:
        return lm_offload(args)
    if args.lm:
        return lm_layers(args)
    model, batches, device = setup(args)
    base_fn = forward_backward(model, batches, device)
    base_t, base_m = timed(base_fn, args.repeats, device), peak_memory(base_fn, device)
    print(f"{args.model} on {args.dataset}, {len(batches)} batches of {args.batch_size}, "
          f"{device}: forward+backward {base_t * 1e3:.2f} ms, peak {base_m / 2**20:.1f} MiB")
    print(f"{'strategy':32s} {'time':>10s} {'memory':>8s}   (x forward+backward)")
    only = set(filter(None, args.only.split(",")))
    for label, cfg in strategy_configs(args, len(batches)):
        if only and label not in only:
            continue
        fn = pruner(cfg, model, batches, device)
        t = timed(fn, args.repeats, device)
        local = timed(base_fn, args.repeats, device)  # the baseline again, under today's load
        m = peak_memory(fn, device)
        print(f"{label:32s} {t / local:10.1f} {m / base_m:8.1f}", flush=True)

    hvp_t = timed(hvp_once(model, batches, device), args.repeats, device)
    base_t = timed(base_fn, args.repeats, device)
    print(f"\none Hessian-vector product over the batches: {hvp_t / base_t:.2f} x "
          "forward+backward")
    print(f"{'probes P':>8s} {'hutchinson / HVP':>17s} {'per probe / HVP':>16s}")
    for probes in (1, 2, 4, 8, 16):
        with initialize_config_module("prunebench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[
                "strategy=hessian", "strategy.estimator=hutchinson",
                f"strategy.probes={probes}", f"strategy.batches={len(batches)}"])
        t = timed(pruner(cfg, model, batches, device), args.repeats, device)
        hvp_t = timed(hvp_once(model, batches, device), args.repeats, device)
        print(f"{probes:8d} {t / hvp_t:17.2f} {t / hvp_t / probes:16.2f}", flush=True)


if __name__ == "__main__":
    main()
