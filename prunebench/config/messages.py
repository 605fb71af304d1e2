"""Hydra's and OmegaConf's multi-line composition errors, condensed to the one line a user
needs: the key (or group) and what it allows. Used by cli.main()."""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf


def first_line(err: BaseException | None) -> str:
    text = str(err).strip() if err is not None else ""
    return text.splitlines()[0].strip() if text else ""


def options(group: str) -> list[str]:
    folder = resources.files("prunebench.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def schema_keys(parent: str) -> list[str]:
    from prunebench.config.schema import Config

    node = OmegaConf.structured(Config)
    node = OmegaConf.select(node, parent, default=None) if parent else node
    return [str(k) for k in node] if node is not None and hasattr(node, "keys") else []


def did_you_mean(key: str) -> str:
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, schema_keys(parent), n=1, cutoff=0.6)
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""


def condense(err: BaseException) -> str:
    """One line for a composition error (without the `prunebench: error: ` prefix)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(err)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        choices = list(err.options or []) or options(group)
        if group and choices:
            return (f"unknown {group} '{name}': choose {group}= one of {', '.join(choices)}")
        return f"config '{err.missing_cfg_file}' not found"
    if isinstance(err, OverrideParseException):
        bare = re.match(r"Error parsing override '([\w.]+)'", text)
        if bare and "missing EQUAL" in text:
            key = bare.group(1)
            choices = options(key)
            if choices:
                return f"'{key}' needs a value: {key}=NAME, one of {', '.join(choices)}"
            return f"'{key}' needs a value: {key}=VALUE"
        lines = text.strip().splitlines()
        return f"{lines[0]}: {lines[1]}" if len(lines) > 1 else lines[0]
    match = re.match(r"Could not override '([\w.]+)'", text)
    if match:
        key = match.group(1)
        return f"{key} is not a prunebench setting{did_you_mean(key)}"
    match = re.match(r"Error merging override (\S+?)=(.*)", first_line(err))
    cause = err.__cause__
    if match:
        key, value = match.groups()
        return f"{key.lstrip('+')}={value} is invalid: {first_line(cause) or first_line(err)}"
    match = re.match(r"In '([^']+)': Could not find '([^']+)'", text)
    if match:
        return f"{match.group(2)} not found (in {match.group(1)})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("raised while composing config:"):
        return f"{lines[0][:-1]}: {lines[1]}"  # the second line names the key
    return "; ".join(line for line in (first_line(err), first_line(cause)) if line)


def missing_search_path(args: list[str]) -> str | None:
    """One line for a `hydra.searchpath` / --config-dir folder that does not exist."""
    for i, arg in enumerate(args):
        paths = []
        if arg.startswith("hydra.searchpath="):
            value = arg.split("=", 1)[1].strip("[]")
            paths = [p.strip().strip("'\"") for p in value.split(",") if p.strip()]
        elif arg in ("--config-dir", "-cd") and i + 1 < len(args):
            paths = [args[i + 1]]
        elif arg.startswith("--config-dir="):
            paths = [arg.split("=", 1)[1]]
        for path in paths:
            key = "hydra.searchpath" if arg.startswith("hydra.") else "--config-dir"
            if path.startswith("pkg://"):
                if not package_exists(path.removeprefix("pkg://")):
                    return f"{key}: package {path} does not exist"
                continue
            folder = Path(path.removeprefix("file://")).expanduser()
            if not folder.is_dir():
                return f"{key}: folder {folder} does not exist"
    return None


def package_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name.replace("/", ".")) is not None
    except (ImportError, ValueError):
        return False
