"""Does torch's block-sparse int8 Linear (torch.ao.nn.sparse.quantized.dynamic.Linear) beat the
dense dynamic-int8 one on this CPU? A transformer MLP's layers, pruned.

For each weight shape (768->3072 and 3072->768, the GPT-2-small MLP that +experiment=gpt768_text
prunes) and each mask (unstructured at 90% and 95%, the masks prunebench's criteria make, and
1x4 blocks at 90%, the pattern the kernel packs), batch 1 and 64, one thread: the fp32 Linear
(`dense`), torch's dynamic-int8 Linear (`int8`, torch.ao quantize_dynamic, the latency block's
int8 form; packed by the default engine, x86, and by QNNPACK) and the block-sparse dynamic-int8
Linear (`int8_block_sparse`, its QNNPACK kernel, 1x4 blocks: a block is stored when any of its
4 weights is nonzero). The forms are timed
interleaved with prunebench's own clock and rounds (pruning/sparse.interleaved: thread CPU time
at one thread), each ratio is dense median / form median with a 95% bootstrap interval over
the paired rounds (pruning/latency.paired_speedup), and `max diff` is the largest |form - fp32|
output. Prints a markdown table.

    python scripts/bench_int8_sparse.py              # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from prunebench.pruning import latency, sparse

SHAPES = ((768, 3072), (3072, 768))  # (in, out)
MASKS = (("unstructured", 0.9), ("unstructured", 0.95), ("1x4 blocks", 0.9))
BATCHES = (1, 64)
INT8 = ("int8", "int8_qnnpack", "int8_block_sparse")
DEFAULT_ENGINE = torch.backends.quantized.engine  # x86 (fbgemm) on this machine
BLOCK = 4  # QNNPACK's block-sparse kernel packs 1x4 blocks (LinearBlockSparsePattern)


def pruned_linear(n_in: int, n_out: int, pattern: str, sparsity: float,
                  generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    if pattern == "unstructured":
        keep = torch.rand(n_out, n_in, generator=generator) >= sparsity
    else:  # whole 1x4 blocks of a row
        keep = (torch.rand(n_out, n_in // BLOCK, generator=generator) >= sparsity)
        keep = keep.repeat_interleave(BLOCK, dim=1)
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer.eval()


def int8_forms(layer: nn.Linear) -> dict[str, tuple[str, nn.Module]]:
    """{form: (engine, module)}: the dynamic-int8 Linear packed by the default engine (x86 /
    fbgemm) and by QNNPACK, and the block-sparse one (QNNPACK: the only engine with the sparse
    kernel). A packed weight runs under the engine that packed it."""
    from torch.ao.nn.sparse.quantized.dynamic import Linear as BlockSparseLinear
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    forms = {}
    for form, engine in (("int8", DEFAULT_ENGINE),
                         ("int8_qnnpack", "qnnpack"), ("int8_block_sparse", "qnnpack")):
        with warnings.catch_warnings(), quantized_engine(engine):
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
            if form == "int8_block_sparse":
                layer.qconfig = default_dynamic_qconfig
                forms[form] = engine, BlockSparseLinear.from_float(layer)
                del layer.qconfig
            else:
                forms[form] = engine, quantize_dynamic(nn.Sequential(layer), {nn.Linear},
                                                       dtype=torch.qint8)
    return forms


@contextmanager
def quantized_engine(name: str):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def call(engine: str | None, module: nn.Module, x: torch.Tensor):
    """module(x) under `engine` (every form pays the same engine switch)."""
    def run():
        torch.backends.quantized.engine = engine
        return module(x)
    return run


@torch.no_grad()
def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print("| layer | mask | sparsity | batch | dense fp32 µs | int8 (x86) x | int8 (qnnpack) x "
          "| int8 block-sparse (qnnpack) x | max diff of each |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n_in, n_out in SHAPES:
        for pattern, sparsity in MASKS:
            layer = pruned_linear(n_in, n_out, pattern, sparsity, generator)
            forms = {"dense": (DEFAULT_ENGINE, layer), **int8_forms(layer)}
            for batch in BATCHES:
                x = torch.randn(batch, n_in, generator=generator)
                fns = {form: call(engine, m, x) for form, (engine, m) in forms.items()}
                rounds = sparse.interleaved(fns, 1, latency.BLOCK_S, 1.0, (11, 41))
                cells = []
                for form in INT8:
                    s = latency.paired_speedup(rounds, form)
                    cells.append(f"{s['ratio']:.2f} [{s['low']:.2f}, {s['high']:.2f}]")
                diffs = " / ".join(f"{float((fns[f]() - layer(x)).abs().max()):.3f}"
                                   for f in INT8)
                torch.backends.quantized.engine = DEFAULT_ENGINE
                print(f"| {n_in}->{n_out} | {pattern} | {sparsity:.0%} | {batch} | "
                      f"{np.median(rounds['dense']) * 1e3:.0f} | {' | '.join(cells)} | "
                      f"{diffs} |", flush=True)


if __name__ == "__main__":
    main()
