"""Before any work: the values are good, the folders writable, and the run folder ours.

A Hydra callback (registered in conf/config.yaml). When a single run starts, before Hydra
writes anything into its folder: the value checks (config.checks, config.inputs), then the
output and cache folders must be writable and not full, then the run folder is locked for the
whole run and must not hold a run of another config (runstate.folder). When a sweep starts:
the folders, and every sweep value must compose (a wrong type is refused before any job). Each
job of a sweep locks its own folder. A failure is one line and a non-zero exit.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from prunebench.config import inputs, messages
from prunebench.config.errors import ConfigError
from prunebench.ranks import env_rank
from prunebench.runstate import folder

# a run writes a few checkpoints; less free space than this means the disk is (nearly) full
MIN_FREE_BYTES = 64 * 2**20


def problem(folder: Path) -> str | None:
    """Why `folder` cannot take a run's files, or None if it can (creates it if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(folder).free
    except OSError as err:
        return f"cannot write to {folder}: {err.strerror or err}"
    if free < MIN_FREE_BYTES:
        return f"{folder} has only {free / 2**20:.1f} MiB free (a run needs at least " \
               f"{MIN_FREE_BYTES // 2**20} MiB)"
    return None


def check(config: DictConfig, output_key: str) -> None:
    folders = [Path(str(OmegaConf.select(config, output_key)))]
    if OmegaConf.select(config, "cache.enabled", default=False):
        folders.append(Path(str(config.cache.dir)))
    for path in folders:
        message = problem(path)
        if message:
            sys.exit(f"prunebench: error: {message}")


def fail(err: Exception) -> None:
    sys.exit(f"prunebench: error: {err}")


def recomposer(config_name: str | None):
    """compose(overrides) -> config, the way Hydra composed this command (or None)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    if not GlobalHydra.instance().is_initialized():
        return None
    loader = GlobalHydra.instance().config_loader()
    return lambda overrides: loader.load_configuration(config_name, overrides, RunMode.RUN)


def task_config(config: DictConfig) -> dict:
    """The job's resolved config without `hydra` and `resume`, as the runner compares it."""
    from hydra.core.hydra_config import HydraConfig

    from prunebench.config import inputs

    HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves (run_job does it too)
    job = without_hydra(config)  # as the task will see it: model._target_=yours alone
    inputs.replace_default_model(job, list(OmegaConf.select(config, "hydra.overrides.task",
                                                            default=[])))
    task = OmegaConf.to_container(job, resolve=True)
    task.pop("resume", None)
    return task


def without_hydra(config: DictConfig) -> DictConfig:
    """The job's config as run_job passes it to the task."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def check_values(config: DictConfig, config_name: str | None) -> None:
    inputs.check(without_hydra(config),
                 list(OmegaConf.select(config, "hydra.overrides.task", default=[])),
                 recomposer(config_name), OmegaConf.select(config, "hydra.runtime.choices"))
    from prunebench import build  # imports torch
    from prunebench.results import export

    build.check(config)
    export.check(config)  # export.hf's combinations: refused before Hydra writes the folder


def check_sweep_values(config: DictConfig) -> None:
    """Compose one job per sweep value (other keys at their first value), as the launcher
    will: a value of the wrong type stops the sweep here, before any job runs."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not GlobalHydra.instance().is_initialized():
        return
    parsed = OverridesParser.create().parse_overrides(
        list(OmegaConf.select(config, "hydra.overrides.task", default=[])))
    try:
        values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [None]
                  for o in parsed]
    except Exception:  # a sweep form this check does not expand (glob, interval)
        return
    loader = GlobalHydra.instance().config_loader()

    def compose(job: list[str]) -> DictConfig:  # raises Hydra's error, condensed by cli
        return loader.load_sweep_config(config, job)

    firsts = [job_override(o, v[0]) for o, v in zip(parsed, values, strict=True)]
    jobs = [firsts] + [firsts[:i] + [job_override(o, value)] + firsts[i + 1:]
                       for i, (o, options) in enumerate(zip(parsed, values, strict=True))
                       if o.is_sweep_override() for value in options[1:]]
    for job in jobs:
        composed = compose(job)
        inputs.check_keys(without_hydra(composed), job, compose, composed.hydra.runtime.choices)


def job_override(override, value) -> str:
    return override.input_line if value is None else f"{override.get_key_element()}={value}"


class Preflight(Callback):
    def __init__(self) -> None:
        self.lock = None

    def on_run_start(self, config: DictConfig, config_name: str | None = None,
                     **kwargs: Any) -> None:
        try:
            check_values(config, config_name)
        except ConfigError as err:
            fail(err)
        check(config, "hydra.run.dir")
        self.claim(config, "hydra.run.dir")

    def claim(self, config: DictConfig, key: str, owner: bool = True) -> None:
        """Lock the run folder, refuse it if it holds another config's run (`owner`; a sweep's
        job leaves that to the runner, so it becomes the job's error)."""
        if env_rank() != 0:  # rank 0 holds the folder for a run of several ranks
            return
        run_dir = Path(str(OmegaConf.select(config, key)))
        self.lock = folder.Lock(run_dir)
        try:
            self.lock.acquire()
            if owner:
                    folder.check_owner(run_dir, task_config(config),
                                   OmegaConf.select(config, "resume", default="auto"))
        except ConfigError as err:
            self.release()
            fail(err)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException


        try:
            check_sweep_values(config)
        except ConfigError as err:
            fail(err)
        except (HydraException, OmegaConfBaseException) as err:
            fail(messages.condense(err))
        check(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # a single run locked its folder already
            self.claim(config, "hydra.runtime.output_dir", owner=False)
        folder.clean_orphans(config.hydra.runtime.output_dir)  # ours now: logging is set up

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            self.release()
