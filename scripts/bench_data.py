"""One epoch of LeNet-300-100 on Fashion-MNIST four ways, in one process, as ratios:

  prunebench   train.fit over the uint8 in-memory dataset (normalized per batch), with the
               optimizer prunebench builds from conf/optimizer/sgd.yaml
  loop only    the same, with (a)'s plain SGD: the loop's own cost
  (a) minimal  a hand-written loop over float tensors prepared in memory beforehand
  (b) textbook torchvision FashionMNIST + ToTensor/Normalize + DataLoader(batch_size=64)

Goals: prunebench within 1.15x of (a), at least 8x faster than (b). Then training throughput
(images/s) of LeNet-5 and ResNet-20 through train.fit. The arms run interleaved, --repeats
times, so other load on the machine hits them alike.

    python scripts/bench_data.py [--source-dir /usr/share/datasets/fashion-mnist]

`--image-folder`: instead, the image-folder case. A Fashion-MNIST slice written as PNGs
(scripts/fashion_mnist_folder.py), read at 64x64 RGB: prunebench's decode rate (images/s,
dataset.workers=2, into the memory-mapped cache), then one epoch of an MLP from the mapped
cache against torchvision's ImageFolder + DataLoader(num_workers=2) on the same folder, and
the growth of the training process's own memory (peak RssAnon) against the cache's size.

One row per torch thread count (--threads) goes to --csv (default
docs/performance/data/bench_data.csv, which the documentation's "Training speed" page
includes), with its provenance beside it (scripts/benchtable.py): medians of the interleaved
repeats, ratios of medians with a 95% bootstrap interval over the repeats.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from benchtable import DOCS_DATA, ratio, write
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from prunebench import build
from prunebench.data import Split, vision
from prunebench.models.lenet5 import LeNet5
from prunebench.models.mlp import MLP
from prunebench.models.resnet import CifarResNet
from prunebench.training.loop import FitSettings, fit

BATCH = 64
CONF = Path(__file__).resolve().parent.parent / "conf"


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


def lenet300(data):
    torch.manual_seed(0)
    return MLP(data.input_shape, data.num_classes, (300, 100))


def prunebench_sgd(model):
    """The optimizer `prunebench optimizer=sgd` builds (conf/optimizer/sgd.yaml, same
    hyper-parameters as sgd() above; fused where torch offers it)."""
    config = OmegaConf.create({"optimizer": OmegaConf.load(CONF / "optimizer" / "sgd.yaml")})
    return build.optimizer(config, model)


def epoch_prunebench(data, make_optimizer=prunebench_sgd) -> float:
    model = lenet300(data)
    start = time.perf_counter()
    fit(model, data, make_optimizer(model), None, FitSettings(epochs=1, batch_size=BATCH),
        torch.Generator().manual_seed(0), "bench")
    return time.perf_counter() - start


def epoch_minimal(data) -> float:
    x = (data.train.x.float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    y = data.train.y
    model = lenet300(data)
    optimizer = sgd(model)
    start = time.perf_counter()
    order = torch.randperm(len(y))
    for i in range(0, len(y), BATCH):
        idx = order[i:i + BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def epoch_textbook(data, root: str) -> float:
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.2860,), (0.3530,))])
    loader = DataLoader(datasets.FashionMNIST(root, train=True, transform=transform),
                        batch_size=BATCH, shuffle=True)
    model = lenet300(data)
    optimizer = sgd(model)
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def throughput(name, model, data, images: int, batch: int) -> float:
    subset = replace(data, train=Split(data.train.x[:images], data.train.y[:images]))
    fit(model, subset, prunebench_sgd(model), None, FitSettings(epochs=1, batch_size=batch),
        torch.Generator().manual_seed(0), "warm-up")
    start = time.perf_counter()
    fit(model, subset, prunebench_sgd(model), None, FitSettings(epochs=1, batch_size=batch),
        torch.Generator().manual_seed(0), name)
    return images / (time.perf_counter() - start)


def rss_anon() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) * 1024


def peak_growth(work) -> tuple[float, int]:
    """(seconds, peak RssAnon growth in bytes) of work(), sampled every millisecond."""
    base, peak, done = rss_anon(), [0], [False]

    def sample():
        while not done[0]:
            peak[0] = max(peak[0], rss_anon() - base)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    done[0] = True
    thread.join()
    return seconds, peak[0]


def image_folder_case(source_dir: str | None, per_class: int, repeats: int) -> None:
    from torchvision.datasets import ImageFolder

    from prunebench.data.image_folder import load

    size = 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fmnist"
        subprocess.run([sys.executable, str(Path(__file__).parent / "fashion_mnist_folder.py"),
                        str(folder), "--train-per-class", str(per_class), "--test-per-class",
                        "10", *(["--source", source_dir] if source_dir else [])], check=True)
        n = len(list(folder.rglob("*.png")))
        start = time.perf_counter()
        data = load(str(folder), image_size=size, channels=3, root=tmp, val_fraction=0,
                    workers=2)
        decode_s = time.perf_counter() - start
        cache = next(Path(tmp).glob("image_folder-fmnist-*-uint8"))
        cache_mb = (cache / "train_x.u8").stat().st_size / 2**20
        print(f"image folder: {n} PNGs -> {size}x{size} RGB, decoded at {n / decode_s:,.0f} "
              f"images/s (2 workers, {decode_s:.1f} s), train cache {cache_mb:.1f} MB")

        def model():
            torch.manual_seed(0)
            return MLP((3, size, size), 10, (300, 100))

        def ours():  # model and optimizer state (45 MB for this MLP) exist before the epoch
            m = model()
            optimizer = sgd(m)
            m(torch.zeros(BATCH, 3, size, size)).sum().backward()
            optimizer.step()
            return peak_growth(lambda: fit(m, data, optimizer, None, FitSettings(
                epochs=1, batch_size=BATCH), torch.Generator().manual_seed(0), "bench"))

        loader = DataLoader(ImageFolder(folder / "train", transform=transforms.Compose([
            transforms.Resize((size, size)), transforms.ToTensor(),
            transforms.Normalize(data.mean.tolist(), data.std.tolist())])),
            batch_size=BATCH, shuffle=True, num_workers=2)

        def textbook():
            m = model()
            optimizer = sgd(m)
            for x, y in loader:
                loss = F.cross_entropy(m(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        def memory():  # the data path alone: a linear model, whose own tensors are 0.5 MB
            m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 10))
            optimizer = sgd(m)
            m(torch.zeros(BATCH, 3, size, size)).sum().backward()
            optimizer.step()
            return peak_growth(lambda: fit(m, data, optimizer, None, FitSettings(
                epochs=1, batch_size=BATCH), torch.Generator().manual_seed(0), "bench"))[1]

        times = {"prunebench (mapped cache)": [], "ImageFolder + DataLoader(2)": []}
        growth, mlp_growth = [], []
        for _ in range(repeats):
            seconds, grown = ours()
            times["prunebench (mapped cache)"].append(seconds)
            mlp_growth.append(grown)
            times["ImageFolder + DataLoader(2)"].append(peak_growth(textbook)[0])
            growth.append(memory())
        for name, t in times.items():
            print(f"  {name:<28} {min(t):7.2f} s/epoch (runs: {', '.join(f'{x:.2f}' for x in t)})")
        a, b = (min(t) for t in times.values())
        print(f"ImageFolder + DataLoader / prunebench = {b / a:.1f}x per epoch")
        print(f"peak RssAnon growth during an epoch from the mapped cache: "
              f"{max(growth) / 2**20:.1f} MB with a linear model "
              f"({max(growth) / 2**20 / cache_mb:.1%} of the "
              f"{cache_mb:.1f} MB cache; a batch of floats is "
              f"{BATCH * 3 * size * size * 4 / 2**20:.1f} MB); {max(mlp_growth) / 2**20:.1f} MB "
              f"with the MLP, whose 3.7M-weight first layer makes 15 MB gradient and optimizer "
              f"temporaries every step")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", default=None, help="folder with the .gz IDX files")
    parser.add_argument("--image-folder", action="store_true",
                        help="the image-folder case instead (decode rate, epoch, memory)")
    parser.add_argument("--per-class", type=int, default=600,
                        help="training PNGs per class of the image-folder case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                        help="torch CPU thread counts, comma-separated: a table row each "
                             "(--image-folder: the first)")
    parser.add_argument("--csv", default=str(DOCS_DATA / "bench_data.csv"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = sorted({int(t) for t in args.threads.split(",")})
    if args.image_folder:  # at the first thread count
        torch.set_num_threads(threads[0])
        return image_folder_case(args.source_dir, args.per_class, args.repeats)
    with tempfile.TemporaryDirectory() as root:
        data = vision.load("fashion_mnist", root=root, source_dir=args.source_dir,
                           val_fraction=0)
        rows = []
        for count in threads:
            torch.set_num_threads(count)
            rows.append(one_thread_count(data, root, args.repeats))
    write(args.csv, rows)


def one_thread_count(data, root: str, repeats: int) -> dict:
    """The four arms interleaved `repeats` times, then LeNet-5 and ResNet-20 throughput."""
    print(f"Fashion-MNIST: {len(data.train)} training images, batch {BATCH}, "
          f"{torch.get_num_threads()} torch threads")
    arms = {"prunebench": lambda: epoch_prunebench(data),
            "loop only": lambda: epoch_prunebench(data, sgd),
            "minimal": lambda: epoch_minimal(data),
            "textbook": lambda: epoch_textbook(data, root)}
    times = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            times[name].append(arm())
    for k, v in times.items():
        print(f"  {k:<11} median {statistics.median(v):7.2f} s/epoch  "
              f"(runs: {', '.join(f'{t:.2f}' for t in v)})")
    print("  (loop only: train.fit with the minimal loop's plain SGD, to show the loop's own "
          "cost apart from the fused optimizer)")
    row = {"torch threads": torch.get_num_threads(), "repeats": repeats} | {
        f"{name} s": f"{statistics.median(t):.2f}" for name, t in times.items()} | {
        "prunebench / (a)": ratio(times["prunebench"], times["minimal"]),
        "loop only / (a)": ratio(times["loop only"], times["minimal"]),
        "(b) / prunebench": ratio(times["textbook"], times["prunebench"])}
    print(f"prunebench / (a) minimal  = {row['prunebench / (a)']} (goal <= 1.15); "
          f"loop only {row['loop only / (a)']}")
    print(f"(b) textbook / prunebench = {row['(b) / prunebench']} (goal >= 8)")
    for name, model, images, batch in (
            ("LeNet-5", LeNet5(data.input_shape, 10), 8192, 128),
            ("ResNet-20", CifarResNet(data.input_shape, 10, depth=20), 2048, 128)):
        rate = throughput(name, model, data, images, batch)
        print(f"{name} training: {rate:,.0f} images/s (28x28, batch {batch})")
        row[name] = f"{rate:,.0f} img/s"
    return row


if __name__ == "__main__":
    main()
