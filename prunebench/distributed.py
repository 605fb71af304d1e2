"""One run on several processes: torch.distributed under torchrun or Slurm (submitit).

Every rank holds the whole dataset and runs the whole pipeline; what differs is that training
steps shard each global batch over the ranks (DistributedDataParallel averages the gradients),
evaluation shards the split and sums exact counts, and only rank 0 writes files and logs.
Pruning decisions are made on every rank alike and then rank 0's masks and weights are
broadcast (`agree_on_model`), so every rank holds the same masks bit for bit; a checksum
all-reduce (`check_same`) stops a run whose ranks drifted apart.

The process group is one group with gloo for CPU tensors and NCCL for CUDA tensors; its
collective timeout (PRUNEBENCH_TIMEOUT_S, default 600 s) bounds how long a rank waits for a
peer that hangs. A peer that dies closes its connections and the others fail at once.
Nothing here is imported by a single-process run's hot path beyond the `active()` checks.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from prunebench.ranks import launched

TIMEOUT_ENV = "PRUNEBENCH_TIMEOUT_S"
_run_id: str | None = None  # rank 0's id of this launch, the same on every rank


class RankMismatch(RuntimeError):
    """The ranks' masks or weights differ: the run cannot continue as one run."""


def init() -> None:
    """Join the process group when launched as several ranks (idempotent; no-op alone).

    Under Slurm (hydra/launcher=submitit_slurm with tasks_per_node or nodes > 1) submitit's
    TorchDistributedEnvironment exports MASTER_ADDR, RANK, WORLD_SIZE and LOCAL_RANK first.
    """
    global _run_id
    if not launched() or dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:  # not torchrun: a task of a submitit job
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    _run_id = broadcast_object(uuid.uuid4().hex)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group is up (a group of one under `torchrun --nproc-per-node=1` included:
    the DDP path, with nothing to share)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def run_id() -> str | None:
    return _run_id


def is_lost_peer(err: BaseException) -> bool:
    """An error of a collective whose peer failed or timed out (not this rank's own)."""
    return isinstance(err, dist.DistError) or "Connection closed by peer" in str(err)


def peer_reported(out_dir) -> bool:
    """Whether another rank of this launch wrote its failure into results.json."""
    import json
    from pathlib import Path

    try:
        written = json.loads((Path(out_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return written.get("launch") == _run_id and written.get("rank", rank()) != rank()


def failure_line(err: BaseException, out_dir) -> str | int:
    """What a rank says when the run failed: one line from the rank whose error it was (or
    from rank 0 when a peer died without a word), nothing (exit status 1) from the others."""
    if isinstance(err, RankMismatch):  # every rank found it: rank 0 says so
        if not is_main():
            return 1
        what = "RankMismatch"
    elif is_lost_peer(err):
        if not is_main() or peer_reported(out_dir):
            return 1
        what = "lost another rank"
    else:
        what = type(err).__name__
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"prunebench: error: rank {rank()}: {what}: {first}"


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU (LOCAL_RANK) when the run is on CUDA."""
    if device.type == "cuda" and active() and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place (exact for integer counts)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def any_(flag: bool) -> bool:
    """True on every rank when it is true on any rank."""
    if not active():
        return flag
    return bool(sum_(torch.tensor([int(flag)])).item())


def max_int(value: int) -> int:
    """The largest `value` over the ranks."""
    if not active():
        return value
    box = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (parts differ in size by at most one)."""
    return indices.tensor_split(world())[rank()] if active() else indices


def agree_on_model(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (masks live in the weights' zeros and
    in the Masks object, which the caller broadcasts with `broadcast_tensors`)."""
    if active():
        broadcast_tensors(list(model.state_dict().values()))


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values into every rank's `tensors`, in place."""
    if active():
        for t in tensors:
            t = t.data if isinstance(t, nn.Parameter) else t
            dist.broadcast(t.view(torch.uint8) if t.dtype == torch.bool else t, src=0)


def checksum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Two numbers that change when any element does: the float64 sum, and the sum weighted
    by position (so a moved zero counts)."""
    total = torch.zeros(2, dtype=torch.float64)
    for t in tensors:
        flat = t.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        total += torch.stack([flat.sum(), (flat * weights.reciprocal()).sum()]).cpu()
    return total


def check_same(tensors: list[torch.Tensor], what: str) -> None:
    """Raise RankMismatch unless every rank holds the same `tensors` (one small all-reduce of
    the checksum's maximum and minimum)."""
    if not active():
        return
    local = checksum(tensors)
    both = torch.cat([local, -local])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if not torch.equal(both[:2], -both[2:]):
        raise RankMismatch(f"the ranks' {what} differ (checksums "
                           f"{local.tolist()} on rank {rank()}): the run stopped")


@contextmanager
def main_only_logging() -> Iterator[None]:
    """Ranks other than 0 log errors only (rank 0 speaks for the run)."""
    import logging

    root = logging.getLogger()
    level = root.level
    if not is_main():
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
