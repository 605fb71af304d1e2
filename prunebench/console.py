"""One rich console shared by logging, progress bars and tables, so they never interleave."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.errors import LiveError
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prunebench.runstate.signals import stop_if_requested

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


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar for a long loop that is not training (scoring): yields advance(n). Each advance
    is also a safe point: a stop signal (Ctrl-C) ends the loop there, not minutes later.

    Inside another bar (pruning from a training step: gradual and dynamic schedules) a rich
    older than 14.1 allows no second live display; the loop then runs without its own bar.
    """
    bar = progress()
    try:
        bar.start()
    except LiveError:
        bar = None
    task = bar.add_task(description, total=total, status="") if bar else None

    def advance(n: int = 1) -> None:
        if bar:
            bar.advance(task, n)
        stop_if_requested()

    try:
        yield advance
    finally:
        if bar:
            bar.stop()
