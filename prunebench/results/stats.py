"""Seed statistics: group runs that differ only in `seed`, summarize, test against a baseline.

A group's cells are mean, sample standard deviation (ddof=1) and the half-width of the 95%
confidence interval of the mean from Student's t distribution. The paired test compares a
group's final accuracy (final perplexity for language models, where lower is better) with the
baseline strategy's group at the same model, dataset, schedule and target, pairing runs by
seed (scipy.stats.ttest_rel). Every table's p-values are also adjusted together for multiple
comparisons (Benjamini-Hochberg, `adjust`). Runs whose status is not "ok" are
never averaged in: each is returned as a row of its own.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats as sps

# the identity of a comparison row; everything else that varies (but seed) is split out too
KEY = ("model", "dataset", "strategy", "variant", "granularity", "scope", "schedule", "target")
# the baseline is matched on these (strategy, variant, granularity, scope may differ)
MATCH = ("model", "dataset", "schedule", "target", "settings")
METRICS = ("dense_acc", "pruned_acc", "final_acc", "delta_acc", "sparsity", "sparsity_all",
           "compression",
           "nonzero", "params", "flops", "effective_flops", "latency_ms", "dense_latency_ms",
           "speedup", "speedup_low", "speedup_high", "forward_ms",
           "prune_s", "prune_peak_mb", "finetune_epochs", "finetune_steps",
           "random_pruned_acc", "random_final_acc", "gain_vs_random",
           "shuffled_final_acc", "reinit_final_acc", "pruned_before_bn_acc",
           "random_p", "shuffled_p", "reinit_p", "random_p_adj", "shuffled_p_adj",
           "reinit_p_adj",
           "grad_max", "clipped",
           "dense_ppl", "pruned_ppl", "final_ppl", "delta_ppl", "random_final_ppl",
           "quantized_acc", "quantized_ppl", "size_kb", "compression_x")
BUDGET = ("finetune_epochs", "finetune_steps")
CONTROLS = ("random", "shuffled", "reinit")  # <control>_final_acc -> <control>_p
# every paired test a table carries, and where its Benjamini-Hochberg adjusted p-value goes
ADJUSTED = {"p_value": "p_adj", **{f"{c}_p_mean": f"{c}_p_adj_mean" for c in CONTROLS}}
ALPHA = 0.05  # a difference is marked significant when its adjusted p-value is below this


def summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, std, ci95 half-width); std and ci95 are NaN for a single value."""
    x = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))
    return mean, std, half


def paired(values: dict, reference: dict) -> tuple[float, float, int]:
    """(mean paired difference, two-sided p-value, pairs) over the draws both sides have."""
    seeds = sorted((s for s in values.keys() & reference.keys()
                    if not _isnan(values[s]) and not _isnan(reference[s])), key=str)
    if not seeds:
        return math.nan, math.nan, 0
    a = np.array([values[s] for s in seeds], dtype=float)
    b = np.array([reference[s] for s in seeds], dtype=float)
    diff = float((a - b).mean())
    if len(seeds) < 2 or np.all(a - b == (a - b)[0]):  # no variance: the test is undefined
        return diff, math.nan, len(seeds)
    return diff, float(sps.ttest_rel(a, b).pvalue), len(seeds)


def group(rows: list[dict], group_by: tuple[str, ...] | None = None,
          baseline: str | None = "l1") -> list[dict]:
    """Comparison rows: one per group of ok runs, one per failed or diverged run.

    `group_by` None groups runs that differ only in seed (KEY plus any other setting that
    varies across the rows, shown in `settings`); given keys pool everything else.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    keys = tuple(group_by) if group_by else KEY + ("settings",)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        groups[tuple(_hashable(r.get(k)) for k in keys)].append(r)

    out = [_summarize(members, keys) for members in groups.values()]
    if baseline:
        _compare(out, groups, keys, baseline)
    adjust(out)
    for r in rows:
        if r.get("status") != "ok":
            out.append({**{k: r.get(k) for k in keys}, "status": r.get("status"), "n": 0,
                        "seeds": _seed_text([r]), "run": r.get("run"),
                        "error": r.get("error", ""), "flags": ""})
    return sorted(out, key=lambda g: tuple(_sort_key(g.get(k)) for k in keys) + (
        g["status"] != "ok",))


def _summarize(members: list[dict], keys: tuple[str, ...]) -> dict:
    first = members[0]
    row = {k: first.get(k) for k in keys}
    row |= {"status": "ok", "n": len(members), "seeds": _seed_text(members),
            "run": ";".join(str(m.get("run")) for m in members), "error": ""}
    for metric in METRICS:
        mean, std, ci = summary([m.get(metric) for m in members])
        row |= {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": ci}
    flags = []
    if any(len({_hashable(m.get(b)) for m in members}) > 1 for b in BUDGET):
        flags.append("budgets differ across seeds")
    draws = [draw(m) for m in members]
    if len(set(draws)) < len(draws):
        flags.append("repeated seeds")
    row["flags"] = "; ".join(flags)
    row |= _speed_forms(members)
    # what the group is judged by: final accuracy, or final perplexity for language models
    judged = "final_ppl" if any(m.get("final_ppl") is not None for m in members) \
        else "final_acc"
    row["_judged"] = judged
    row["_per_seed"] = _per_seed(members, judged)
    for control in CONTROLS:  # the run against its own controls, paired by seed
        _, p, _ = paired(row["_per_seed"],
                         _per_seed(members, f"{control}_{judged}"))
        row[f"{control}_p_mean"] = p
    row["_budget"] = {b: _hashable(first.get(b)) for b in BUDGET}
    return row


def _speed_forms(members: list[dict]) -> dict:
    """The deployed forms the group's speedups were measured on, and whether every one of
    them was significant (None: no run measured one)."""
    measured = [m for m in members if m.get("speedup") is not None]
    forms = sorted({str(m.get("speedup_form")) for m in measured})
    significant = [m.get("speedup_significant") for m in measured
                   if m.get("speedup_form") != "dense"]
    return {"speedup_form": ",".join(forms) or None,
            "speedup_significant": all(significant) if significant else None}


def _compare(out: list[dict], groups: dict, keys: tuple[str, ...], baseline: str) -> None:
    """Paired difference and p-value of final accuracy (or perplexity) against the
    baseline's group."""
    match = [k for k in MATCH if k in keys]
    candidates = [g for g in out if g.get("strategy") == baseline]
    for g in out:
        g |= {"baseline": "", "diff_vs_baseline": math.nan, "p_value": math.nan, "pairs": 0}
        if g.get("strategy") == baseline or "strategy" not in keys:
            continue
        refs = [c for c in candidates if all(_hashable(c.get(k)) == _hashable(g.get(k))
                                             for k in match)]
        if not refs:
            continue
        # prefer the baseline run with the same scope and granularity
        refs.sort(key=lambda c: (c.get("scope") != g.get("scope"),
                                 c.get("granularity") != g.get("granularity")))
        ref = refs[0]
        if ref["_judged"] != g["_judged"]:  # a classifier is never compared with an LM
            continue
        diff, p, pairs = paired(g["_per_seed"], ref["_per_seed"])
        g |= {"baseline": _label(ref), "diff_vs_baseline": diff, "p_value": p, "pairs": pairs}
        if g["_budget"] != ref["_budget"]:
            g["flags"] = "; ".join(filter(None, [g["flags"], "budget differs from baseline"]))


def adjust(rows: list[dict]) -> None:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control) over every
    paired test in the table, against the baseline and against the controls alike: a table
    of a dozen tests at 0.05 would otherwise show a 'significant' difference by chance alone
    about half the time. The raw p-values stay; significance marks read the adjusted ones."""
    cells = [(r, k) for r in rows for k in ADJUSTED if isinstance(r.get(k), float)
             and math.isfinite(r[k])]
    for r in rows:
        for k, adjusted in ADJUSTED.items():
            if k in r:
                r[adjusted] = math.nan
    if cells:
        values = sps.false_discovery_control([r[k] for r, k in cells], method="bh")
        for (r, k), value in zip(cells, values, strict=True):
            r[ADJUSTED[k]] = float(value)


def draw(run: dict) -> tuple:
    """What a run is one draw of: its model seed and its calibration seed. Runs that differ
    in either fold into one row (n = seeds x calibration draws) and pair on both."""
    return run.get("seed"), run.get("calibration_seed")


def _per_seed(members: list[dict], metric: str) -> dict:
    """(seed, calibration seed) -> value, averaging runs that share both (possible when
    pooling)."""
    by_seed = defaultdict(list)
    for m in members:
        value = m.get(metric)
        if value is not None and not _isnan(value):
            by_seed[draw(m)].append(value)
    return {s: float(np.mean(v)) for s, v in by_seed.items()}


def _label(row: dict) -> str:
    parts = [row.get("strategy"), row.get("variant")]
    return "/".join(str(p) for p in parts if p not in (None, ""))


def _seed_text(members: list[dict]) -> str:
    """`0,1,2`, or with calibration draws `0,1 x calibration 5,6`."""
    def text(values):
        values = set(values) - {None}
        return ",".join(str(s) for s in sorted(values, key=lambda s: (not isinstance(s, int),
                                                                      s)))
    seeds = text(m.get("seed") for m in members)
    calibration = text(m.get("calibration_seed") for m in members)
    return f"{seeds} x calibration {calibration}" if calibration else seeds


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _sort_key(value):
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, str(value))
