"""An Optuna search kept in SQLite: stopped after 2 of 4 trials, the same command finishes
the same study with 4 trials."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

import optuna
from helpers import BIN


def completed(db) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(db, timeout=1)) as con:  # closed: no lock left held
            return con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # tables not made yet, or busy
        return 0


def test_stopped_search_continues_the_same_study(tmp_path):
    db = tmp_path / "study.db"
    command = [str(BIN / "prunebench"), "-m", "+experiment=threshold_search",
               "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage=sqlite:///{db}",
               "hydra.sweeper.study_name=stopped", f"cache.dir={tmp_path / 'cache'}",
               "train.epochs=2", "finetune.epochs=1", "objective.min_sparsity=0.5"]
    first = subprocess.Popen([*command, f"hydra.sweep.dir={tmp_path / 'first'}"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while completed(db) < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGTERM)  # during the third trial
    assert first.wait(timeout=120) != 0
    finished_first = completed(db)
    assert finished_first in (2, 3)  # the signal may land after the third trial's last step

    second = subprocess.run([*command, f"hydra.sweep.dir={tmp_path / 'second'}"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name="stopped", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    # the second command ran only the missing trials, each a finished run
    runs = [json.loads(p.read_text()) for p in (tmp_path / "second").glob("*/results.json")]
    assert len(runs) == 4 - finished_first
    assert all(r["status"] == "ok" for r in runs)
    thresholds = {t.params["strategy.threshold"] for t in done}
    assert {r["config"]["strategy"]["threshold"] for r in runs} <= thresholds

