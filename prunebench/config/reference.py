"""The configuration reference of the docs, generated from the schema and the group options.

The site's page is built from this at `mkdocs build` time (docs/hooks/prunebench_docs.py), so
it cannot drift from the code: every key of the structured schema (config/schema.py) with its
type, default and help text, then every option of every config group with the keys its YAML
sets and the comment written next to each. A schema key without a help text is an error: the
docs build fails and names it.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources

from omegaconf import MISSING

from prunebench.config import schema

GROUPS = (*schema.GROUPS, "logger")
REQUIRED = "set by the option"  # a MISSING default: each group option sets it
# `key: value   # comment` at the top level of a group option's YAML
YAML_KEY = re.compile(r"^(?P<key>[A-Za-z_][\w]*):\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<help>.*))?$")


@dataclass(frozen=True)
class Key:
    name: str       # dotted, e.g. train.grad_clip.max_norm
    type: str
    default: str
    help: str
    node: bool = False  # a section (train, strategy, ...) rather than a value


def _default(f) -> str:
    if f.default is not NO_DEFAULT:
        value = f.default
    elif f.default_factory is not NO_DEFAULT:
        value = f.default_factory()
    else:
        return ""
    if value == MISSING:
        return REQUIRED
    return value if isinstance(value, str) else json.dumps(value)  # YAML's null, true, []


def schema_keys(cls: type = schema.Config, prefix: str = "") -> list[Key]:
    """Every key of the schema, depth first, nodes before their keys."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        name, help_ = prefix + f.name, f.metadata.get("help", "")
        kind = hints[f.name]
        if is_dataclass(kind):
            out.append(Key(name, "node", "", help_, node=True))
            out += schema_keys(kind, name + ".")
        else:
            out.append(Key(name, str(f.type), _default(f), help_))
    return out


def undocumented(keys: list[Key] | None = None) -> list[str]:
    """Names of schema keys without a help text (schema.key(default, help) gives one)."""
    return [k.name for k in (keys or schema_keys()) if not k.help.strip()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(default: str) -> str:
    if default == REQUIRED:
        return f"*{default}*"
    return f"`{default}`" if default else ""


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def schema_markdown(keys: list[Key] | None = None) -> str:
    """One table of top-level keys, then one table per node."""
    keys = keys or schema_keys()
    sections: dict[str, list[Key]] = {"": []}
    helps = {}
    for k in keys:
        if k.node:
            sections.setdefault(k.name, [])
            helps[k.name] = k.help
        else:
            parent = next((s for s in sorted(sections, key=len, reverse=True)
                           if s and k.name.startswith(s + ".")), "")
            sections[parent].append(k)
    out = []
    for section, members in sections.items():
        if not members:
            continue
        title = "Top-level keys" if not section else f"`{section}`"
        out += [f"### {title}", ""]
        if section:
            out += [helps[section][:1].upper() + helps[section][1:] + ".", ""]
        out += ["| key | type | default | what it sets |", "|---|---|---|---|"]
        out += [_row(f"`{k.name}`", f"`{k.type}`", _default_cell(k.default), k.help)
                for k in members]
        out.append("")
    return "\n".join(out)


def option_keys(text: str) -> list[tuple[str, str, str]]:
    """(key, value, comment) of each top-level `key: value  # comment` line of a YAML file."""
    out = []
    for line in text.splitlines():
        m = YAML_KEY.match(line)
        if m and m["key"] not in ("defaults", "_target_", "name"):
            out.append((m["key"], m["value"], m["help"] or ""))
    return out


def _leading_comment(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def options_markdown(groups: tuple[str, ...] = GROUPS) -> str:
    """Every option of every group: its description and the keys its YAML sets."""
    conf = resources.files("prunebench.conf")
    out = []
    for group in groups:
        out += [f"### `{group}`", ""]
        for option in sorted(p for p in conf.joinpath(group).iterdir()
                             if p.name.endswith(".yaml")):
            text = option.read_text()
            out += [f"#### `{group}={option.name[:-5]}`", "", _leading_comment(text), ""]
            keys = option_keys(text)
            if keys:
                out += ["| key | YAML value | note |", "|---|---|---|"]
                out += [_row(f"`{group}.{k}`", f"`{v}`" if v else "(a node)", h)
                        for k, v, h in keys]
                out.append("")
    return "\n".join(out)
