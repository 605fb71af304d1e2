"""Peak memory of one step (the pruning step), measured the way the device allows.

- CUDA: torch.cuda.max_memory_allocated after a reset: the exact peak of tensor memory the
  caching allocator handed out during the step, minus what was allocated before it.
- CPU: a background thread samples the process's resident set size (/proc/self/statm) every
  2 ms and reports the highest value minus the value at the start. This is the growth of the
  whole process (tensors, Python objects, freed-but-kept allocator pages), and a peak shorter
  than the sampling interval can be missed; it is an estimate, not an allocator count.
  (tracemalloc cannot see torch's allocations; ru_maxrss only moves when the process beats its
  lifetime high, which dense training has usually set already.)
"""

from __future__ import annotations

import os
import resource
import threading
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def peak(device: torch.device, interval: float = 0.002):
    """Yields a dict filled on exit with {"peak_mb", "method"}."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        grown = torch.cuda.max_memory_allocated(device) - start
        result |= {"peak_mb": grown / 2**20, "method": "torch.cuda.max_memory_allocated"}
        return
    start = _rss()
    if start is None:  # no /proc: the coarse lifetime high-water mark is all there is
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        yield result
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result |= {"peak_mb": (after - before) / 1024, "method": "ru_maxrss delta"}
        return
    highest, done = [start], threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            highest[0] = max(highest[0], _rss() or 0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        highest[0] = max(highest[0], _rss() or 0)
        done.set()
        thread.join()
        result |= {"peak_mb": (highest[0] - start) / 2**20,
                   "method": f"process RSS growth sampled every {interval * 1e3:g} ms"}
