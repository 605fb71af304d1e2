"""Epoch time of one process against two DDP ranks (gloo, CPU) on this machine, as a ratio.

Every arm trains the same model one epoch through train.fit at the same global batch: one
process with all the cores as torch threads, one process with cores // 2 threads, and two
ranks with cores // 2 threads each (what `torchrun --nproc-per-node=2 -m prunebench` gives
each rank). Arms alternate, --repeats times, so load from other users hits them alike; each
ratio is of the medians, with the range of the per-repeat ratios.

What limits the gain on a CPU machine: the two ranks share the same cores and memory bandwidth
that one process would use with more threads; each step adds a gradient all-reduce (gloo over
loopback, ~1 ms per MB) and a stop-flag all-reduce; and small models are bound by per-step
Python overhead, which does not shrink with the batch share. On GPUs each rank has its own
device and NCCL links, which is where DDP pays off (scripts/check_cuda.sh runs that path).

    python scripts/bench_distributed.py [--model resnet20|lenet300] [--repeats 3]

The table also goes to --csv (default docs/performance/data/bench_distributed.csv, which the
documentation's "Scaling out" page includes).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunebench.data import synthetic
from prunebench.models.mlp import MLP
from prunebench.models.resnet import CifarResNet
from prunebench.runstate import files
from prunebench.training.loop import FitSettings, fit


def data_and_model(name: str):
    data = synthetic.load(name="synthetic", train_size=4096, test_size=64, channels=3,
                          image_size=32, num_classes=10)
    torch.manual_seed(0)
    if name == "resnet20":
        return data, CifarResNet(data.input_shape, 10, depth=20)
    return data, MLP(data.input_shape, 10, (300, 100))


def epoch(model_name: str, batch: int) -> float:
    data, model = data_and_model(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    fit(model, data, optimizer, None, FitSettings(epochs=1, batch_size=batch),
        torch.Generator().manual_seed(0), "bench")
    if dist.is_initialized():
        dist.barrier()
    return time.perf_counter() - start


def rank_main(rank: int, world: int, port: int, threads: int, model: str, batch: int,
              out) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    seconds = epoch(model, batch)
    if rank == 0:
        out.put(seconds)
    dist.destroy_process_group()


def two_ranks(threads: int, model: str, batch: int) -> float:
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(rank_main, args=(2, port, threads, model, batch, out), nprocs=2,
                       start_method="spawn")
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "lenet300"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default=str(Path(__file__).resolve().parents[1] / "docs" /
                                             "performance" / "data" / "bench_distributed.csv"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{args.model}, 4096 synthetic 32x32 images, global batch {args.batch}, {cores} cores")
    half = max(1, cores // 2)
    arms = {f"1 rank x {cores} threads": lambda: one_rank(cores, args.model, args.batch),
            f"1 rank x {half} threads": lambda: one_rank(half, args.model, args.batch),
            f"2 ranks x {half} threads": lambda: two_ranks(half, args.model, args.batch)}
    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, arm in arms.items():
            times[name].append(arm())
        print("  " + "   ".join(f"{name} {t[-1]:6.2f} s" for name, t in times.items()))
    two_median = statistics.median(times[list(times)[-1]])
    files.write_csv(args.csv, [
        {"model": args.model, "arm": name, "epoch s per repeat": ", ".join(f"{s:.1f}" for s in t),
         "median s": f"{statistics.median(t):.1f}",
         "median / 2 ranks": f"{statistics.median(t) / two_median:.2f}x"}
        for name, t in times.items()])
    *ones, two = times.values()
    for name, one in zip(list(times)[:2], ones, strict=True):
        ratios = sorted(a / b for a, b in zip(one, two, strict=True))
        print(f"epoch time ({name}) / (2 ranks) = "
              f"{statistics.median(one) / statistics.median(two):.2f}x (per repeat "
              f"{ratios[0]:.2f} to {ratios[-1]:.2f}); > 1: two ranks are faster")


def one_rank(threads: int, model: str, batch: int) -> float:
    torch.set_num_threads(threads)
    return epoch(model, batch)

if __name__ == "__main__":
    main()
