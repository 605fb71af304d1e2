"""Epoch time of one process against two DDP ranks (gloo, CPU) on this machine, as a ratio.

Every arm trains the same model one epoch through train.fit at the same global batch: one
process with all the cores as torch threads, one process with cores // 2 threads, and two
ranks with cores // 2 threads each (what `torchrun --nproc-per-node=2 -m prunebench` gives
each rank). Arms alternate, --repeats times, so load from other users hits them alike; each
ratio is of the medians, with a 95% bootstrap interval over the repeats.

What limits the gain on a CPU machine: the two ranks share the same cores and memory bandwidth
that one process would use with more threads; each step adds a gradient all-reduce (gloo over
loopback, ~1 ms per MB) and a stop-flag all-reduce; and small models are bound by per-step
Python overhead, which does not shrink with the batch share. On GPUs each rank has its own
device and NCCL links, which is where DDP pays off (scripts/check_cuda.sh runs that path).

    python scripts/bench_distributed.py [--model resnet20|lenet300] [--repeats 3]

The table also goes to --csv (default docs/performance/data/bench_distributed.csv, which the
documentation's "Scaling out" page includes), with its provenance beside it
(scripts/benchtable.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from benchtable import DOCS_DATA, ratio, write

from prunebench.data import synthetic
from prunebench.models.mlp import MLP
from prunebench.models.resnet import CifarResNet
from prunebench.training.loop import FitSettings, fit


def data_and_model(name: str, images: int):
    data = synthetic.load(name="synthetic", train_size=images, test_size=64, channels=3,
                          image_size=32, num_classes=10)
    torch.manual_seed(0)
    if name == "resnet20":
        return data, CifarResNet(data.input_shape, 10, depth=20)
    return data, MLP(data.input_shape, 10, (300, 100))


def epoch(model_name: str, batch: int, images: int) -> float:
    data, model = data_and_model(model_name, images)
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
              images: int, out) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    seconds = epoch(model, batch, images)
    if rank == 0:
        out.put(seconds)
    dist.destroy_process_group()


def two_ranks(threads: int, model: str, batch: int, images: int) -> float:
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(rank_main, args=(2, port, threads, model, batch, images, out), nprocs=2,
                       start_method="spawn")
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "lenet300"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_distributed.csv"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{args.model}, {args.images} synthetic 32x32 images, global batch {args.batch}, "
          f"{cores} cores")
    half = max(1, cores // 2)
    job = (args.model, args.batch, args.images)
    arms = {f"1 rank x {cores} threads": lambda: one_rank(cores, *job),
            f"1 rank x {half} threads": lambda: one_rank(half, *job),
            f"2 ranks x {half} threads": lambda: two_ranks(half, *job)}
    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, arm in arms.items():
            times[name].append(arm())
        print("  " + "   ".join(f"{name} {t[-1]:6.2f} s" for name, t in times.items()))
    two = times[list(times)[-1]]
    rows = [{"model": args.model, "images": args.images, "arm": name,
             "epoch s per repeat": ", ".join(f"{s:.2f}" for s in t),
             "median s": f"{statistics.median(t):.2f}", "median / 2 ranks": ratio(t, two)}
            for name, t in times.items()]
    for row in rows[:-1]:
        print(f"epoch time ({row['arm']}) / (2 ranks) = {row['median / 2 ranks']}; "
              "> 1: two ranks are faster")
    write(args.csv, rows)


def one_rank(threads: int, model: str, batch: int, images: int) -> float:
    torch.set_num_threads(threads)
    return epoch(model, batch, images)


if __name__ == "__main__":
    main()
