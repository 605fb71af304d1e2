"""`prunebench-sensitivity`: how much each layer alone can lose (Han et al. 2015's analysis).

    prunebench-sensitivity model=lenet300 strategy=l1 --amounts 0.5,0.8,0.9,0.95,0.99

Takes the dense model from the cache (or trains it once, as `prunebench` would, and caches
it), scores its weights once with the chosen criterion, then for every prunable layer and
every amount prunes that layer alone to that amount, evaluates with no fine-tuning and no
batch-norm recalibration, and restores it. Writes sensitivity.csv / .md / .json and
sensitivity.png (metric per layer against the layer's sparsity) into --out. Accuracy is read
on the validation split when the dataset has one, else on the test split; language models
report perplexity when evaluation gives one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

DEFAULT_AMOUNTS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        prog="prunebench-sensitivity",
        description="Prune one layer at a time to each amount with the chosen criterion, from "
                    "one cached dense model; evaluate without fine-tuning.")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for prunebench "
                        "(model=lenet300 strategy=gradient dataset=fashion_mnist ...)")
    parser.add_argument("--amounts", default=",".join(map(str, DEFAULT_AMOUNTS)),
                        help="comma-separated fractions of a layer's weights to remove")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default outputs/sensitivity/<date>_<time>)")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    try:
        amounts = [float(a) for a in args.amounts.split(",") if a.strip()]
    except ValueError:
        amounts = []
    if not amounts or not all(0 <= a < 1 for a in amounts):  # one line, as prunebench's
        parser.exit(2, f"prunebench-sensitivity: error: --amounts={args.amounts} is invalid: "
                       f"allowed fractions 0 <= a < 1, like 0.5,0.9\n")
    args.amounts = amounts
    return args


def compose(overrides: list[str]):
    """The config `prunebench OVERRIDES` would run, checked as prunebench checks it (the
    values, the keys typed, the device) before any work."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from prunebench.config import inputs, preflight

    with initialize_config_module("prunebench.conf", version_base="1.3"):
        config = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        preflight.check_values(config, "config")
    cfg = preflight.without_hydra(config)
    inputs.replace_default_model(cfg, overrides)  # model._target_=yours, as prunebench does
    return cfg


def check_out(out: Path | None) -> None:
    """--out must be a folder this process can write (prunebench's own check of its folders)."""
    from prunebench.config.errors import ConfigError
    from prunebench.config.preflight import problem

    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the tables")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())  # made later
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: cannot write to {out}: Not a directory ({existing} "
                          f"is a file)")
    message = problem(existing)
    if message:
        raise ConfigError(f"--out {out}: {message}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from prunebench.config import messages
    from prunebench.config.errors import ConfigError

    try:
        cfg = compose(args.overrides)
        check_out(args.out)  # after the config: a bad value leaves no folder behind
        out = args.out or Path("outputs/sensitivity") / time.strftime("%Y-%m-%d_%H-%M-%S")
        rows, meta = analyse(cfg, args.amounts, out)
    except ConfigError as err:
        sys.exit(f"prunebench-sensitivity: error: {err}")
    except (HydraException, OmegaConfBaseException) as err:  # as prunebench condenses them
        sys.exit(f"prunebench-sensitivity: error: {messages.condense(err)}")
    paths = write(rows, meta, out)
    print(markdown(rows, meta))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def analyse(cfg, amounts: list[float], out: Path) -> tuple[list[dict], dict]:
    """One row per (layer, amount): that layer alone pruned, the metric without training."""
    import torch
    import torch.nn.functional as F

    from prunebench import runner
    from prunebench.data import batches
    from prunebench.pruning.masks import prunable_weights
    from prunebench.runstate import files, resume
    from prunebench.runstate.progress import Progress
    from prunebench.strategies.base import PruneContext
    from prunebench.strategies.ranking import bottom_k
    from prunebench.training.loop import evaluate

    start = time.perf_counter()
    device, data, model, selection = runner.setup(cfg)
    state, progress = resume.RunState(cfg, out), Progress()
    runner.dense_model(cfg, model, data, device, progress, state)
    dense, hit = progress.dense, progress.cache_hit
    state.path.unlink(missing_ok=True)  # dense training's resume point: not needed now
    model.load_state_dict(dense["state_dict"])
    files.save_torch(out / "checkpoints" / "dense.pt", dense["state_dict"])
    split_name = "val" if data.val is not None and len(data.val) else "test"
    split = getattr(data, split_name)
    if split_name == "test":
        print("prunebench-sensitivity: no validation split (dataset.val_fraction=0), so the "
              "layers are judged on the test split", file=sys.stderr)

    generator = torch.Generator().manual_seed(cfg.seed + 1)
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w) for n, w in weights.items()}
    ctx = PruneContext(
        lambda: batches(data, data.train, cfg.train.batch_size, shuffle=True,
                        generator=generator),
        F.cross_entropy, device, generator, model=model, masks=masks)
    with torch.enable_grad():
        scores = selection.criterion.score(weights, ctx)  # once, on the dense model
    base = evaluate(model, data, split)
    metric = "perplexity" if "perplexity" in base else "accuracy"
    rows = []
    for name, w in weights.items():
        original = w.detach().clone()
        for amount in amounts:
            keep = bottom_k(scores[name].detach().float().flatten(),
                            round(amount * w.numel())).view_as(w)
            with torch.no_grad():
                w.mul_(keep.to(w.dtype))
            result = evaluate(model, data, split)
            rows.append({"layer": name, "params": w.numel(), "amount": amount,
                         "sparsity": 1 - int(torch.count_nonzero(w)) / w.numel(),
                         metric: result[metric], "loss": result["loss"]})
            with torch.no_grad():
                w.copy_(original)
    meta = {"metric": metric, "split": split_name, "dense": base[metric],
            "dense_loss": base["loss"], "strategy": cfg.strategy.name,
            "model": cfg.model.name, "dataset": cfg.dataset.name, "cache_hit": hit,
            "seconds": time.perf_counter() - start}
    return rows, meta


def markdown(rows: list[dict], meta: dict) -> str:
    amounts = sorted({r["amount"] for r in rows})
    metric = meta["metric"]
    lines = [f"{meta['model']} on {meta['dataset']}, {meta['strategy']}: {metric} on the "
             f"{meta['split']} split with one layer pruned (dense {meta['dense']:.4f})", "",
             "| layer | params | " + " | ".join(f"{a:g}" for a in amounts) + " |",
             "|---|---|" + "---|" * len(amounts)]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        cells = {r["amount"]: r[metric] for r in rows if r["layer"] == layer}
        params = next(r["params"] for r in rows if r["layer"] == layer)
        lines.append(f"| {layer} | {params:,} | "
                     + " | ".join(f"{cells[a]:.4f}" for a in amounts) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], meta: dict, out: Path) -> list[Path]:
    from prunebench.runstate import files

    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    paths = [out / "sensitivity.csv", out / "sensitivity.md", out / "sensitivity.json"]
    files.write_text(paths[0], text.getvalue())
    files.write_text(paths[1], markdown(rows, meta))
    files.write_text(paths[2], json.dumps({"meta": meta, "rows": rows}, indent=1))
    return paths + [plot(rows, meta, out / "sensitivity.png")]


def plot(rows: list[dict], meta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunebench.runstate import files

    metric = meta["metric"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in mine], [r[metric] for r in mine], marker="o",
                label=f"{layer} ({mine[0]['params']:,})")
    ax.axhline(meta["dense"], color="black", linestyle=":", linewidth=1,
               label=f"dense ({meta['dense']:.4f})")
    ax.set_xlabel("sparsity of the one pruned layer")
    ax.set_ylabel(f"{metric} ({meta['split']} split, no fine-tuning)")
    ax.set_title(f"{meta['model']} on {meta['dataset']}: sensitivity to {meta['strategy']} "
                 "pruning, layer by layer")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    files._atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))  # our temporary name
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
