"""The pipeline, and nothing else: each stage is one call into a module.

    train dense (or load it from the cache) -> schedule(prune, fine-tune) -> evaluate -> record
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from prunebench import build
from prunebench.config import checks
from prunebench.models import checkpoint
from prunebench.pruning import controls, latency, macs, recovery
from prunebench.pruning.session import Session
from prunebench.results import export, trackers
from prunebench.runstate import cache, files, resume
from prunebench.strategies import allocation
from prunebench.training.loop import Diverged, evaluate, fit, headline
from prunebench.training.telemetry import GradientStats

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run one experiment into `out_dir`; results.json is written whatever happens."""
    out_dir = Path(out_dir)
    results: dict = {"status": "failed", "config": OmegaConf.to_container(cfg, resolve=True)}
    partial: dict = {}  # what the pipeline finished before a failure, kept in results.json
    state = resume.RunState(cfg, out_dir)
    tracking = trackers.Tracking()  # logger=...: experiment trackers, no-op until started
    try:
        checks.check(cfg)
        finished = state.open(cfg.resume, out_dir / "results.json")
        if finished is not None:
            results = finished
            return results
        tracking = trackers.start(cfg, out_dir, resuming=state.saved is not None)
        with tracking.observing():
            results |= pipeline(cfg, out_dir, partial, state)
        results["status"] = "ok"
    except Diverged as err:
        results |= partial_results(partial) | {
            "status": "diverged", "error": str(err),
            "diverged": {"phase": err.phase, "epoch": err.epoch, "step": err.step,
                         "what": err.what}}
        log.error("%s", err)
    except (resume.Interrupted, KeyboardInterrupt) as err:
        results |= partial_results(partial) | {"status": "interrupted", "error": repr(err)}
        raise
    except Exception as err:
        results |= partial_results(partial)
        results["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        results["traceback"] = traceback.format_exc()
        raise
    finally:
        files.write_json(out_dir / "results.json", results)
        tracking.finish(results)
        if results["status"] in resume.FINISHED:
            state.finish()
    return results


def partial_results(partial: dict) -> dict:
    session = partial.get("session")
    if session is None:
        return {"gradients": gradient_summaries(partial)} if partial else {}
    return {**session.phases, "events": session.events, "history": session.history,
            "gradients": gradient_summaries(partial)}


def gradient_summaries(partial: dict) -> dict:
    """Gradient telemetry per phase: dense training, then the session's phases."""
    session = partial.get("session")
    train = partial.get("train_gradients")  # live while training, then the (cached) summary
    return {"train": train.summary() if isinstance(train, GradientStats) else train,
            **({p: g.summary() for p, g in session.gradients.items()} if session else {})}


def pipeline(cfg: DictConfig, out_dir: Path, partial: dict, state: resume.RunState) -> dict:
    start = time.perf_counter()
    device = build.device(cfg.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build.dataset(cfg).to(device)
    torch.manual_seed(cfg.seed)
    model = build.model(cfg, data).to(device)
    strategy, schedule = build.strategy(cfg), build.schedule(cfg)
    schedule.check(cfg, data)  # a bad combination stops here, with its one line only
    log.info("%s: %s parameters, %s MACs per %s", cfg.model.name,
             f"{sum(p.numel() for p in model.parameters()):,}",
             f"{macs.count(model, data.input_shape, data.input_dtype)['flops']:,}",
             "window" if data.task == "lm" else "image")

    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_start = time.perf_counter()
    resumed = state.take("session")
    if resumed is not None:  # dense training finished before the interruption
        dense, cache_hit = resumed["dense"], resumed["cache_hit"]
    else:
        dense, cache_hit = dense_weights(cfg, model, data, device, partial, state)
    partial["train_gradients"] = dense.get("gradients")
    state.carry = {"dense": dense, "cache_hit": cache_hit}
    model.load_state_dict(dense["state_dict"])
    train_s = time.perf_counter() - train_start

    session = Session(cfg, model, data, strategy, out_dir)
    session.replay = resume.Replay(state)
    partial["session"] = session
    session.rewind_states = {"init": init_state, **dense.get("snapshots", {})}
    session.record("dense")
    session.loss_fn = recovery.teacher_loss(cfg, model)  # distillation from the dense model
    schedule.run(session)
    session.replay.check_done()
    session.record("final")
    extra = {"allocation": allocation.summary(strategy, session.masks.masks)}
    if cfg.strategy.granularity == "neuron":  # whole units removed: build the smaller model
        from prunebench.pruning import compact
        extra["compact"] = compact.run(cfg, model, data, out_dir)
    if OmegaConf.select(cfg, "export.semi_structured", default=False):
        from prunebench.pruning import semi_structured
        extra["semi_structured"] = semi_structured.run(model, data.test.x[:cfg.train.batch_size])
    if export.wanted(cfg):  # ONNX / safetensors files, checked after writing
        extra["exports"] = export.run(cfg, model, data, out_dir)
    if cfg.inference.measure:  # dense, masked, sparse (CSR) and compact forms timed
        extra["latency"] = latency.run(cfg, model, dense["state_dict"], data, out_dir)
    extra |= controls.run_all(cfg, data, dense["state_dict"], session, out_dir)
    return {
        **session.phases,
        **extra,
        "cost": session.cost,
        "budget": session.budget,
        "timing": {"train_s": train_s, **session.timing,
                   "total_s": time.perf_counter() - start},
        "events": session.events,
        "history": {"train": dense["history"], **session.history},
        "gradients": gradient_summaries(partial),
        "cache": {"hit": cache_hit, "dense_train_s": dense["train_s"]},
        "calibration": session.calibration,
        **({"checkpoint": dense["checkpoint"]} if "checkpoint" in dense else {}),
    }


def dense_weights(cfg: DictConfig, model, data, device, partial: dict,
                  run_state: resume.RunState) -> tuple[dict, bool]:
    """Train the dense model, or load it from the cache; returns (entry, cache hit)."""
    if cfg.dense.checkpoint:  # a trained model: never trained here, never cached
        return checkpoint.dense_entry(cfg.dense.checkpoint, model), False

    def train() -> dict:
        start = time.perf_counter()
        optimizer = build.optimizer(cfg, model)
        scheduler = build.lr_scheduler(cfg, optimizer, cfg.train.epochs)
        generator = torch.Generator().manual_seed(cfg.seed)
        gradients, snapshots = GradientStats(), {}
        partial["train_gradients"] = gradients
        snapshot_step = cache.rewind_epoch(cfg) * math.ceil(len(data.train) / cfg.train.batch_size)

        def keep_snapshot(step: int) -> None:  # weights for lottery-ticket rewinding
            if step == snapshot_step:
                snapshots[f"epoch_{cache.rewind_epoch(cfg)}"] = {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

        start_epoch, prefix = 0, []
        saved = run_state.take("train")
        if saved is not None:  # interrupted: continue from its last epoch start
            resume.restore_training(saved, model, optimizer, scheduler, generator)
            start_epoch, prefix = saved["epoch"], saved["history"]
            gradients = resume.restored_stats(saved["gradients"])
            partial["train_gradients"] = gradients
            snapshots.update(saved["snapshots"])
        history = prefix + fit(
            model, data, optimizer, scheduler, build.fit_settings(cfg, cfg.train.epochs), generator,
            "train", on_step=keep_snapshot if snapshot_step else None, gradients=gradients,
            start_epoch=start_epoch,
            on_epoch=resume.dense_saver(run_state, model, optimizer, scheduler, generator,
                                        prefix, gradients, snapshots))
        # clone: on CPU .cpu() aliases the live weights, which pruning then changes
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log.info("dense: test %s", headline(evaluate(model, data, data.test)))
        return {"state_dict": state, "history": history, "gradients": gradients.summary(),
                "snapshots": snapshots, "train_s": time.perf_counter() - start}

    if cfg.train.epochs == 0 or not cfg.cache.enabled:
        return train(), False
    entry, hit = cache.load_or_train(cfg.cache.dir, cache.key(cfg, device), train)
    if hit:
        log.info("dense model loaded from cache %s", cfg.cache.dir)
    return entry, hit
