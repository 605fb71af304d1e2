"""The comparison table a sweep prints fits the terminal: columns chosen by its width."""

from __future__ import annotations

import io

from helpers import run_cli
from rich.cells import cell_len
from rich.console import Console

from prunebench.results import table

HEADERS_AT_100 = ("strategy", "target", "n", "final acc", "Δ vs dense", "sparsity", "speedup",
                  "vs l1")


def table_lines(text: str) -> list[str]:
    """The lines of the rich table in `text` (box-drawing rows), log lines left out."""
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


def headers(lines: list[str]) -> list[str]:
    header = next(line for line in lines if line.startswith("┃"))
    return [h.strip() for h in header.strip("┃").split("┃")]


def test_make_run_table_fits_100_columns_with_the_main_columns(tmp_path):
    """make run's sweep (fewer epochs) printed on a 100-column terminal."""
    proc = run_cli(["-m", "+experiment=compare", "train.epochs=2", "finetune.epochs=1",
                    "inference.measure=true", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"cache.dir={tmp_path / 'cache'}"], cwd=tmp_path, env={"COLUMNS": "100"})
    lines = table_lines(proc.stdout)
    assert len(lines) == 4 + 5, proc.stdout  # top, header, rule, 5 rows, bottom
    assert max(map(cell_len, lines)) <= 100
    assert headers(lines)[:2] == ["strategy", "target"]  # a varying variant joins its strategy
    assert any("gradient/snip" in line for line in lines)
    assert set(HEADERS_AT_100) <= set(headers(lines))
    # the full set stays in the files
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    for header in ("eff. MACs", "prune s", "ft epochs", "dense acc", "nonzero"):
        assert header in md


def groups(n_strategies: int = 3) -> list[dict]:
    """Comparison rows as stats.group makes them, with every column filled."""
    rows = []
    for i in range(n_strategies):
        g = {"model": "lenet300", "dataset": "fashion_mnist", "strategy": f"crit{i}",
             "variant": "v", "target": 0.9, "status": "ok", "n": 3, "_judged": "final_acc"}
        for metric, _, _ in table.ALWAYS + table.OPTIONAL:
            g[f"{metric}_mean"], g[f"{metric}_std"] = 0.5 + i / 10, 0.0123
        if i:
            g.update(baseline="crit0", diff_vs_baseline=-0.01 * i, p_value=0.04, pairs=3)
        rows.append(g)
    return rows


def render(width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    table.show(groups(), console=console)
    return table_lines(console.file.getvalue())


def test_columns_follow_the_width_and_rows_never_wrap():
    shown = {}
    for width in (60, 80, 100, 140, 240, 400):
        lines = render(width)
        assert len(lines) == 4 + 3  # one line per row: nothing wrapped
        assert max(map(cell_len, lines)) <= width
        shown[width] = headers(lines)
    # wider terminals show more columns, in the same order, keys first
    assert len(shown[60]) <= len(shown[100]) < len(shown[240]) <= len(shown[400])
    assert shown[400][:2] == ["strategy", "n"]
    for header in ("final acc", "Δ vs dense", "sparsity", "speedup", "vs crit0"):
        assert header in shown[100]
    assert "eff. MACs" in shown[400] and "shuffled mask" in shown[400]
    assert [h for h in shown[400] if h in shown[100]] == shown[100]
