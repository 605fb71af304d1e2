"""PNG plots beside the tables (matplotlib, Agg backend), one set per model and dataset.

- accuracy vs sparsity: final accuracy against compression 1/(1-s) on a log axis, one line per
  strategy with ±std error bars over seeds, published points overlaid where model and dataset
  match (literature.csv);
- accuracy vs effective FLOPs, with the Pareto frontier marked (when runs report FLOPs);
- accuracy vs measured latency (the fastest form's forward ms), with its Pareto frontier;
- accuracy vs bytes: the accuracy of what ships (the quantized phase when there is one) against
  the compressed file's size (export.compressed), with its Pareto frontier;
- per-layer sparsity of each strategy at one target (the one nearest 0.9 by default).

Language models are plotted by final test perplexity (lower is better) in place of accuracy.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from functools import partial
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from prunebench.config.errors import one_line  # noqa: E402
from prunebench.runstate import files  # noqa: E402

log = logging.getLogger(__name__)

LAYER_TARGET = 0.9
PUBLISHED_MARKERS = ["*", "P", "X", "D", "^", "v", "s", "p", "h", "<", ">"]


def label(g: dict) -> str:
    """Strategy name with what distinguishes it: variant, granularity, scope, settings."""
    parts = [str(g.get("strategy"))]
    if g.get("variant"):
        parts[0] += f"/{g['variant']}"
    if g.get("granularity") not in (None, "weight"):
        parts.append(str(g["granularity"]))
    if g.get("scope") not in (None, "global"):
        parts.append(f"{g['scope']} scope")
    if g.get("schedule") not in (None, "oneshot"):
        parts.append(str(g["schedule"]))
    if g.get("settings"):
        parts.append(str(g["settings"]))
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def judged(groups: list[dict]) -> tuple[str, str]:
    """(metric prefix, axis text): accuracy, or perplexity when the groups are language models."""
    if any(_finite(g.get("final_ppl_mean")) for g in groups):
        return "ppl", "final test perplexity (lower is better)"
    return "acc", "final test accuracy"


def literature() -> list[dict]:
    text = (resources.files("prunebench.results") / "literature.csv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return [{**r, "sparsity": float(r["sparsity"]), "accuracy": 1 - float(r["error_pct"]) / 100}
            for r in csv.DictReader(lines)]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    files._atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def accuracy_vs_sparsity(groups: list[dict], model, dataset, path: Path) -> Path | None:
    metric, axis = judged(groups)
    lines = defaultdict(list)
    for g in groups:
        if _finite(g.get(f"final_{metric}_mean")) and _finite(g.get("sparsity_mean")) \
                and g["sparsity_mean"] < 1:
            lines[label(g)].append(g)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    twins = False
    for name, members in sorted(lines.items()):
        members.sort(key=lambda g: g["sparsity_mean"])
        x = [1 / (1 - g["sparsity_mean"]) for g in members]
        y = [g[f"final_{metric}_mean"] for g in members]
        err = [g[f"final_{metric}_std"] if _finite(g.get(f"final_{metric}_std")) else 0
               for g in members]
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        # the strategy's random twin: same layer densities, same budget, random weights kept
        twin = [(xi, g[f"random_final_{metric}_mean"]) for xi, g in zip(x, members, strict=True)
                if _finite(g.get(f"random_final_{metric}_mean"))]
        if twin:
            twins = True
            ax.plot(*zip(*twin, strict=True), linestyle="--", marker="x", linewidth=1,
                    color=line.lines[0].get_color(), alpha=0.7)
    if twins:
        ax.plot([], [], linestyle="--", marker="x", color="grey",
                label="dashed: random mask with that strategy's\nlayer densities, same budget")
    dense = [g[f"dense_{metric}_mean"] for g in groups if _finite(g.get(f"dense_{metric}_mean"))]
    if dense:
        ax.axhline(float(np.mean(dense)), color="black", linestyle=":", linewidth=1,
                   label=f"dense ({np.mean(dense):.4f})")
    published = [p for p in literature() if p["model"] == model and p["dataset"] == dataset
                 and p["sparsity"] > 0 and metric == "acc"]
    by_method = defaultdict(list)
    for p in published:
        by_method[p["method"]].append((1 / (1 - p["sparsity"]), p["accuracy"]))
    for (method, pts), marker in zip(sorted(by_method.items()), PUBLISHED_MARKERS * 3,
                                     strict=False):
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, marker=marker, s=45, edgecolors="black", facecolors="none",
                   label=f"{method} (published, {dataset})", zorder=4)
    ax.set_xscale("log")
    ours = sorted({round(1 / (1 - g["sparsity_mean"]), 1) for m in lines.values() for g in m})
    xs = ours + [x for pts in by_method.values() for x, _ in pts]
    nice = [t for t in (2, 5, 10, 20, 50, 100, 200, 500, 1000) if min(xs) <= t <= max(xs) * 1.001
            and all(abs(math.log(t / o)) > 0.25 for o in ours)]
    ticks = []
    for t in sorted(ours + nice):  # drop ticks too close to read apart
        if not ticks or abs(math.log(t / ticks[-1])) > 0.15:
            ticks.append(t)
    ax.set_xticks(ticks, [f"{t:g}x\n{1 - 1 / t:.1%}".replace(".0%", "%") for t in ticks],
                  fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("compression 1/(1 - sparsity)  (sparsity below)")
    ax.set_ylabel(f"{axis} (mean ± std over seeds)")
    ax.set_title(f"{model} on {dataset}: {axis.split()[2]} vs sparsity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def pareto(points: list[tuple[float, float]], lower_is_better: bool = False
           ) -> list[tuple[float, float]]:
    """The points no other point beats on both fewer FLOPs and a better value (higher
    accuracy, or lower perplexity)."""
    sign = -1 if lower_is_better else 1
    frontier, best = [], -math.inf
    for flops, value in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * value > best:
            frontier.append((flops, value))
            best = sign * value
    return frontier


def accuracy_vs_flops(groups: list[dict], model, dataset, path: Path) -> Path | None:
    metric, axis = judged(groups)
    points = defaultdict(list)
    for g in groups:
        if _finite(g.get(f"final_{metric}_mean")) and _finite(g.get("effective_flops_mean")):
            points[label(g)].append((g["effective_flops_mean"], g[f"final_{metric}_mean"]))
    return frontier_plot(points, metric, "effective MACs per example or window (zeros skipped)",
                         f"{axis} (mean over seeds)",
                         f"{model} on {dataset}: {axis.split()[2]} vs effective MACs", path)


def frontier_plot(points: dict, metric: str, xlabel: str, ylabel: str, title: str,
                  path: Path) -> Path | None:
    """A scatter per label on a log x axis (less is better) with the Pareto frontier."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, pts in sorted(points.items()):
        ax.scatter(*zip(*pts, strict=True), label=name, alpha=0.8)
    front = pareto([p for pts in points.values() for p in pts], lower_is_better=metric == "ppl")
    xs, ys = zip(*front, strict=True)
    ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto frontier")
    ax.scatter(xs, ys, facecolors="none", edgecolors="black", s=110, linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def accuracy_vs_latency(groups: list[dict], model, dataset, path: Path) -> Path | None:
    """Final accuracy against the measured forward time of the run's fastest form."""
    points = defaultdict(list)
    for g in groups:
        if _finite(g.get("final_acc_mean")) and _finite(g.get("forward_ms_mean")):
            points[label(g)].append((g["forward_ms_mean"], g["final_acc_mean"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, pts in sorted(points.items()):
        ax.scatter(*zip(*pts, strict=True), label=name, alpha=0.8)
    front = pareto([p for pts in points.values() for p in pts])
    xs, ys = zip(*front, strict=True)
    ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto frontier")
    ax.scatter(xs, ys, facecolors="none", edgecolors="black", s=110, linewidths=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("measured forward ms, fastest form (batch 64, one CPU thread)")
    ax.set_ylabel("final test accuracy (mean over seeds)")
    ax.set_title(f"{model} on {dataset}: accuracy vs measured latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def accuracy_vs_size(groups: list[dict], model, dataset, path: Path) -> Path | None:
    """Accuracy (or perplexity) of the shipped model against the compressed file's KB."""
    metric, axis = judged(groups)
    points = defaultdict(list)
    for g in groups:
        value = g.get(f"quantized_{metric}_mean")
        value = value if _finite(value) else g.get(f"final_{metric}_mean")
        if _finite(value) and _finite(g.get("size_kb_mean")):
            points[label(g)].append((g["size_kb_mean"], value))
    return frontier_plot(points, metric, "compressed file, KB (export.compressed)",
                         f"{axis.replace('final', 'shipped')} (mean over seeds)",
                         f"{model} on {dataset}: {axis.split()[2]} vs bytes", path)


def layer_sparsity(rows: list[dict], groups: list[dict], model, dataset, path: Path,
                   target: float = LAYER_TARGET) -> Path | None:
    """Grouped bars: per-layer sparsity (mean over seeds) of each strategy at one target."""
    targets = sorted({g["target"] for g in groups if isinstance(g.get("target"), (int, float))})
    if not targets:
        return None
    chosen = min(targets, key=lambda t: abs(t - target))
    per = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("status") == "ok" and r.get("target") == chosen:
            for layer in r.get("_layers", []):
                if layer.get("params"):
                    per[label(r)][layer["name"]].append(1 - layer["nonzero"] / layer["params"])
    if not per:
        return None
    layers = list(next(iter(per.values())))
    fig, ax = plt.subplots(figsize=(max(7.5, 0.4 * len(layers) * len(per)), 4.5))
    width = 0.8 / len(per)
    for i, (name, by_layer) in enumerate(sorted(per.items())):
        y = [float(np.mean(by_layer.get(n, [np.nan]))) for n in layers]
        ax.bar(np.arange(len(layers)) + (i - (len(per) - 1) / 2) * width, y, width, label=name)
    ax.set_xticks(np.arange(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(chosen, color="black", linestyle=":", linewidth=1, label=f"target {chosen:g}")
    ax.set_ylabel("sparsity of the layer")
    ax.set_title(f"{model} on {dataset}: per-layer sparsity at target {chosen:g}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def write_all(rows: list[dict], groups: list[dict], out_dir: str | Path) -> list[Path]:
    """Every plot for every (model, dataset) among the groups; returns the PNGs written.

    Names in titles and legends come from results.json files and are drawn as they are: `$`
    starts no mathtext, which a malformed name would turn into an exception.
    """
    with matplotlib.rc_context({"text.parse_math": False}):
        return _write_all(rows, groups, Path(out_dir))


def _write_all(rows: list[dict], groups: list[dict], out_dir: Path) -> list[Path]:
    written = []
    pairs = sorted({(g.get("model"), g.get("dataset")) for g in groups if g["status"] == "ok"},
                   key=str)
    for model, dataset in pairs:
        mine = [g for g in groups if g["status"] == "ok" and g.get("model") == model
                and g.get("dataset") == dataset]
        my_rows = [r for r in rows if r.get("model") == model and r.get("dataset") == dataset]
        # the names come from results.json files, which may be anyone's: a file-name part
        # that cannot leave out_dir (files.safe_name), and checked once more
        stem = files.safe_name(f"{model}_{dataset}")
        plots = [(accuracy_vs_sparsity, mine, "accuracy_sparsity"),
                 (accuracy_vs_flops, mine, "accuracy_flops"),
                 (accuracy_vs_latency, mine, "accuracy_latency"),
                 (accuracy_vs_size, mine, "accuracy_size"),
                 (partial(layer_sparsity, my_rows), mine, "layer_sparsity")]
        for draw, groups_here, kind in plots:  # a plot that fails costs a warning, not the rest
            try:
                written.append(draw(groups_here, model, dataset,
                                    files.inside(out_dir, f"{kind}_{stem}.png")))
            except Exception as err:
                log.warning("plot %s_%s.png failed: %s; the tables are written without it",
                            kind, stem, one_line(err))
    return [p for p in written if p is not None]
