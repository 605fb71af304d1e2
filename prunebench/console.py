"""One rich console shared by logging, progress bars and tables, so they never interleave."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def log_handler(level: int | str = logging.NOTSET) -> RichHandler:
    """Factory named by conf/hydra/job_logging/rich.yaml (logging's dictConfig `()` key)."""
    return RichHandler(console=console, level=level, show_path=False, rich_tracebacks=False)


def progress() -> Progress:
    """A transient bar on the shared console; invisible when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
