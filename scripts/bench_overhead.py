"""Cost of holding masks during training: a masked step vs a dense step, in one process.

LeNet-300-100, batch 128, SGD with momentum. Three variants of the same training step run
interleaved (so machine load hits them alike) and the median per-step time of each is
compared with the dense step (ratio of medians with a 95% bootstrap interval over the rounds):
  dense        plain step
  prunebench   prunebench.pruning.masks.Masks as train.fit holds them: masked gradients (one fused
               foreach op); weights re-zeroed after the step only for optimizers that need it
  torch.prune  torch.nn.utils.prune's forward pre-hooks (weight = weight_orig * mask)

    python scripts/bench_overhead.py [--rounds 15] [--steps 50] [--amount 0.9]

The table also goes to --csv (default docs/performance/data/bench_overhead.csv, which the
documentation's "Training speed" page includes), with its provenance beside it
(scripts/benchtable.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from benchtable import DOCS_DATA, ratio, write
from torch import nn
from torch.nn.utils import prune

from prunebench.models.mlp import MLP
from prunebench.pruning.masks import Masks


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = MLP((1, 28, 28), 10, hidden=(300, 100))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def random_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {n: (torch.rand(w.shape, generator=g) >= amount).float()
            for n, w in Masks(model).weights.items()}


def stepper(model, optimizer, x, y, masks: Masks | None = None):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if masks is not None:
            masks.mask_grads()
        optimizer.step()
        if masks is not None:
            masks.after_step(optimizer)  # what train.fit does
    return step


def build_variants(amount: float, x, y) -> dict:
    dense, dense_opt = make()

    ours, ours_opt = make()
    masks = Masks(ours)
    masks.update(random_masks(ours, amount))
    masks.apply()

    hooked, _ = make()
    linears = [m for m in hooked.modules() if isinstance(m, nn.Linear)]
    for module, mask in zip(linears, random_masks(hooked, amount).values(), strict=False):
        prune.custom_from_mask(module, "weight", mask)
    # rebuilt after pruning: the hooks replace `weight` with the parameter `weight_orig`
    hooked_opt = torch.optim.SGD(hooked.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    return {"dense": stepper(dense, dense_opt, x, y),
            "prunebench": stepper(ours, ours_opt, x, y, masks),
            "torch.prune": stepper(hooked, hooked_opt, x, y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--amount", type=float, default=0.9)
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_overhead.csv"))
    args = parser.parse_args()

    x, y = torch.randn(128, 1, 28, 28), torch.randint(10, (128,))
    variants = build_variants(args.amount, x, y)
    for step in variants.values():  # warm up allocator and kernels
        for _ in range(20):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)

    print(f"LeNet-300-100, batch 128, SGD momentum, {args.amount:.0%} sparse masks, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<12} {'median ms/step':>15} {'ratio to dense [95% interval]':>30}")
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        text = ratio(values, times["dense"])
        print(f"{name:<12} {median * 1e3:>15.3f} {text:>30}")
        rows.append({"variant": name, "median ms/step": f"{median * 1e3:.3f}",
                     "ratio to dense [95% interval]": text})
    write(args.csv, rows)


if __name__ == "__main__":
    main()
