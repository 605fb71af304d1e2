"""Stop requests: SIGTERM, SIGINT and SIGUSR1 only set a flag; safe points raise Interrupted.

Torch-free and at the bottom of the package, so training, the console's progress bars and
the CLI may all ask `stop_if_requested()` at their safe points.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_requested: int | None = None  # the signal of a pending stop request


class Interrupted(BaseException):
    """A stop request reached a safe point. A BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way records it as a failure."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _request_stop(signum: int, frame) -> None:
    global _requested
    if _requested is not None:  # asked twice: stop now (the last epoch-start state is kept)
        raise Interrupted(signum)
    _requested = signum
    log.warning("%s: stopping after the current step (send it again to stop at once)",
                signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn stop signals into a flag for the duration; signals something else already
    handles (submitit's SIGUSR1 requeue on Slurm) are left to it."""
    global _requested
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                installed[sig] = signal.signal(sig, _request_stop)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)
        _requested = None


def stop_if_requested(agree: Callable[[int], int] | None = None) -> None:
    """A safe point: raise Interrupted if a stop signal arrived.

    `agree`: at a point every rank of a distributed run passes in step (a training step),
    distributed.max_int, so that all stop at the same step even if the signal reached them
    between two steps.
    """
    requested = agree(_requested or 0) if agree is not None else _requested
    if requested:
        raise Interrupted(requested)
