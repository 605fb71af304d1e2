"""The documentation cannot drift: the site builds strictly, the configuration reference covers
every schema key with a help text, and the command examples marked in the docs still run."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from helpers import BIN, ROOT, run_cli
from omegaconf import OmegaConf

from prunebench.config import reference, schema

DOCS = ROOT / "docs"
# `<!-- docs-check: OVERRIDES -->` before a code block: its prunebench commands are run here,
# each with OVERRIDES appended (tiny budgets: later overrides win in Hydra)
SCRIPTS = ("prunebench", "prunebench-report", "prunebench-sensitivity")
CHECK = re.compile(r"^<!-- docs-check:(?P<overrides>[^>]*)-->$")


def checked_examples() -> list[tuple[str, list[str], list[str]]]:
    """(where, commands, overrides) of every marked code block of docs/ and the README
    (indented blocks; backslash continuations joined, comments dropped, lines that are not a
    prunebench command skipped: output, other tools)."""
    out = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = CHECK.match(line.strip())
            if not m:
                continue
            block, j = [], i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                block.append(lines[j][4:])
                j += 1
            text = "\n".join(block).replace("\\\n", " ")
            commands = [c.removeprefix("$ ") for c in map(str.strip, text.splitlines()) if c]
            commands = [c for c in commands if c.split()[0] in SCRIPTS]
            out.append((f"{page.relative_to(ROOT)}:{i + 1}", commands, m["overrides"].split()))
    return out


EXAMPLES = checked_examples()


def test_some_examples_are_marked_for_checking():
    commands = [c for _, block, _ in EXAMPLES for c in block]
    assert len(commands) >= 12 and all(block for _, block, _ in EXAMPLES), EXAMPLES
    assert any(where.startswith("README.md") for where, _, _ in EXAMPLES)


def with_defaults(args: list[str], overrides: list[str]) -> list[str]:
    """args plus each override whose key the command does not set itself."""
    keys = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    return args + [o for o in overrides if o.split("=", 1)[0] not in keys]


@pytest.mark.parametrize("where, commands, overrides", EXAMPLES, ids=[w for w, _, _ in EXAMPLES])
def test_documented_commands_still_work(where, commands, overrides, tmp_path):
    """A block's commands run in order in one fresh folder, as a reader would type them
    (outputs/ and the cache land there, so a report finds the sweep before it); the runs get
    the marker's tiny budgets where they do not set those keys. A block marked `error` shows
    a mistake: each command must still end with one `prunebench: error:` line."""
    shows_error = overrides == ["error"]
    ended = 0.0  # when the last run ended
    for command in commands:
        script, *args = shlex.split(command, comments=True)
        is_run = script == "prunebench" and not any(
            a.startswith(("--help", "--cfg", "-h")) for a in args)
        args = with_defaults(args, overrides) if is_run and not shows_error else args
        # Hydra names a run's folder outputs/<date>/<H-M-S>, a second between its start and
        # end: the next run starts after the second the last one ended in, as a reader's does
        if is_run and int(time.time()) == int(ended):
            time.sleep(1 - time.time() % 1)
        proc = run_cli(args, cwd=tmp_path, script=script, check=not shows_error)
        ended = time.time() if is_run else ended
        if shows_error:
            assert proc.returncode != 0, f"{where}: {command} did not fail"
            assert proc.stderr.strip().splitlines()[-1].startswith("prunebench: error:"), \
                f"{where}: {command}\n{proc.stderr}"


def _flat_schema_keys(node, prefix="") -> set[str]:
    """Every leaf key of the structured schema, walked by OmegaConf itself."""
    keys = set()
    for key in node.keys() if OmegaConf.is_dict(node) else []:
        value = node._get_node(key)
        if OmegaConf.is_dict(value) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            keys |= _flat_schema_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_reference_covers_every_schema_key_with_a_help_text():
    leaves = {k.name for k in reference.schema_keys() if not k.node}
    assert leaves == _flat_schema_keys(OmegaConf.structured(schema.Config))
    assert reference.undocumented() == []
    text = reference.schema_markdown()
    for key in reference.schema_keys():
        if not key.node:
            assert f"`{key.name}`" in text
    assert "| `train.epochs` | `int` | `30` |" in text


def _hook():
    spec = importlib.util.spec_from_file_location("prunebench_docs",
                                                  DOCS / "hooks" / "prunebench_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Extra:
    documented: int = schema.key(1, "has a help text")
    bare: int = 2


@dataclasses.dataclass
class WithExtra(schema.Config):
    extra: Extra = schema.node(Extra, "a node added by someone")


def test_a_key_without_help_text_fails_the_docs_build(monkeypatch):
    pytest.importorskip("mkdocs")
    from mkdocs.exceptions import PluginError

    keys = reference.schema_keys(WithExtra)
    assert reference.undocumented(keys) == ["extra.bare"]
    monkeypatch.setattr(reference, "schema_keys", lambda: keys)
    with pytest.raises(PluginError, match="extra.bare"):
        _hook().config_schema()


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("material", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference_page = (tmp_path / "site" / "usage" / "configuration" / "index.html").read_text()
    assert "train.grad_clip.max_norm" in reference_page and "strategy=hessian" in reference_page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "higher = more important" in api  # Strategy.score's docstring, via mkdocstrings
    assert (BIN / "prunebench").exists()


# --- the benchmark tables: CSV files a scripts/bench_*.py wrote, included by the pages ---------
CSV_MARK = re.compile(r"^<!-- prunebench:csv (?P<path>\S+) -->$", re.M)


def included_tables() -> list:
    return sorted({DOCS / m["path"] for page in DOCS.rglob("*.md")
                   for m in CSV_MARK.finditer(page.read_text())})


def test_every_included_table_was_written_by_its_script():
    """Each CSV a page includes has the sidecar scripts/benchtable.py writes with it: the
    command (a scripts/bench_*.py that writes this file by default or was told to) and the
    commit of the measured code, a commit of this repository without uncommitted changes to
    what was measured."""
    tables = included_tables()
    assert len(tables) >= 9, tables
    for table in tables:
        meta = json.loads(table.with_suffix(".json").read_text())
        [script] = [a for a in shlex.split(meta["command"]) if a.startswith("scripts/bench_")]
        # its default file, or the one its command named (--csv)
        assert table.name in (ROOT / script).read_text() + meta["command"], (table, script)
        assert not meta["commit"].endswith("-dirty"), (table, meta["commit"])
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e",
                                f"{meta['commit']}^{{commit}}"], capture_output=True)
        assert known.returncode == 0, (table, meta["commit"])
        assert meta["date"] and meta["cores"] >= 1 and len(meta["load average"]) == 3


def test_a_script_writes_the_header_its_page_includes(tmp_path):
    """bench_overhead.py at a tiny size writes the table the Training page includes: same
    header, same rows, and its sidecar, through the hook's own rendering."""
    out = tmp_path / "bench_overhead.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_overhead.py"),
                           "--rounds", "2", "--steps", "1", "--csv", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = DOCS / "performance" / "data" / "bench_overhead.csv"
    assert page in included_tables()
    written, included = (list(csv.reader(p.read_text().splitlines())) for p in (out, page))
    assert written[0] == included[0]
    assert [r[0] for r in written[1:]] == [r[0] for r in included[1:]]  # the variants
    assert re.fullmatch(r"1\.00x \[1\.00, 1\.00\]", written[1][-1])  # dense against itself
    pytest.importorskip("mkdocs")
    rendered = _hook().csv_table(out)
    assert "scripts/bench_overhead.py --rounds 2 --steps 1" in rendered
