"""Data bigger than memory: an image folder's cache is a memory-mapped file, so training an
epoch from it grows the process's own memory by about a batch, not by the cache's size."""

from __future__ import annotations

import json
import subprocess
import sys

from datafiles import write_image_folder

# Train one epoch from the cache in a fresh process; report the growth of its anonymous
# resident memory (RssAnon: what the process itself holds; the mapped file's pages are page
# cache, RssFile, which the kernel drops under pressure) sampled every millisecond. Batches of
# 8: the growth scales with the batch (measured 0.1 to 3 MB; 11 to 39 MB at batch 32, the
# allocator keeping freed batches), not with the 83 MB file.
EPOCH = """
import json, sys, threading, time
import torch
from torch import nn
from prunebench.data.image_folder import load
from prunebench.training.loop import FitSettings, fit

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")]

torch.set_num_threads(1)
data = load(sys.argv[1], image_size=96, root=sys.argv[2], val_fraction=0.1, workers=2)
model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 96 * 96, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model(torch.zeros(8, 3, 96, 96)).sum().backward()  # autograd's own first allocations
base = status()
peak, done = list(base), False
def sample():
    while not done:
        peak[:] = [max(p, s) for p, s in zip(peak, status())]
        time.sleep(0.001)
thread = threading.Thread(target=sample)
thread.start()
order = torch.Generator().manual_seed(1)
history = fit(model, data, optimizer, None, FitSettings(1, 8), order, "t")
done = True
thread.join()
print(json.dumps({"anon": peak[0] - base[0], "file": peak[1] - base[1],
                  "loss": history[0]["loss"], "rows": len(data.train)}))
"""


def test_epoch_from_mapped_cache_grows_memory_by_far_less_than_the_cache(tmp_path):
    write_image_folder(tmp_path / "big", n_train=1000, n_test=10)  # 3000 training images
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", EPOCH, str(tmp_path / "big"), str(cache)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grown = json.loads(proc.stdout.strip().splitlines()[-1])
    [folder] = cache.glob("image_folder-big-*-uint8")
    size = (folder / "train_x.u8").stat().st_size
    assert size == 3000 * 3 * 96 * 96  # 83 MB of decoded images
    assert grown["rows"] == 2700  # 10% carved off for validation, by rows: nothing copied
    # the process's own memory grew by far less than the data it trained on ...
    assert grown["anon"] < size / 4, (grown, size)  # measured: 0.1 to 11 MB (a loaded machine)
    assert 0 < grown["loss"] < 1.2  # it learned something from what it read (3 classes)
