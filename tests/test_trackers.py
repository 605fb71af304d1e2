"""Experiment trackers (logger=...): what each wrote, read back through its own reader, equals
results.json; a resumed run continues the same tracker run with each epoch once; a sweep is
one MLflow parent with its runs below; a locked store costs one line, not the run."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import BIN, run_cli

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

TINY = ["train.epochs=2", "finetune.epochs=2"]
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made once (the migrations take seconds)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    subprocess.run([str(BIN / "python"), "-c",
                    f"from mlflow.tracking import MlflowClient;"
                    f"MlflowClient('sqlite:///{path}').search_experiments()"],
                   check=True, capture_output=True)
    return path


def store(tmp_path: Path, empty_store: Path) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("prunebench")
    return client, client.search_runs([experiment.experiment_id])


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def tensorboard_scalars(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def wandb_records(run_dir: Path) -> list:
    """Every record of the run's offline `.wandb` files (wandb's LevelDB-style log of
    protobuf `Record`s: a 7-byte header, then chunks of crc32, length, type in 32 KiB
    blocks), parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # too little room left in the block: padding
                pos += 32768 - pos % 32768
                continue
            crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind == 0 and length == 0:
                continue
            assert zlib.crc32(bytes([kind]) + chunk) == crc, "corrupt wandb record"
            pending += chunk
            if kind in (1, 4):  # FULL or LAST: a whole record
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
                pending = b""
    return records


def wandb_history(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def epochs_logged(rows: list[dict], phase: str) -> list[int]:
    return sorted(row["global_step"] for row in rows if f"{phase}/loss" in row)


def test_every_logger_reads_back_what_results_json_says(tmp_path, empty_store):
    uri = store(tmp_path, empty_store)
    out = tmp_path / "run"
    run_cli([f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'cache'}", *TINY,
             "logger=[csv,tensorboard,mlflow,wandb]", f"logger.tracking_uri={uri}"],
            cwd=tmp_path, env=ENV)
    results = json.loads((out / "results.json").read_text())
    epochs = {phase: len(history) for phase, history in results["history"].items()}
    assert epochs == {"train": 2, "finetune": 2}
    per_epoch = results["gradients"]["train"]["epochs"][0]["steps"]

    # MLflow, through MlflowClient on the SQLite store
    client, [run] = mlflow_runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "l1"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.metrics["summary/final/accuracy"] == pytest.approx(
        results["final"]["accuracy"])
    assert run.data.metrics["summary/final/sparsity"] == pytest.approx(
        results["final"]["sparsity"])
    assert run.data.metrics["summary/final/effective_flops"] == results["final"][
        "effective_flops"]
    assert steps(client, run.info.run_id, "train/loss") == [per_epoch, 2 * per_epoch]
    assert steps(client, run.info.run_id, "finetune/loss") == [3 * per_epoch, 4 * per_epoch]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id,
                                                                "finetune/loss"),
                                      key=lambda m: m.step)]
    assert losses == pytest.approx([h["loss"] for h in results["history"]["finetune"]])
    norms = client.get_metric_history(run.info.run_id, "train/grad_norm_max")
    assert sorted(m.value for m in norms) == pytest.approx(sorted(
        e["norm_max"] for e in results["gradients"]["train"]["epochs"]))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "config.yaml"} <= artifacts
    assert run.data.tags["checkpoint.final"] == str((out / "checkpoints" / "final.pt").resolve())

    # TensorBoard, through its EventAccumulator
    acc = tensorboard_scalars(out / "tensorboard")
    for phase, count in epochs.items():
        assert len(acc.Scalars(f"{phase}/accuracy")) == count
    assert [e.value for e in acc.Scalars("train/accuracy")] == pytest.approx(
        [h["accuracy"] for h in results["history"]["train"]])
    [final] = acc.Scalars("summary/final/accuracy")
    assert final.value == pytest.approx(results["final"]["accuracy"])
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    # W&B, from the offline run files
    records = wandb_records(out)
    rows = wandb_history(records)
    assert epochs_logged(rows, "train") == [per_epoch, 2 * per_epoch]
    assert epochs_logged(rows, "finetune") == [3 * per_epoch, 4 * per_epoch]
    config = {item.key: json.loads(item.value_json)
              for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["strategy.amount"] == results["config"]["strategy"]["amount"]
    summaries = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                 for r in records if r.WhichOneof("record_type") == "summary"
                 for item in r.summary.update}
    assert summaries["summary/final/accuracy"] == pytest.approx(results["final"]["accuracy"])

    # csv: metrics.csv in the run folder
    lines = (out / "metrics.csv").read_text().splitlines()
    assert sum(",finetune/loss," in line for line in lines) == 2
    assert f",summary/final/accuracy,{results['final']['accuracy']}" in lines


def test_logger_options_compose_alone_and_as_a_list():
    from hydra import compose, initialize_config_module

    from prunebench.cli import available, check_choices
    from prunebench.config import schema
    from prunebench.results.trackers import specs

    schema.register()
    with initialize_config_module("prunebench.conf", version_base="1.3"):
        assert specs(compose("config").logger) == {}  # none is the default
        for name in set(available("logger")) - {"none"}:
            assert list(specs(compose("config", [f"logger={name}"]).logger)) == [name]
        both = compose("config", ["logger=[mlflow,wandb]", "logger.experiment=x"]).logger
    assert list(specs(both)) == ["mlflow", "wandb"]
    assert both.mlflow.experiment == both.wandb.project == "x"
    assert "unknown logger 'nope'" in check_choices(["logger=[csv,nope]"])


def wait_for(predicate, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError


def test_resumed_run_continues_the_same_tracker_runs_with_each_epoch_once(tmp_path,
                                                                          empty_store):
    uri = store(tmp_path, empty_store)
    out = tmp_path / "run"
    args = [str(BIN / "prunebench"), f"hydra.run.dir={out}", "cache.enabled=false",
            "train.epochs=1", "finetune.epochs=3", "train.batch_size=16", "train.threads=1",
            "logger=[tensorboard,mlflow,wandb]", f"logger.tracking_uri={uri}"]
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def finetuning_logged() -> bool:  # an epoch of fine-tuning is in the tracker files
        try:
            state = json.loads((out / "tracking.json").read_text())
        except (OSError, ValueError):
            return False
        return "finetune" in state["logged"]

    wait_for(finetuning_logged, proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    first_ids = json.loads((out / "tracking.json").read_text())["trackers"]
    client, [run] = mlflow_runs(uri)
    assert run.info.status == "KILLED"

    subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok"
    per_epoch = results["gradients"]["train"]["epochs"][0]["steps"]
    expected = {"train": [per_epoch], "finetune": [per_epoch * k for k in (2, 3, 4)]}

    client, [run] = mlflow_runs(uri)  # one MLflow run, the same id, finished
    assert run.info.run_id == first_ids["mlflow"]["run_id"]
    assert run.info.status == "FINISHED"
    for phase, steps_expected in expected.items():
        assert steps(client, run.info.run_id, f"{phase}/loss") == steps_expected
    acc = tensorboard_scalars(out / "tensorboard")
    for phase, steps_expected in expected.items():
        assert sorted(e.step for e in acc.Scalars(f"{phase}/loss")) == steps_expected
    records = wandb_records(out)
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {
        first_ids["wandb"]["id"]}
    rows = wandb_history(records)
    for phase, steps_expected in expected.items():
        assert epochs_logged(rows, phase) == steps_expected


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, empty_store) -> tuple[str, Path]:
    """A two-run sweep tracked in MLflow: (store URI, sweep folder)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    uri, folder = store(tmp_path, empty_store), tmp_path / "sweep"
    run_cli(["-m", f"hydra.sweep.dir={folder}", f"cache.dir={tmp_path / 'cache'}", *TINY,
             "logger=mlflow", f"logger.tracking_uri={uri}", "strategy=l1,random"],
            cwd=tmp_path)
    return uri, folder


def test_sweep_is_one_mlflow_parent_with_a_run_per_job(sweep):
    client, runs = mlflow_runs(sweep[0])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.status == "FINISHED"
    assert {c.data.params["strategy.name"] for c in children} == {"l1", "random"}
    assert "comparison.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for child in children:  # the second job's dense model came from the cache: still logged
        results = json.loads((Path(child.data.tags["prunebench.run_dir"]) /
                              "results.json").read_text())
        assert len(steps(client, child.info.run_id, "train/loss")) == 2
        assert child.data.metrics["summary/final/accuracy"] == pytest.approx(
            results["final"]["accuracy"])


class Page(HTMLParser):
    """Tables (rows of (text, class) cells), images and <details> of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.details, self.links = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ["", attrs.get("class")]
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "details":
            self.details.append("")
        self.links += [v for k, v in attrs.items() if k in ("src", "href")
                       and not v.startswith("data:")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None


def test_html_report_is_one_page_with_tables_plots_and_configs(sweep, tmp_path):
    folder = sweep[1]
    run_cli([str(folder), "--format", "html", "--out", str(tmp_path)],
            cwd=tmp_path, script="prunebench-report")
    page = Page()
    page.feed((tmp_path / "comparison.html").read_text())
    assert page.links == []  # self-contained: nothing to fetch
    comparison, runs = page.tables
    header = [text for text, _ in comparison[0]]
    final = header.index("final acc")
    results = {json.loads(p.read_text())["config"]["strategy"]["name"]: json.loads(p.read_text())
               for p in folder.glob("*/results.json")}
    rows = {row[header.index("strategy")][0]: row for row in comparison[1:]}
    assert set(rows) == {"l1", "random"}
    for name, row in rows.items():
        assert float(row[final][0]) == pytest.approx(results[name]["final"]["accuracy"], abs=1e-4)
    winner = max(results, key=lambda n: results[n]["final"]["accuracy"])
    assert rows[winner][final][1] == "best"
    assert [row[final][1] for name, row in rows.items() if name != winner] == [None]
    # the plots the sweep wrote as files, embedded as PNG
    assert len(page.images) == len(list(folder.glob("*.png"))) > 0
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(runs) == 3 and len(page.details) == 2  # each run's config, on demand
    assert all("strategy.name: " in row[-1][0] for row in runs[1:])


def test_locked_store_costs_one_line_and_the_run_finishes(tmp_path):
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the store
    try:
        out = tmp_path / "run"
        proc = run_cli([f"hydra.run.dir={out}", "cache.enabled=false", "train.epochs=1",
                        "finetune.epochs=1", "logger=mlflow",
                        f"logger.tracking_uri=sqlite:///{db}"], cwd=tmp_path)
    finally:
        holder.rollback()
        holder.close()
    assert json.loads((out / "results.json").read_text())["status"] == "ok"
    assert "logger mlflow" in proc.stdout + proc.stderr  # said on the console, once:
    [log] = out.glob("*.log")  # the job's log has it unwrapped
    [line] = [line for line in log.read_text().splitlines() if "logger mlflow" in line]
    assert "database is locked" in line and line.endswith("the run goes on without it")
