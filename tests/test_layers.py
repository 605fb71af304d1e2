"""The package's layers import downward only, and no import cycle exists.

The graph is read from the source (ast), imports inside functions included: a lazy import
keeps a heavy library off the start-up path, it must not hide a cycle. Imports under
`if TYPE_CHECKING:` never run and are left out. The layers are docs/design.md's.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import prunebench

PACKAGE = Path(prunebench.__file__).parent

# bottom to top; a module may import its own layer and the ones below (docs/design.md)
LAYERS = [
    ("values", ["config.errors", "config.values", "config.schema", "config.messages",
                "config.inputs", "config.reference", "runstate.signals", "runstate.files",
                "runstate.folder", "console", "ranks", "results.objective"]),
    ("parts", ["distributed", "data", "models", "training", "pruning.masks", "pruning.units",
               "pruning.macs", "pruning.memory", "pruning.sparse", "pruning.semi_structured",
               "compress.file", "compress.quantize", "compress.shared"]),
    ("criteria", ["strategies"]),
    ("session", ["pruning.session", "pruning.replay", "pruning.journal", "pruning.recovery",
                 "pruning.compact", "pruning.latency", "runstate.resume", "runstate.progress",
                 "config.checks"]),
    ("schedules", ["schedules"]),
    ("run helpers", ["build", "compress", "pruning.controls", "runstate.cache", "results"]),
    ("runner", ["runner", "sensitivity", "config.preflight"]),
    ("entry", ["cli", "__main__", ""]),  # "": the package's __init__
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    return skipped


def imports_of(path: Path, names: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports (relative to the package: 'pruning.session')."""
    tree = ast.parse(path.read_text())
    skipped = type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from prunebench.x import y`: module y, else x
                full = f"{node.module}.{alias.name}"
                found.add(full if full.removeprefix("prunebench.") in names else node.module)
    inside = {f.removeprefix("prunebench").lstrip(".") for f in found
              if f == "prunebench" or f.startswith("prunebench.")}
    return {m for m in inside if m in names}


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {m: imports_of(p, names) - {m} for m, p in names.items()}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".") or (
                prefix == "" and module == "")
            if matches and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"prunebench.{module} is in no layer: add it to LAYERS"
    return rank


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["runner"], "the graph was not read"
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_layers_import_downward():
    upward = []
    for module, imported in import_graph().items():
        for target in imported:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """A function-level import counts (the check would miss the cycles it hid otherwise)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from prunebench import runner\n"
                      "if TYPE_CHECKING:\n    from prunebench import cli\n")
    assert imports_of(source, module_names()) == {"runner"}
