"""The pytest fixture the CLI tests share; everything else tests share is in helpers.py."""

from __future__ import annotations

import json

import pytest
from helpers import BIN, FAST, ROOT, WARM, checkpoint_accuracy, run_cli  # noqa: F401 (older imports)


@pytest.fixture(scope="session", autouse=True)
def warm_cli_server():
    """The warm CLI server (tests/warm_cli.py) ends with the session, its runs' CPU time
    counted in pytest's own (`/usr/bin/time`)."""
    yield
    WARM.stop()


@pytest.fixture
def cli(tmp_path):
    """run(args) -> (results dict, run folder) for a single run in a fresh folder."""

    def run(args: list[str], *, fast: bool = True, name: str = "run"):
        out = tmp_path / name
        run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'cache'}",
                 *(FAST if fast else []), *args], cwd=tmp_path)
        return json.loads((out / "results.json").read_text()), out

    return run
