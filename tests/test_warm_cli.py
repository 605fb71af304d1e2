"""The test harness's fork server (tests/warm_cli.py) keeps serving when the test process's
environment changes. Libraries the test files import set variables that IMPORT_TIME_ENV
covers (collecting test_activation.py leaves TORCHINDUCTOR_CACHE_DIR set, test_compress.py
KMP_INIT_AT_FORK and KMP_DUPLICATE_LIB_OK); before this, every CLI run of a full suite's
worker after collection then fell back to a fresh interpreter (4-5 CPU-s each, not 0.3)."""

from __future__ import annotations

import os

from helpers import WARM, run_cli


def test_an_environment_changed_in_the_test_process_restarts_the_server(monkeypatch, tmp_path):
    served = []
    run = WARM.run
    monkeypatch.setattr(WARM, "run", lambda *a, **k: served.append(a[1]) or run(*a, **k))
    monkeypatch.setenv("KMP_INIT_AT_FORK", "FALSE")  # as importing a library may do
    proc = run_cli(["strategy.amount=1.5", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                   check=False)
    assert proc.stderr.strip().splitlines()[-1].startswith("prunebench: error: strategy.amount")
    assert served == ["prunebench"]  # a fork of the server, not a fresh interpreter
    assert WARM.env["KMP_INIT_AT_FORK"] == "FALSE"  # which now imports under the new variable
    # a run that sets such a variable itself still gets an interpreter of its own
    env = dict(os.environ)
    assert WARM.runs_like_a_fresh_process("prunebench", [], env)
    assert not WARM.runs_like_a_fresh_process("prunebench", [], {**env, "OMP_NUM_THREADS": "3"})
    assert not WARM.runs_like_a_fresh_process("prunebench", ["--help"], env)
