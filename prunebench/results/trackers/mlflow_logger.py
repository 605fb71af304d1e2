"""logger=mlflow: one MLflow run per prunebench run, under one parent run per sweep.

    prunebench -m logger=mlflow strategy=l1,random
    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db

The store is SQLite in the output folder unless `logger.tracking_uri` names another (any
MLflow URI). Artifacts go next to an SQLite store (`outputs/mlartifacts/`). Everything goes
through `MlflowClient` (no global active run), so a sweep's jobs in one process stay apart. A
locked or unreachable store is found before any work and costs one log line.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from prunebench.results.trackers.base import RunInfo, Tracker

STATUS = {"ok": "FINISHED", "interrupted": "KILLED"}  # diverged, failed: FAILED
BATCH = 100  # MLflow's limit of params per log_batch call


class StoreUnavailable(RuntimeError):
    pass


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, tracking_uri: str | None = "sqlite:///outputs/mlflow.db",
                 experiment: str = "prunebench"):
        self.tracking_uri = tracking_uri or "sqlite:///outputs/mlflow.db"
        self.experiment = experiment
        self.run_id: str | None = None
        self.last_step = 0

    def client(self):
        check_store(self.tracking_uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server: fail soon
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (table migrations) are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
        # a store that breaks mid-run (read-only, locked): MLflow logs each failed query with
        # its SQL and two tracebacks before raising; the runner says it in one line, once
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self, client) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        path = sqlite_path(self.tracking_uri)
        location = (path.parent / "mlartifacts").resolve().as_uri() if path else None
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # another job created it first
            return client.get_experiment_by_name(self.experiment).experiment_id

    def start(self, run: RunInfo) -> None:
        self.mlflow = self.client()
        self.run_id = run.saved.get("run_id")
        self.last_step = run.saved.get("last_step", 0)
        if self.run_id:  # resumed: the same MLflow run goes on
            self.mlflow.update_run(self.run_id, status="RUNNING")
            return
        tags = {"prunebench.run_dir": str(run.out_dir.resolve())}
        if run.sweep.get("parent_run_id"):
            tags["mlflow.parentRunId"] = run.sweep["parent_run_id"]
        created = self.mlflow.create_run(self.experiment_id(self.mlflow), run_name=run.name,
                                         tags=tags)
        self.run_id = created.info.run_id

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH):
            self.mlflow.log_batch(self.run_id, params=items[i:i + BATCH])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.mlflow.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, step) for k, v in values.items()])
        self.last_step = max(self.last_step, step)

    def finish(self, summary, artifacts, checkpoints, status) -> None:
        from mlflow.entities import RunTag

        self.metrics({f"summary/{k}": v for k, v in summary.items()}, self.last_step)
        self.mlflow.log_batch(self.run_id, tags=[
            RunTag(f"checkpoint.{k}", v) for k, v in checkpoints.items()])
        for path in artifacts:
            self.mlflow.log_artifact(self.run_id, str(path))
        self.mlflow.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))

    def state(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                "last_step": self.last_step}

    def start_sweep(self, sweep_dir: Path, name: str) -> dict:
        client = self.client()
        parent = client.create_run(self.experiment_id(client), run_name=name,
                                   tags={"prunebench.sweep_dir": str(sweep_dir.resolve())})
        return {"parent_run_id": parent.info.run_id, "tracking_uri": self.tracking_uri}

    def end_sweep(self, sweep: dict, artifacts: list[Path]) -> None:
        client = self.client()
        for path in artifacts:
            client.log_artifact(sweep["parent_run_id"], str(path))
        client.set_terminated(sweep["parent_run_id"])


def sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def check_store(uri: str, timeout: float = 2.0) -> None:
    """An SQLite store we cannot write, or that another process holds locked, fails here in
    `timeout` seconds (MLflow itself would retry for minutes)."""
    path = sqlite_path(uri)
    if path is None or str(path) == ":memory:":
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=timeout)) as db:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, or waits `timeout` for it
            db.rollback()
    except (OSError, sqlite3.Error) as err:
        raise StoreUnavailable(f"tracking store {uri} is unavailable ({err})") from None
