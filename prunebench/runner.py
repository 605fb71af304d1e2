"""The pipeline, and nothing else: each stage is one call into a module.

    train dense (or load it from the cache) -> schedule(prune, fine-tune) -> evaluate -> record
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from prunebench import build, compress, distributed
from prunebench.config import inputs
from prunebench.config.errors import ConfigError
from prunebench.data import batches, steps_per_epoch
from prunebench.models import checkpoint, own
from prunebench.pruning import controls, macs, recovery
from prunebench.pruning.masks import check_exclude, check_prunable, prunable_weights
from prunebench.pruning.replay import Replay
from prunebench.pruning.session import Session
from prunebench.results import after_training, emptiness, export, trackers
from prunebench.runstate import cache, files, folder, resume, signals
from prunebench.runstate.progress import Progress
from prunebench.schedules.iterative import rewind_epoch
from prunebench.training import zero_shot
from prunebench.training.determinism import set_deterministic
from prunebench.training.loop import Diverged, evaluate, fit, headline
from prunebench.training.telemetry import GradientStats

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run one experiment into `out_dir`; results.json is written whatever happens."""
    out_dir = Path(out_dir)
    results: dict = {"status": "failed", "config": OmegaConf.to_container(cfg, resolve=True)}
    progress = Progress()  # what the pipeline finished before a failure, kept in results.json
    state = resume.RunState(cfg, out_dir)
    # a folder holding another run is refused before anything is written into it; a bad
    # value leaves a folder that already held a run exactly as it was
    folder.check_owner(out_dir, state.config, cfg.resume)
    fresh = not (out_dir / "results.json").exists() and not state.path.exists()
    write = True
    tracking = trackers.Tracking()  # logger=...: experiment trackers, no-op until started
    try:
        inputs.check(cfg)
        build.check(cfg)
        export.check(cfg)
        zero_shot.check(cfg)
        compress.check(cfg)
        finished = state.open(cfg.resume, out_dir / "results.json")
        if finished is not None and state.after_training_changed(finished):
            write = False  # until the steps are done again, the finished results stay as they are
            if distributed.is_main():
                tracking = trackers.start(cfg, out_dir, resuming=True)
            results = after_training_again(cfg, out_dir, finished)
            write = True
            return results
        if finished is not None:
            results = finished
            return results
        if distributed.is_main():  # rank 0 talks to the trackers
            tracking = trackers.start(cfg, out_dir, resuming=state.saved is not None)
        with tracking.observing():
            results |= pipeline(cfg, out_dir, progress, state)
        results |= emptiness.warnings(results)
        results["status"] = "ok"
    except Diverged as err:
        results |= progress.results() | {
            "status": "diverged", "error": str(err),
            "diverged": {"phase": err.phase, "epoch": err.epoch, "step": err.step,
                         "what": err.what}}
        log.error("%s", err)
    except (signals.Interrupted, KeyboardInterrupt) as err:
        results |= progress.results() | {"status": "interrupted", "error": repr(err)}
        raise
    except ConfigError as err:
        results |= progress.results() | {"error": f"ConfigError: {err}"}
        write = fresh
        raise
    except Exception as err:
        results |= progress.results()
        results["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        results["traceback"] = traceback.format_exc()
        write = ranks_report(results, err, out_dir)
        raise
    finally:
        if write:
            files.write_json(out_dir / "results.json", results, any_rank=write == "mine")
        tracking.finish(results)
        if write and tracking.failed:  # a tracker that failed is recorded with the results
            results["failed_steps"] = [*results.get("failed_steps", []), *tracking.failed]
            files.write_json(out_dir / "results.json", results, any_rank=write == "mine")
        if results["status"] in resume.FINISHED:
            state.finish()
    return results


def ranks_report(results: dict, err: Exception, out_dir: Path) -> bool | str:
    """Whether this rank writes results.json for a failure: the rank whose error it is does
    ("mine" on a rank other than 0); rank 0 does for a peer that died without a word."""
    if not distributed.active() or isinstance(err, distributed.RankMismatch):
        return distributed.is_main()  # found by every rank: rank 0's report
    if not distributed.is_lost_peer(err):
        results |= {"rank": distributed.rank(), "launch": distributed.run_id()}
        return True if distributed.is_main() else "mine"
    return distributed.is_main() and not distributed.peer_reported(out_dir)


def pipeline(cfg: DictConfig, out_dir: Path, progress: Progress, state: resume.RunState) -> dict:
    start = time.perf_counter()
    device, data, model, selection = setup(cfg)
    schedule = build.schedule(cfg)
    schedule.check(cfg, data)  # a bad combination stops here, with its one line only
    log.info("%s: %s parameters, %s MACs per %s", cfg.model.name,
             f"{sum(p.numel() for p in model.parameters()):,}",
             f"{macs.count(model, data.input_shape, data.input_dtype)['flops']:,}",
             "window" if data.task == "lm" else "image")

    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_start = time.perf_counter()
    dense_model(cfg, model, data, device, progress, state)
    dense = progress.dense
    model.load_state_dict(dense["state_dict"])
    train_s = time.perf_counter() - train_start

    session = Session(build.session_settings(cfg), model, data, selection, out_dir,
                      rewind_states={"init": init_state, **dense["snapshots"]},
                      replay=Replay(state, progress),
                      loss_fn=recovery.teacher_loss(cfg.finetune.distill.alpha,
                                                    cfg.finetune.distill.temperature,
                                                    model))  # distillation from dense
    progress.session = session
    session.record("dense")
    schedule.run(session)
    session.replay.check_done()
    session.record("final")
    extra = {"allocation": selection.summary(session.masks.masks, session.report)}
    if compress.wanted(cfg):  # quantized phase (+ the compressed file): the model shipped
        extra |= compress.run(cfg, session, dense["state_dict"], out_dir)
    # the controls train on every rank; what follows measures and writes, on rank 0 alone
    extra |= controls.run_all(cfg, data, dense["state_dict"], session, out_dir)
    if not distributed.is_main():
        return {**session.journal.phases, **extra}
    if cfg.strategy.granularity == "neuron":  # whole units removed: build the smaller model
        from prunebench.pruning import compact
        extra["compact"] = compact.run(cfg, model, data, out_dir)
    # exports and latency: a step that fails is recorded in failed_steps, the run goes on
    extra |= after_training.run(cfg, model, dense["state_dict"], data, out_dir)
    recorded = session.journal.results()  # phases, events, history, timing, cost, budget
    return {
        **recorded,
        **extra,
        "timing": {"train_s": train_s, **recorded["timing"],
                   "total_s": time.perf_counter() - start},
        "history": {"train": dense["history"], **recorded["history"]},
        "gradients": progress.gradients(),
        "cache": {"hit": progress.cache_hit, "dense_train_s": dense["train_s"]},
        **({"protocol": data.protocol} if data.protocol else {}),  # a language model's eval
        "ranks": distributed.world(),  # processes the run trained on (torchrun, Slurm tasks)
        **({"checkpoint": dense["checkpoint"]} if "checkpoint" in dense else {}),
    }


def after_training_again(cfg: DictConfig, out_dir: Path, finished: dict) -> dict:
    """A finished run's results with the steps after training done again under this
    command's keys (export.*, inference.*, logger), from the folder's checkpoints: nothing is
    trained. A run that diverged has no final model: only its config is updated."""
    results = {k: v for k, v in finished.items() if k not in after_training.RESULT_KEYS}
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    if finished.get("status") != "ok" or not distributed.is_main():  # rank 0 writes files
        return results
    steps = after_training.Steps()
    loaded = steps.attempt("checkpoints", final_model, cfg, out_dir)
    if loaded is None:
        return results | {"failed_steps": steps.failed}
    model, dense_state, data = loaded
    return results | after_training.run(cfg, model, dense_state, data, out_dir)


def final_model(cfg: DictConfig, out_dir: Path) -> tuple:
    """(final model, dense state_dict, data) of a finished run, read from its checkpoints."""
    _, data, model, _ = setup(cfg)
    folder = out_dir / "checkpoints"
    dense_state = torch.load(folder / "dense.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(torch.load(folder / "final.pt", map_location="cpu", weights_only=True))
    return model, dense_state, data


def setup(cfg: DictConfig) -> tuple:
    """(device, data, model, selection) of a run: the data on the device, the model built
    after seeding with cfg.seed (the pipeline and prunebench-sensitivity start alike)."""
    # before any CUDA work: cuBLAS reads its workspace setting once
    set_deterministic(cfg.get("deterministic", False))
    device = distributed.local_device(build.device(cfg.device))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build.dataset(cfg).to(device)
    torch.manual_seed(cfg.seed)
    model = build.model(cfg, data).to(device)
    selection = build.selection(cfg)
    # a model without prunable layers, or without logits, or an exclude pattern naming no
    # layer (or every layer) stops the run here, before any training; so does a layer the
    # criterion cannot prune
    check_prunable(model, selection.exclude, cfg.model._target_)
    check_exclude(model, selection.exclude)
    example = next(batches(data, data.train, 2))[0]
    own.check_output(cfg.model._target_, model, example, data)
    selection.criterion.check_model(model, prunable_weights(model, selection.exclude))
    if selection.granularity == "neuron":  # and so does a model whose units cannot be traced
        selection.trace(model, example)
    return device, data, model, selection


def dense_model(cfg: DictConfig, model, data, device, progress: Progress,
                state: resume.RunState) -> None:
    """Fill progress.dense: from the interrupted run, a given checkpoint, the cache, or by
    training."""
    resumed = state.resumed_dense()
    if resumed is not None:  # dense training finished before the interruption
        progress.dense, progress.cache_hit = resumed
    elif cfg.dense.checkpoint:  # a trained model: never trained here, never cached
        progress.dense = checkpoint.dense_entry(
            cfg.dense.checkpoint, model, OmegaConf.select(cfg, "dense.checkpoint_prefix"))
    elif cfg.train.epochs == 0 or not cfg.cache.enabled:
        progress.dense = train_dense(cfg, model, data, progress, state)
    else:
        progress.dense, progress.cache_hit = cache.load_or_train(
            cfg.cache.dir, cache.key(cfg, device),
            lambda: train_dense(cfg, model, data, progress, state))
        if progress.cache_hit:
            log.info("dense model loaded from cache %s", cfg.cache.dir)


def train_dense(cfg: DictConfig, model, data, progress: Progress,
                state: resume.RunState) -> dict:
    """Train the dense model (continuing an interrupted training); returns the dense entry."""
    start = time.perf_counter()
    optimizer = build.optimizer(cfg, model)
    scheduler = build.lr_scheduler(cfg, optimizer, cfg.train.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    gradients, snapshots, start_epoch, prefix = GradientStats(), {}, 0, []
    saved = state.take("train")
    if saved is not None:  # interrupted: continue from its last epoch start
        resume.restore_training(saved, model, optimizer, scheduler, generator)
        start_epoch, prefix = saved["epoch"], saved["history"]
        gradients.load_state_dict(saved["gradients"])
        snapshots.update(saved["snapshots"])
    progress.train_gradients = gradients
    history = prefix + fit(
        model, data, optimizer, scheduler, build.fit_settings(cfg, cfg.train.epochs), generator,
        "train", on_step=snapshot_keeper(cfg, model, data, snapshots), gradients=gradients,
        start_epoch=start_epoch,
        on_epoch=resume.dense_saver(state, model, optimizer, scheduler, generator, prefix,
                                    gradients, snapshots))
    log.info("dense: test %s", headline(evaluate(model, data, data.test)))
    return {"state_dict": cpu_copy(model), "history": history, "gradients": gradients.summary(),
            "snapshots": snapshots, "train_s": time.perf_counter() - start}


def snapshot_keeper(cfg: DictConfig, model, data, snapshots: dict):
    """fit's on_step keeping the weights after dense epoch k in `snapshots` (lottery-ticket
    rewinding to epoch k), or None when no schedule rewinds there."""
    epoch = rewind_epoch(cfg)
    if not epoch:
        return None
    at_step = epoch * steps_per_epoch(data.train, cfg.train.batch_size)

    def keep(step: int) -> None:
        if step == at_step:
            snapshots[f"epoch_{epoch}"] = cpu_copy(model)

    return keep


def cpu_copy(model) -> dict:
    # clone: on CPU .cpu() aliases the live weights, which pruning then changes
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
