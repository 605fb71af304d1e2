"""MkDocs hook (mkdocs.yml `hooks:`): the parts of the site generated from the code and data.

A page asks for them with an HTML comment on a line of its own:

    <!-- prunebench:config-schema -->     every key of the structured schema: type, default, help
    <!-- prunebench:config-options -->    every option of every config group and its YAML keys
    <!-- prunebench:csv PATH -->          a table of PATH (relative to docs/), a CSV file that a
                                          scripts/bench_*.py wrote, and under it the command,
                                          date, commit and load its sidecar PATH.json records

A schema key without a help text fails the build with its name (prunebench/config/schema.py:
declare it with `key(default, "help")`); so does a CSV file that is missing or empty, or
without its sidecar (scripts/benchtable.py writes both).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

from prunebench.config import reference

MARK = re.compile(r"^<!-- prunebench:(?P<what>[\w-]+)(?: (?P<arg>\S+))? -->$", re.M)


def config_schema() -> str:
    keys = reference.schema_keys()
    missing = reference.undocumented(keys)
    if missing:
        raise PluginError("schema keys without a help text (prunebench/config/schema.py: "
                          f"declare them with key(default, help)): {', '.join(missing)}")
    return reference.schema_markdown(keys)


def csv_table(path: Path) -> str:
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as e:
        raise PluginError(f"benchmark table {path} cannot be read: {e}") from e
    if len(rows) < 2:
        raise PluginError(f"benchmark table {path} has no rows")
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n\n" + provenance(path.with_suffix(".json")) + "\n"


def provenance(path: Path) -> str:
    """The line under a benchmark table: how, when and on what the script measured it."""
    try:
        p = json.loads(path.read_text())
        load = p["load average"]
        return (f"*Written by `{p['command']}` on {p['date']}, commit {p['commit']}, torch "
                f"{p['torch']}, {p['cores']} cores, load average {load[0]} / {load[1]} / "
                f"{load[2]} (1 / 5 / 15 min) when it finished.*")
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise PluginError(f"benchmark table {path.with_suffix('.csv')}: its sidecar {path} "
                          f"(written with it by scripts/benchtable.py) is missing or "
                          f"incomplete: {e!r}") from e


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"])

    def expand(m: re.Match) -> str:
        what = m["what"]
        if what == "config-schema":
            return config_schema()
        if what == "config-options":
            return reference.options_markdown()
        if what == "csv" and m["arg"]:
            return csv_table(docs / m["arg"])
        raise PluginError(f"{page.file.src_path}: unknown marker {m[0]}")

    return MARK.sub(expand, markdown)
