"""Comparison tables built from results.json files only: per-run rows, grouped by seed.

Reading never instantiates anything from the files: it is plain JSON, so a report over
someone else's folder is safe. `collect` flattens each results.json into a run row;
stats.group turns run rows into comparison rows (mean ± std over seeds, paired test against
a baseline); `write` renders them as comparison.md / .csv / .json and `show` as a rich table.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
import os
import sys
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prunebench.results import stats
from prunebench.runstate import files

log = logging.getLogger(__name__)
# a terminal's width (or $COLUMNS); piped output gets a wide fixed width rather than rich's 80
# columns, so tables stay readable in a log file
stdout = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240)
# a results.json is a few hundred kB at most; anything far larger is not one of ours
MAX_RESULTS_BYTES = 64 * 2**20
TRACKER_FOLDERS = {"mlartifacts", "mlruns", "wandb"}  # logger=...: artifact copies live there

# config keys that never make two runs different experiments (where and how fast they ran)
# (calibration.seed is a draw like seed: runs differing in it fold into one row)
IGNORED_SETTINGS = ("seed", "calibration.seed", "device", "cache.", "train.threads",
                    "objective.", "dataset.root", "dataset.source_dir", "dataset.download")
# config keys already shown in the key columns
KEY_SETTINGS = ("model.name", "dataset.name", "strategy.name", "strategy.variant",
                "strategy.granularity", "strategy.scope", "schedule.name", "strategy.amount",
                "strategy.threshold")

# (metric, header, format); "always" columns appear even when every cell is blank
ALWAYS = [
    ("dense_acc", "dense acc", "{:.4f}"),
    ("pruned_acc", "pruned acc", "{:.4f}"),
    ("final_acc", "final acc", "{:.4f}"),
    ("delta_acc", "Δ vs dense", "{:+.4f}"),
    ("sparsity", "sparsity", "{:.4f}"),  # over the weights the run may prune (not excluded)
    ("compression", "compression", "{:.1f}x"),
    # export.compressed: the file's bytes, and the dense fp32 state_dict's bytes over them
    ("size_kb", "size KB", "{:.1f}"),
    ("compression_x", "compression x", "{:.1f}x"),
    ("nonzero", "nonzero", "{:,.0f}"),
    ("flops", "dense MACs", "{:.3g}"),
    ("effective_flops", "eff. MACs", "{:.3g}"),
    ("speedup", "speedup", "{:.2f}x"),  # measured: dense / deployed form's ms (latency.py)
    ("prune_s", "prune s", "{:.2f}"),
    ("prune_peak_mb", "prune peak MB", "{:.1f}"),
    ("finetune_epochs", "ft epochs", "{:.0f}"),
    ("finetune_steps", "ft steps", "{:.0f}"),
]
SPARSITY = ALWAYS[4]
# language models are judged by test perplexity (lower is better) instead of accuracy
PERPLEXITY = [
    ("dense_ppl", "dense ppl", "{:.3f}"),
    ("pruned_ppl", "pruned ppl", "{:.3f}"),
    ("final_ppl", "final ppl", "{:.3f}"),
    ("delta_ppl", "Δ ppl vs dense", "{:+.3f}"),
]
OPTIONAL = [
    # compress.quantize: the quantized phase after final (prunebench/compress/)
    ("quantized_acc", "quantized acc", "{:.4f}"),
    ("quantized_ppl", "quantized ppl", "{:.3f}"),
    ("random_final_acc", "random same density", "{:.4f}"),
    ("random_final_ppl", "random same density ppl", "{:.3f}"),
    ("gain_vs_random", "gain vs random", "{:+.4f}"),
    ("random_p", "p vs random", "{:.3g}"),
    ("random_p_adj", "BH p vs random", "{:.3g}"),
    # the controls of pruning/controls.py: final accuracy, paired test of the run against it
    ("shuffled_final_acc", "shuffled mask", "{:.4f}"),
    ("shuffled_p", "p vs shuffled", "{:.3g}"),
    ("shuffled_p_adj", "BH p vs shuffled", "{:.3g}"),
    ("reinit_final_acc", "reinit", "{:.4f}"),
    ("reinit_p", "p vs reinit", "{:.3g}"),
    ("reinit_p_adj", "BH p vs reinit", "{:.3g}"),
    ("pruned_before_bn_acc", "pruned acc before BN recal.", "{:.4f}"),
    ("latency_ms", "latency ms", "{:.3f}"),
    ("forward_ms", "forward ms", "{:.3f}"),
    ("dense_latency_ms", "dense latency ms", "{:.3f}"),
    ("grad_max", "max grad norm", "{:.3g}"),
    ("clipped", "clipped frac", "{:.3f}"),
]
# the metrics the terminal's table may show, most wanted first: ALWAYS_SHOWN's always, the
# others while the console is wide enough (table.show)
TERMINAL = ("final_acc", "final_ppl", "delta_acc", "delta_ppl", "sparsity", "speedup",
            "quantized_acc", "quantized_ppl", "size_kb", "compression_x", "sparsity_all",
            "random_final_acc", "random_final_ppl", "shuffled_final_acc", "shuffled_p",
            "reinit_final_acc", "reinit_p", "effective_flops", "prune_s", "finetune_epochs",
            "prune_peak_mb", "latency_ms")
ALWAYS_SHOWN = ("final_acc", "final_ppl", "delta_acc", "delta_ppl", "sparsity", "speedup")


# the target of a criterion that chose its own sparsity (l0 without amount or threshold); the
# tables show the sparsity it reached there
OWN = "own"


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict):
            return default
        d = d.get(p)
    return default if d is None else d


def row(results: dict, run: str) -> dict:
    """Flatten one results.json into a run row (missing values stay None)."""
    cfg = results.get("config", {})
    strategy = cfg.get("strategy", {})
    dense, final = results.get("dense", {}), results.get("final", {})
    amount, threshold = strategy.get("amount"), strategy.get("threshold")
    sparsity = final.get("sparsity")
    dense_acc, final_acc = dense.get("accuracy"), final.get("accuracy")
    random_final = _get(results, "baseline", "final", "accuracy")
    dense_ppl, final_ppl = dense.get("perplexity"), final.get("perplexity")
    history = results.get("history", {})
    return {
        "run": run,
        "status": results.get("status"),
        "model": _get(cfg, "model", "name"),
        "dataset": _get(cfg, "dataset", "name"),
        "strategy": strategy.get("name"),
        "variant": strategy.get("variant", ""),
        "granularity": strategy.get("granularity"),
        "scope": strategy.get("scope"),
        "schedule": _get(cfg, "schedule", "name"),
        "target": amount if amount is not None else (
            f"t<{threshold}" if threshold is not None else OWN),
        "seed": cfg.get("seed"),
        "calibration_seed": _get(cfg, "calibration", "seed"),
        "dense_acc": dense_acc,
        "pruned_acc": _get(results, "pruned", "accuracy"),
        "final_acc": final_acc,
        "delta_acc": _diff(final_acc, dense_acc),
        "dense_ppl": dense_ppl,
        "pruned_ppl": _get(results, "pruned", "perplexity"),
        "final_ppl": final_ppl,
        "delta_ppl": _diff(final_ppl, dense_ppl),
        "random_final_ppl": _get(results, "baseline", "final", "perplexity"),
        "size_kb": _kb(_get(results, "size", "compressed_bytes")),
        "compression_x": _get(results, "size", "ratio"),
        "quantized_acc": _get(results, "quantized", "accuracy"),
        "quantized_ppl": _get(results, "quantized", "perplexity"),
        "sparsity": sparsity,
        "sparsity_all": sparsity_over_all_prunable(results),
        "compression": 1 / (1 - sparsity) if sparsity is not None and sparsity < 1 else None,
        "nonzero": final.get("nonzero"),
        "params": final.get("params"),
        # MACs (results.json calls them flops) from the phases; else the MACs the compaction
        # measured (structured pruning)
        "flops": dense.get("flops", _get(results, "compact", "dense_macs")),
        "effective_flops": final.get("effective_flops", _get(results, "compact", "macs")),
        "latency_ms": _latency(results.get("compact"), "compact_ms"),
        "dense_latency_ms": _latency(results.get("compact"), "dense_ms"),
        **measured_speed(results.get("latency")),
        "prune_s": _get(results, "timing", "prune_s"),
        "prune_peak_mb": _get(results, "cost", "prune_peak_mb"),
        "finetune_epochs": _get(results, "budget", "finetune_epochs",
                                default=len(history.get("finetune", [])) or None),
        "finetune_steps": _get(results, "budget", "finetune_steps"),
        "random_pruned_acc": _get(results, "baseline", "pruned", "accuracy"),
        "random_final_acc": random_final,
        "gain_vs_random": _diff(final_acc, random_final),
        "shuffled_final_acc": _get(results, "controls", "shuffled_mask", "final", "accuracy"),
        "reinit_final_acc": _get(results, "controls", "reinit", "final", "accuracy"),
        "pruned_before_bn_acc": _get(results, "pruned_before_bn_recalibration", "accuracy"),
        **gradient_health(results.get("gradients") or {}),
        "error": results.get("error", ""),
        "_config": _flatten(cfg),
        "_layers": final.get("layers") or [],
    }


def sparsity_over_all_prunable(results: dict):
    """Final sparsity over every prunable weight, strategy.exclude or not (masks.py's
    `all_prunable`), so runs with and without exclude compare. A results.json from before
    that figure has only `sparsity`, which is the same thing unless it excluded layers."""
    final = results.get("final") or {}
    recorded = _get(final, "all_prunable", "sparsity")
    if recorded is not None or _get(results, "config", "strategy", "exclude"):
        return recorded
    return final.get("sparsity")


def gradient_health(gradients: dict) -> dict:
    """Largest gradient norm and fraction of clipped steps over all training phases."""
    phases = [p for p in gradients.values() if isinstance(p, dict) and p.get("steps")]
    norms = [p["norm_max"] for p in phases if p.get("norm_max") is not None]
    steps = sum(p["steps"] for p in phases)
    clipped = sum(p["clipped_fraction"] * p["steps"] for p in phases)
    return {"grad_max": max(norms) if norms else None,
            "clipped": clipped / steps if steps else None}


def _diff(a, b):
    return a - b if a is not None and b is not None else None


def _kb(size):
    return size / 1000 if isinstance(size, (int, float)) else None


def _sum(a, b):
    return a + b if a is not None and b is not None else None


def _latency(compact, which: str):
    """Measured batch-1 CPU latency (ms) of the compact model or of its dense original."""
    value = _get(compact or {}, "latency", "batch_1", which)
    return value if isinstance(value, (int, float)) else None


def measured_speed(latency) -> dict:
    """The deployed form's speedup against dense with its 95% interval, and that form's
    forward ms, at the setting it was taken (latency.py); None where a run measured none."""
    latency = latency or {}
    batch, _, threads = str(latency.get("speedup_at", "")).partition("/")
    form = latency.get("speedup_form")
    number = (int, float)

    def measured(key):
        value = latency.get(key)
        return value if isinstance(value, number) and not isinstance(value, bool) else None

    ms = _get(latency, "forms", form or "", batch, threads)
    return {"speedup": measured("speedup"), "speedup_low": measured("speedup_low"),
            "speedup_high": measured("speedup_high"), "speedup_form": form,
            "speedup_significant": latency.get("speedup_significant"),
            "forward_ms": ms if isinstance(ms, number) else None}


def _flatten(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in (cfg or {}).items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def annotate_settings(rows: list[dict]) -> None:
    """Set each row's `settings`: the other config keys that vary among runs sharing a key.

    So runs are only averaged together when they differ in nothing but the seed.
    """
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault(tuple(str(r.get(k)) for k in stats.KEY), []).append(r)
    for members in by_key.values():
        keys = sorted({k for m in members for k in m["_config"]})
        varying = [k for k in keys if not k.startswith(IGNORED_SETTINGS + KEY_SETTINGS)
                   and len({json.dumps(m["_config"].get(k), sort_keys=True)
                            for m in members}) > 1]
        for m in members:
            m["settings"] = " ".join(f"{k}={m['_config'].get(k)}" for k in varying)


def collect(root: str | Path) -> list[dict]:
    """Run rows for every results.json under `root`; unreadable files are reported, skipped."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("results.json")  # not the copies trackers keep as artifacts
        if not TRACKER_FOLDERS & set(p.relative_to(root).parts[:-1]))
    rows = []
    for path in paths:
        try:
            if not path.is_file():  # a FIFO or device would block or never end
                raise ValueError("not a regular file")
            if path.stat().st_size > MAX_RESULTS_BYTES:
                raise ValueError(f"larger than {MAX_RESULTS_BYTES} bytes")
            results = json.loads(path.read_text())
            if not isinstance(results, dict) or "status" not in results:
                raise ValueError("not a prunebench results.json")
            run = str(path.parent.relative_to(root)) if root.is_dir() else path.parent.name
            rows.append(checked(row(results, run or ".")))
        except Exception as err:  # whatever is in the file, the report goes on without it
            log.warning("skipping %s: %s: %s", path, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
    annotate_settings(rows)
    return rows


def checked(r: dict) -> dict:
    """An ok run must carry finite numbers: a NaN would poison its group's mean."""
    if r.get("status") == "ok":
        for metric in ("dense_acc", "pruned_acc", "final_acc", "sparsity"):
            value = r.get(metric)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"status ok but {metric} is {value}")
    return r


def lookup(r: dict, key: str):
    """A row column, or a dotted config key (`finetune.epochs`) of the run."""
    return r[key] if key in r else r.get("_config", {}).get(key)


def where(rows: list[dict], conditions: list[str]) -> list[dict]:
    """Keep rows matching every `key=value` (numbers compare as numbers)."""
    for condition in conditions:
        key, _, value = condition.partition("=")
        rows = [r for r in rows if _equal(lookup(r, key), value)]
    return rows


def _equal(actual, wanted: str) -> bool:
    try:
        return float(actual) == float(wanted)
    except (TypeError, ValueError):
        return str(actual) == wanted or (actual is None and wanted in ("null", "None", ""))


def with_columns(rows: list[dict], group_by: list[str] | None) -> list[dict]:
    """Copy dotted config keys named in group_by into the rows, so stats can group on them."""
    for key in group_by or []:
        for r in rows:
            r.setdefault(key, lookup(r, key))
    return rows


# ---- rendering ------------------------------------------------------------------------

def key_columns(groups: list[dict]) -> list[str]:
    """The key columns worth showing: those with a value in some row."""
    keys = [k for k in groups[0] if k in stats.KEY + ("settings",)] if groups else []
    extra = [k for k in groups[0] if k not in keys and k not in _NON_KEY] if groups else []
    return [k for k in keys + extra if any(g.get(k) not in (None, "") for g in groups)]


_NON_KEY = {"status", "n", "seeds", "run", "error", "flags", "baseline", "diff_vs_baseline",
            "p_value", "p_adj", "pairs", "_per_seed", "_budget", "_judged", "speedup_form",
            "speedup_significant"} | {
    f"{m}_{s}" for m in stats.METRICS for s in ("mean", "std", "ci95")}


def metric_columns(groups: list[dict]) -> list[tuple[str, str, str]]:
    """ALWAYS's columns, perplexity's instead of accuracy's when only language models ran
    (both when both did), then the optional columns some row fills."""
    def filled(metric: str) -> bool:
        return any(_finite(g.get(f"{metric}_mean")) for g in groups)

    judged = list(ALWAYS)
    if filled("final_ppl") or filled("dense_ppl"):
        accuracy = ALWAYS[:4] if filled("final_acc") or filled("dense_acc") else []
        judged = PERPLEXITY + accuracy + ALWAYS[4:]
    if any(_finite(g.get("sparsity_all_mean")) and g["sparsity_all_mean"] != g.get(
            "sparsity_mean") for g in groups):
        # some run left layers dense (strategy.exclude): its sparsity counts only the weights
        # it could prune; this column counts every prunable weight, as a run without exclude
        at = judged.index(SPARSITY) + 1
        judged[at:at] = [("sparsity_all", "sparsity, all prunable", "{:.4f}")]
    return judged + [c for c in OPTIONAL if filled(c[0])]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value, fmt: str) -> str:
    if not _finite(value):
        return "" if value is None or isinstance(value, float) else str(value)
    return fmt.format(value)


def cell(g: dict, metric: str, fmt: str) -> str:
    mean, std = g.get(f"{metric}_mean"), g.get(f"{metric}_std")
    text = _fmt(mean, fmt)
    if metric == "speedup" and text:
        return speedup_cell(g, text, fmt)
    if text and _finite(std):
        text += " ± " + _fmt(std, fmt.replace("+", ""))
    return text


def speedup_cell(g: dict, text: str, fmt: str, spread: bool = True) -> str:
    """`1.00x (dense)` when no layer left its dense kernel; one run's speedup with its 95%
    interval, several runs' mean ± std (not with spread=False: the terminal's narrow cell);
    `n.s.` when a run's interval contains 1."""
    if g.get("speedup_form") == "dense":
        return text + " (dense)"
    low, high = g.get("speedup_low_mean"), g.get("speedup_high_mean")
    if spread and g.get("n") == 1 and _finite(low) and _finite(high):
        bare = fmt.rstrip("x")
        text += f" [{_fmt(low, bare)}, {_fmt(high, bare)}]"
    elif spread and _finite(g.get("speedup_std")):
        text += " ± " + _fmt(g["speedup_std"], fmt)
    return text + (" n.s." if g.get("speedup_significant") is False else "")


def versus(g: dict) -> str:
    """`+0.0123 vs l1 (p=0.041, BH p=0.082, n=3)` against the baseline strategy (perplexity:
    `-1.234 ppl vs l1`, lower is better), `*` after it when the adjusted p-value is below
    stats.ALPHA, or blank."""
    if not g.get("baseline"):
        return ""
    if g.get("_judged") == "final_ppl":
        text = f"{g['diff_vs_baseline']:+.3f} ppl vs {g['baseline']}"
    else:
        text = f"{g['diff_vs_baseline']:+.4f} vs {g['baseline']}"
    if _finite(g.get("p_value")):
        text += f" (p={g['p_value']:.3g}, BH p={g['p_adj']:.3g}, n={g['pairs']})"
    return text + significance(g)


def significance(g: dict) -> str:
    """` *` when the difference from the baseline is significant after the adjustment."""
    return " *" if _finite(g.get("p_adj")) and g["p_adj"] < stats.ALPHA else ""


def key_text(g: dict, key: str) -> str:
    """A key cell; an own-sparsity target shows the (mean) sparsity reached."""
    if key == "target" and g.get(key) == OWN and _finite(g.get("sparsity_mean")):
        return f"{g['sparsity_mean']:.4f} (own)"
    return _fmt(g.get(key), "{}")


def markdown(groups: list[dict]) -> str:
    keys, metrics = key_columns(groups), metric_columns(groups)
    headers = keys + ["status", "n"] + [h for _, h, _ in metrics] + ["vs baseline", "flags"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for g in groups:
        cells = [key_text(g, k) for k in keys] + [str(g["status"]), str(g["n"])]
        cells += [cell(g, m, f) for m, _, f in metrics]
        cells += [versus(g), "; ".join(filter(None, [g.get("flags"), g.get("error")]))]
        # names come from results.json: a `|` or a line break must not end the row
        lines.append("| " + " | ".join(" ".join(c.replace("|", "\\|").splitlines())
                                       for c in cells) + " |")
    return "\n".join(lines) + "\n"


def records(groups: list[dict]) -> list[dict]:
    """Plain records for CSV/JSON: every key, mean/std/ci95 of every metric, the test."""
    tail = ["speedup_form", "speedup_significant", "baseline", "pairs", "diff_vs_baseline",
            "p_value", "p_adj", "flags", "seeds", "run", "error"]
    out = []
    for g in groups:
        keys = [k for k in g if k not in _NON_KEY]
        rec = {k: g.get(k) for k in keys + ["status", "n"]}
        if rec.get("target") == OWN:
            rec["target"] = key_text(g, "target")
        for m in stats.METRICS:
            for s in ("mean", "std", "ci95"):
                value = g.get(f"{m}_{s}")
                rec[f"{m}_{s}"] = value if _finite(value) else None
        for k in tail:
            value = g.get(k)
            rec[k] = None if isinstance(value, float) and not math.isfinite(value) else value
        out.append(rec)
    return out


def csv_text(groups: list[dict]) -> str:
    recs = records(groups)
    if not recs:
        return ""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(recs[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(recs)
    return buffer.getvalue()


def write(groups: list[dict], out_dir: str | Path,
          formats: tuple[str, ...] = ("md", "csv", "json")) -> list[Path]:
    out_dir, paths = Path(out_dir), []
    for ext in formats:
        path = out_dir / f"comparison.{ext}"
        if ext == "json":
            files.write_json(path, records(groups))
        else:
            files.write_text(path, markdown(groups) if ext == "md" else csv_text(groups))
        paths.append(path)
    return paths


def best_per_target(groups: list[dict]) -> set[int]:
    """Indices of the highest mean final accuracy (lowest mean final perplexity, for language
    models) per (model, dataset, target)."""
    best: dict[tuple, int] = {}
    for i, g in enumerate(groups):
        metric = g.get("_judged", "final_acc")
        value = g.get(f"{metric}_mean")
        if g["status"] != "ok" or not _finite(value):
            continue
        goodness = -value if metric == "final_ppl" else value
        where_ = (g.get("model"), g.get("dataset"), str(g.get("target")))
        if where_ not in best or goodness > best[where_][1]:
            best[where_] = (i, goodness)
    best = {k: i for k, (i, _) in best.items()}
    return set(best.values()) if len({g.get("strategy") for g in groups}) > 1 else set()


def _terminal_versus(g: dict, shared: str | None) -> str:
    """`versus` for the terminal: with one baseline for every row its name is in the header,
    and a cell is the difference and the adjusted p-value only (the files keep both)."""
    if shared is None or not g.get("baseline"):
        return versus(g)
    fmt = "{:+.3f}" if g.get("_judged") == "final_ppl" else "{:+.4f}"
    text = fmt.format(g["diff_vs_baseline"])
    return text + (f" p={g['p_adj']:.2g}" if _finite(g.get("p_adj")) else "") + significance(g)


def terminal_cell(g: dict, metric: str, fmt: str) -> str:
    """A narrow cell: ± std on the final metric only, the speedup without its interval (the
    files have both for every column)."""
    if metric in ("final_acc", "final_ppl"):
        return cell(g, metric, fmt)
    text = _fmt(g.get(f"{metric}_mean"), fmt)
    return speedup_cell(g, text, fmt, spread=False) if metric == "speedup" and text else text


def _width(table: Table) -> int:
    """The widest line of `table` rendered without a width limit."""
    wide = Console(width=10_000, file=_io.StringIO(), color_system=None)
    with wide.capture() as captured:
        wide.print(table)
    return max(map(cell_len, captured.get().splitlines()), default=0)


def show(groups: list[dict], title: str = "prunebench comparison",
         console: Console | None = None) -> None:
    """The rich table, as wide as the console: the key columns that vary (the constant ones
    go in the title), then the metrics in TERMINAL's order of priority, as many as fit; the
    first ones, the paired test and any flags always (cells cut short rather than wrapped
    where even those do not fit). comparison.md/csv/json keep every column and every std."""
    console = console or stdout
    keys = key_columns(groups)
    same = [k for k in keys if len({str(g.get(k)) for g in groups}) == 1] if len(groups) > 1 \
        else []
    keys = [k for k in keys if k not in same]
    if same:
        title += "\n" + ", ".join(f"{k}={groups[0].get(k)}" for k in same)
    # a varying variant joins its strategy's cell ("gradient/snip"): one narrow key column
    joined = "strategy" in keys and "variant" in keys
    keys = [k for k in keys if not (joined and k == "variant")]

    def key_cell(g: dict, k: str) -> str:
        text = key_text(g, k)
        return f"{text}/{g['variant']}" if joined and k == "strategy" and g.get("variant") \
            else text

    shown = [c for c in metric_columns(groups) if c[0] in TERMINAL]
    shown.sort(key=lambda c: TERMINAL.index(c[0]))
    required = [c for c in shown if c[0] in ALWAYS_SHOWN]
    optional = [c for c in shown if c[0] not in ALWAYS_SHOWN]
    baselines = {g["baseline"] for g in groups if g.get("baseline")}
    shared = next(iter(baselines)) if len(baselines) == 1 else None
    notes = ["; ".join(filter(None, [g.get("flags"), g.get("error")] + (
        [g["status"]] if g["status"] != "ok" else []))) for g in groups]
    best = best_per_target(groups)

    def build(extra: list) -> Table:
        metrics = [c for c in metric_columns(groups) if c in required or c in extra]
        left_out = len(shown) - len(metrics)
        caption = "bold green: best final accuracy (lowest perplexity) at its target"
        if left_out:
            caption += f"; {left_out} more columns in comparison.md/csv/json"
        table = Table(title=title, caption=caption)
        for k in keys:
            table.add_column(k, justify="right" if k == "target" else "left")
        table.add_column("n", justify="right")
        for _, header, _ in metrics:
            table.add_column(header, justify="right")
        if baselines:
            table.add_column(f"vs {shared}" if shared else "vs baseline", justify="right")
        if any(notes):
            table.add_column("flags / status")
        for column in table.columns:  # a row is one line: cut a cell short, never wrap it
            column.no_wrap, column.overflow = True, "ellipsis"
        for i, g in enumerate(groups):
            style = "bold green" if i in best else (None if g["status"] == "ok" else "red")
            cells = [key_cell(g, k) for k in keys] + [str(g["n"])] + [
                terminal_cell(g, m, f) for m, _, f in metrics]
            cells += [_terminal_versus(g, shared)] if baselines else []
            cells += [notes[i]] if any(notes) else []
            # cells come from files anyone may have written: escape rich markup like "[/]"
            table.add_row(*[escape(c) for c in cells], style=style)
        return table

    extra = list(optional)
    table = build(extra)
    while extra and _width(table) > console.width:
        extra.pop()
        table = build(extra)
    console.print(table)


def task_columns(results: dict) -> list[tuple[str, str]]:
    """(task, metric) of every zero-shot task a phase ran: acc_norm where the harness gives
    it (the LLM-pruning papers' choice), else acc, else the task's first metric."""
    columns: dict[str, str] = {}
    for phase in ("dense", "pruned", "final"):
        for task, metrics in ((results.get(phase) or {}).get("tasks") or {}).items():
            names = [k for k in metrics if "stderr" not in k]
            preferred = [k for k in ("acc_norm", "acc") if k in names]
            if names and task not in columns:
                columns[task] = (preferred or names)[0]
    return list(columns.items())


def show_run(results: dict) -> None:
    """One run: a row per phase (dense, pruned, final) and the time each took."""
    timing = results.get("timing", {})
    seconds = {"dense": timing.get("train_s"), "pruned": timing.get("prune_s"),
               "final": timing.get("finetune_s"),
               "quantized": _sum(_get(results, "compress", "quantize_s"),
                                 _get(results, "compress", "finetune_s"))}
    latency = results.get("latency") or {}
    speed = measured_speed(latency)
    one = {"n": 1, **{k: speed[k] for k in ("speedup_form", "speedup_significant")},
           **{f"{k}_mean": speed[k] for k in ("speedup_low", "speedup_high")}}
    caption = None
    if speed["speedup"] is not None:
        text = speedup_cell(one, f"{speed['speedup']:.2f}x", "{:.2f}")
        caption = (f"speedup vs dense {text} ({speed['speedup_form']} form, "
                   f"{latency.get('speedup_at')})")
    table = Table(title=f"prunebench: {results.get('status')}", caption=caption)
    judged = "perplexity" if "perplexity" in (results.get("dense") or {}) else "accuracy"
    tasks = task_columns(results)  # eval.tasks: one column per lm-evaluation-harness task
    for header in ("phase", judged, *(f"{t} {m}" for t, m in tasks), "loss", "sparsity",
                   "nonzero / params", "time s"):
        table.add_column(header, justify="left" if header == "phase" else "right")
    fmt = "{:.3f}" if judged == "perplexity" else "{:.4f}"
    for phase in ("dense", "pruned", "final", "quantized"):
        m = results.get(phase)
        if not m:
            continue
        scores = [_fmt(_get(m, "tasks", t, metric), "{:.4f}") for t, metric in tasks]
        table.add_row(phase, _fmt(m.get(judged), fmt), *scores, f"{m['loss']:.4f}",
                      f"{m['sparsity']:.4f}", f"{m['nonzero']:,} / {m['params']:,}",
                      _fmt(seconds[phase], "{:.2f}"))
    baseline = _get(results, "baseline", "final", judged)
    if baseline is not None:
        table.add_row("random same density", fmt.format(baseline), *[""] * (len(tasks) + 4))
    stdout.print(table)
