"""Where a pruned GPT's forward time goes: its prunable Linear layers against everything else.

Builds prunebench's GPT (model=gpt) at the given width, zeroes the smallest `--sparsity` of
every block Linear layer's weights (magnitude, per layer), makes its sparse form with
`inference.kernel=auto`'s per-layer choice (pruning/sparse.py), and times, at one thread:
the whole forward of the dense model and of the sparse form; inside each, the prunable layers'
share (forward hooks around every layer call; the rest is attention, GELU, LayerNorm, the
head); and the same CSR products alone, on inputs already in the (features x tokens) layout
MKL's product takes, without the layout copies the sparse form pays. From these, the ceiling of any
layout work: dense / (everything else + the kernels alone). Medians of --repeats rounds, the
forms timed in turn; dense / sparse form is the ratio of medians with a 95% bootstrap interval
over the rounds. The table goes to --csv (default docs/performance/data/bench_sparse_model.csv,
which the "Inference and sparse kernels" page includes), with its provenance beside it
(scripts/benchtable.py), rows for each width.

    python scripts/bench_sparse_model.py                         # the default GPT (n_embd 128)
    python scripts/bench_sparse_model.py --n-embd 128,768 --n-head 4,12   # and GPT-2-small's
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from benchtable import DOCS_DATA, ratio, write
from torch import nn

from prunebench.models.gpt import GPT
from prunebench.pruning import sparse


def pruned_gpt(args) -> GPT:
    torch.manual_seed(0)
    model = GPT((args.seq_len,), 256, n_embd=args.n_embd, n_layer=args.n_layer,
                n_head=args.n_head).eval()
    with torch.no_grad():
        for layer in model.blocks.modules():
            if isinstance(layer, nn.Linear):
                w = layer.weight
                w.mul_(w.abs() > w.abs().flatten().kthvalue(int(w.numel() * args.sparsity))[0])
    return model


def timed_forward(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> tuple:
    """(whole forward s, the `layers`' calls' share s) of one forward pass."""
    spent, hooks = [0.0], []
    for layer in layers:
        hooks.append(layer.register_forward_pre_hook(
            lambda *_: spent.append(-time.perf_counter())))
        hooks.append(layer.register_forward_hook(
            lambda *_: spent.__setitem__(0, spent[0] + spent.pop() + time.perf_counter())))
    try:
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start, spent[0]
    finally:
        for hook in hooks:
            hook.remove()


def products_alone(layers: dict, inputs: dict) -> float:
    """The layers' kernels alone, s: the sparse form's CSR products (ROW_CHUNK rows each)
    on chunks already transposed, no copy in or out; the dense kernel of a layer `auto` kept
    dense."""
    total = 0.0
    for name, layer in layers.items():
        x = inputs[name]
        if layer.use_csr:
            rows = x.reshape(-1, x.shape[-1])
            chunks = [c.t().contiguous() for c in rows.split(sparse.ROW_CHUNK)]
            run = lambda layer=layer, chunks=chunks: [layer.product(c) for c in chunks]  # noqa
        else:
            run = lambda layer=layer, x=x: layer.dense(x)  # noqa: E731
        run()
        start = time.perf_counter()
        run()
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-embd", default="128", help="widths, comma-separated: rows each")
    parser.add_argument("--n-head", default="4", help="heads of each width, comma-separated")
    for flag, default in (("--n-layer", 4), ("--seq-len", 128), ("--batch", 64),
                          ("--repeats", 5)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_sparse_model.csv"))
    args = parser.parse_args()
    widths = [(int(e), int(h)) for e, h in zip(args.n_embd.split(","), args.n_head.split(","),
                                               strict=False)]
    if len(widths) != len(args.n_embd.split(",")):
        parser.error("--n-head: one head count for every --n-embd width")
    if not 0 < args.sparsity < 1:
        parser.error(f"--sparsity {args.sparsity}: between 0 and 1, both excluded")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)  # CSR "beta" notice
    rows = []
    for n_embd, n_head in widths:
        rows += width_rows(replace_width(args, n_embd, n_head))
    write(args.csv, rows)


def replace_width(args, n_embd: int, n_head: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "n_embd": n_embd, "n_head": n_head})


@torch.no_grad()
def width_rows(args) -> list[dict]:
    """The table's rows for one width: the forms timed in turn --repeats times, medians."""
    dense = pruned_gpt(args)
    form, layers = sparse.sparse_form(dense)
    x = torch.randint(0, 256, (args.batch, args.seq_len))
    inputs = sparse.layer_inputs(form, layers, x)
    sparse.choose(layers, inputs, "auto", 1)
    linears = [dense.get_submodule(name) for name in layers]
    runs = {k: [] for k in ("dense", "dense_linear", "form", "form_linear", "alone")}
    for _ in range(args.repeats):
        for key, model, parts in (("dense", dense, linears),
                                  ("form", form, list(layers.values()))):
            model(x)  # warm
            whole, share = timed_forward(model, parts, x)
            runs[key].append(whole)
            runs[f"{key}_linear"].append(share)
        runs["alone"].append(products_alone(layers, inputs))
    runs["dense_rest"] = [a - b for a, b in zip(runs["dense"], runs["dense_linear"], strict=True)]
    runs["form_rest"] = [a - b for a, b in zip(runs["form"], runs["form_linear"], strict=True)]
    ms = {k: statistics.median(v) * 1e3 for k, v in runs.items()}
    on_csr = sum(layer.use_csr for layer in layers.values())
    # what the layers leave: the same ops in both forms; the smaller measurement bounds best
    rest = min(ms["dense_rest"], ms["form_rest"])
    print(f"GPT n_embd {args.n_embd}, {args.n_layer} blocks, batch {args.batch} x "
          f"{args.seq_len} tokens, {args.sparsity:.0%} per layer, one thread; "
          f"{on_csr} of {len(layers)} layers on CSR (auto)\n")
    parts = (("linear", f"{len(layers)} prunable Linear layers ({on_csr} on CSR)"),
             ("rest", "everything else (attention, GELU, LayerNorm, head)"), ("", "forward"))
    rows = []
    for key, part in parts:
        d, f = f"dense_{key}".rstrip("_"), f"form_{key}".rstrip("_")
        rows.append({"n_embd": args.n_embd, "part": part, "dense ms": f"{ms[d]:.1f}",
                     "sparse form ms": f"{ms[f]:.1f}",
                     "CSR kernels alone ms": f"{ms['alone']:.1f}" if key == "linear" else "",
                     "dense / sparse form": ratio(runs[d], runs[f])})
    rows.append({"n_embd": args.n_embd, "part": "ceiling: layout copies free", "dense ms": "",
                 "sparse form ms": f"{rest + ms['alone']:.1f}", "CSR kernels alone ms": "",
                 "dense / sparse form": f"{ms['dense'] / (rest + ms['alone']):.2f}x"})
    rows.append({"n_embd": args.n_embd, "part": "ceiling: Linear layers free", "dense ms": "",
                 "sparse form ms": f"{rest:.1f}", "CSR kernels alone ms": "",
                 "dense / sparse form": f"{ms['dense'] / rest:.2f}x"})
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    return rows


if __name__ == "__main__":
    main()
