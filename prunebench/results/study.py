"""Hydra callback registered in conf/config.yaml: Optuna searches that continue.

With `hydra.sweeper.storage` set (an SQLite file: `sqlite:///outputs/optuna.db`) and a
`hydra.sweeper.study_name`, rerunning the same command continues the study: `n_trials` is the
study's total, so only the trials still missing run. A trial that was running when the search
was stopped is marked failed and its parameters are queued first, so it is redone.

Two fixes for the installed plugin stack: hydra-optuna-sweeper runs `n_trials` *more* trials
on every call (we lower it by those already finished before the sweeper is built), and
optuna 2.x does not commit its schema stamp under SQLAlchemy 2 (we stamp a new SQLite
storage in a committed transaction, after which optuna opens it normally).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


class ResumableStudy(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper")
        if (sweeper is None or "optuna" not in str(sweeper.get("_target_", ""))
                or not sweeper.get("storage") or not sweeper.get("study_name")):
            return
        import optuna

        if "://" in str(sweeper.storage):  # a database URL (not a storage object)
            stamp_schema(sweeper.storage)
        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        except KeyError:  # a new study: the sweeper creates it
            return
        done, redo = 0, []
        for trial in study.get_trials(deepcopy=False):
            if trial.state == optuna.trial.TrialState.RUNNING:  # stopped with its search
                set_failed(study, trial)
                redo.append(trial.params)
            else:
                done += 1
        for params in redo:
            study.enqueue_trial(params)
        left = max(0, sweeper.n_trials - done)
        log.info("study %s in %s: %d of %d trials done%s; running %d more",
                 sweeper.study_name, sweeper.storage, done, sweeper.n_trials,
                 f", {len(redo)} interrupted (queued again)" if redo else "", left)
        with read_write(config), open_dict(config):
            config.hydra.sweeper.n_trials = left


def stamp_schema(url: str) -> None:
    """Create the storage's tables and commit alembic's stamp of optuna's schema (optuna 2.x
    under SQLAlchemy 2 leaves its own stamp uncommitted, and then refuses the storage it
    just made). Done with SQLAlchemy and alembic directly: an optuna RDBStorage built here
    would keep its uncommitted stamp, and with it the database's write lock."""
    import os

    import alembic.config
    import alembic.migration
    import alembic.script
    import sqlalchemy
    from optuna.storages._rdb import models

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up lines
    if url.startswith("sqlite:///"):  # sqlite:///outputs/optuna.db: make outputs/
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            models.BaseModel.metadata.create_all(connection)
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                folder = os.path.dirname(models.__file__)
                config = alembic.config.Config(os.path.join(folder, "alembic.ini"))
                config.set_main_option("script_location", os.path.join(folder, "alembic"))
                script = alembic.script.ScriptDirectory.from_config(config)
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()


def set_failed(study, trial) -> None:
    from optuna.trial import TrialState

    storage = study._storage
    if hasattr(storage, "set_trial_state_values"):  # optuna >= 3
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    else:
        storage.set_trial_state(trial._trial_id, TrialState.FAIL)
