"""`prunebench-report PATH --format html`: one self-contained comparison.html.

The comparison table (the best value of each metric column marked), the plots embedded as
base64 PNG, and one row per run with its full config behind a <details> toggle. No scripts,
no external files: it opens in any browser, from disk or as an e-mail attachment.
"""

from __future__ import annotations

import base64
import math
import tempfile
from html import escape
from pathlib import Path

from prunebench.results import table
from prunebench.runstate import files

# columns where lower is better; the others (accuracy, sparsity, compression) higher
LOWER_BETTER = {"flops", "effective_flops", "prune_s", "prune_peak_mb", "latency_ms",
                "dense_latency_ms", "finetune_epochs", "finetune_steps", "nonzero", "grad_max",
                "clipped"}
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
div.wide { overflow-x: auto; }
th { background: #f0f0f0; } td.key { text-align: left; }
td.best { background: #d8f5d0; font-weight: bold; }
tr.failed td { color: #a00; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { text-align: left; font-size: 12px; margin: 0; }
"""


def best_cells(groups: list[dict], metrics: list[tuple[str, str, str]]) -> set[tuple[int, str]]:
    """(row, metric) of each column's best mean among the finished groups at the same model,
    dataset and target (all ties marked; a column all alike there marks nothing)."""
    best = set()
    peers: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        if g["status"] == "ok":
            peers.setdefault((g.get("model"), g.get("dataset"), str(g.get("target"))),
                             []).append(i)
    for members in peers.values():
        for metric, _, _ in metrics:
            values = {i: groups[i].get(f"{metric}_mean") for i in members
                      if table._finite(groups[i].get(f"{metric}_mean"))}
            if len(set(values.values())) < 2:  # nothing to choose between
                continue
            target = (min if metric in LOWER_BETTER else max)(values.values())
            best |= {(i, metric) for i, v in values.items() if math.isclose(v, target)}
    return best


def comparison_table(groups: list[dict]) -> str:
    keys, metrics = table.key_columns(groups), table.metric_columns(groups)
    best = best_cells(groups, metrics)
    head = [*keys, "status", "n", *(h for _, h, _ in metrics), "vs baseline", "flags"]
    lines = ['<table class="comparison">',
             "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for i, g in enumerate(groups):
        cells = [f'<td class="key">{escape(table._fmt(g.get(k), "{}"))}</td>' for k in keys]
        cells += [f'<td class="key">{escape(str(g["status"]))}</td>', f"<td>{g['n']}</td>"]
        cells += [f'<td{" class=best" if (i, m) in best else ""}>'
                  f"{escape(table.cell(g, m, f))}</td>" for m, _, f in metrics]
        notes = "; ".join(filter(None, [g.get("flags"), g.get("error")]))
        cells += [f"<td>{escape(table.versus(g))}</td>", f'<td class="key">{escape(notes)}</td>']
        css = "" if g["status"] == "ok" else ' class="failed"'
        lines.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    return "\n".join(lines + ["</table>"])


def runs_table(rows: list[dict]) -> str:
    head = ["run", "status", "strategy", "target", "seed", "final acc", "sparsity", "config"]
    lines = ['<table class="runs">',
             "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        config = "\n".join(f"{k}: {v}" for k, v in sorted(r.get("_config", {}).items()))
        cells = [r["run"], r["status"], r.get("strategy"), r.get("target"), r.get("seed")]
        lines.append(
            "<tr>" + "".join(f'<td class="key">{escape(table._fmt(c, "{}"))}</td>' for c in cells)
            + f"<td>{escape(table._fmt(r.get('final_acc'), '{:.4f}'))}</td>"
            + f"<td>{escape(table._fmt(r.get('sparsity'), '{:.4f}'))}</td>"
            + f'<td class="key"><details><summary>config</summary><pre>{escape(config)}</pre>'
            "</details></td></tr>")
    return "\n".join(lines + ["</table>"])


def embedded_plots(rows: list[dict], groups: list[dict]) -> str:
    from prunebench.results import plots  # matplotlib loads only here

    with tempfile.TemporaryDirectory() as folder:
        images = []
        for path in plots.write_all(rows, groups, folder):
            data = base64.b64encode(Path(path).read_bytes()).decode()
            images.append(f'<figure><img alt="{escape(path.stem)}" '
                          f'src="data:image/png;base64,{data}"><figcaption>'
                          f"{escape(path.stem)}</figcaption></figure>")
    return "\n".join(images)


def page(rows: list[dict], groups: list[dict], title: str) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<h2>Comparison</h2>",
        "<p>Mean ± std over seeds; at each model, dataset and target, the best value of each "
        "column is marked.</p>",
        f'<div class="wide">{comparison_table(groups)}</div>',
        "<h2>Plots</h2>", embedded_plots(rows, groups),
        f"<h2>Runs ({len(rows)})</h2>", f'<div class="wide">{runs_table(rows)}</div>',
        "</body></html>", ""])


def write(rows: list[dict], groups: list[dict], out_dir: Path, title: str) -> Path:
    path = Path(out_dir) / "comparison.html"
    files.write_text(path, page(rows, groups, title))
    return path
