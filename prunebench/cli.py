"""`prunebench`: a thin @hydra.main entry. torch is imported lazily, inside the task."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
from importlib import resources

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from prunebench import ranks
from prunebench.config import messages
from prunebench.config.errors import ConfigError
from prunebench.config.schema import GROUPS  # importing prunebench registers the config schema
from prunebench.runstate.signals import Interrupted, stop_on_signals

log = logging.getLogger("prunebench")


def available(group: str) -> list[str]:
    folder = resources.files("prunebench.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_choices(args: list[str]) -> str | None:
    """One-line message for an unknown group option (`strategy=nope`), else None.

    Skipped when the user adds their own config folders, which may define more options.
    """
    if any(a.startswith(("hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp"))
           for a in args):
        return None
    for arg in args:
        match = re.fullmatch(r"(\w+)=\[?([\w,]+)\]?", arg)  # logger=[csv,mlflow]: a list
        if match and match.group(1) in (*GROUPS, "logger"):
            group, values = match.groups()
            options = available(group)
            for value in values.split(","):
                if value not in options:
                    return (f"unknown {group} '{value}': choose {group}= one of "
                            f"{', '.join(options)}")
    return None


def main() -> None:
    message = check_choices(sys.argv[1:]) or messages.missing_search_path(sys.argv[1:])
    if message:
        sys.exit(f"prunebench: error: {message}")
    if ranks.launched():  # torchrun: join the ranks, agree on one run folder
        sys.argv[1:] = rank_arguments(sys.argv[1:])
    # Hydra prints its composition errors over many lines and exits; with HYDRA_FULL_ERROR
    # they reach us instead, to be condensed to one (unless the user asked for them whole)
    condense = "HYDRA_FULL_ERROR" not in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        task()
        close_ranks()
    except KeyboardInterrupt:  # die by SIGINT, as shells and schedulers expect
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except (HydraException, OmegaConfBaseException) as err:
        if not condense or _task_started:
            raise
        sys.exit(f"prunebench: error: {messages.condense(err)}")


def rank_arguments(args: list[str]) -> list[str]:
    """The command line of this rank: the run folder rank 0 names (Hydra's ${now:...} read
    from rank 0's clock), and on the other ranks no .hydra copy and errors-only logging."""
    from datetime import datetime

    from prunebench import distributed  # torch loads here, in a distributed run only

    distributed.init()
    now = datetime.fromisoformat(distributed.broadcast_object(datetime.now().isoformat()))
    given = [a for a in args if a.startswith("hydra.run.dir=")]
    pattern = (given[-1].partition("=")[2] if given
               else str(OmegaConf.load(resources.files("prunebench.conf") / "config.yaml")
                        .hydra.run._get_node("dir")._value()))
    run_dir = re.sub(r"\$\{now:([^}]*)\}", lambda m: now.strftime(m.group(1)), pattern)
    args = [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    if distributed.rank() != 0:
        args += ["hydra.output_subdir=null", "hydra.job_logging.root.level=ERROR",
                 "hydra.job_logging.root.handlers=[console]"]
    return args


def close_ranks() -> None:
    if ranks.launched():
        from prunebench import distributed

        distributed.close()


_task_started = False  # an error after this is the task's own, not a composition error


@hydra.main(version_base="1.3", config_path="pkg://prunebench.conf", config_name="config")
def task(cfg: DictConfig) -> float | None:
    global _task_started
    _task_started = HydraConfig.get().mode != RunMode.MULTIRUN  # a sweep composes per job
    from prunebench import distributed, runner  # torch loads here, after Hydra parsed the line
    from prunebench.config import inputs
    from prunebench.results import objective, table

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    divide_threads(cfg, hydra_cfg)
    inputs.replace_default_model(cfg, list(hydra_cfg.overrides.task))  # model._target_=yours
    # in a sweep, a failed job is a row marked failed (results.json says why), not the end of
    # the sweep; nan tells sweepers such as optuna that the trial failed
    distributed.init()  # a multi-task Slurm job (submitit); torchrun's ranks joined in main
    try:
        with stop_on_signals(), distributed.main_only_logging():
            results = runner.run(cfg, hydra_cfg.runtime.output_dir)
    except Interrupted as err:
        print(f"prunebench: {err}; the same command (same run folder) resumes it",
              file=sys.stderr)
        if err.signum == signal.SIGINT:
            raise KeyboardInterrupt from None
        sys.exit(128 + err.signum)
    except ConfigError as err:
        if sweep:
            log.error("config error: %s", err)
            return math.nan
        sys.exit(f"prunebench: error: {err}")
    except Exception as err:
        if distributed.active():  # one line from the rank that failed; the others exit
            sys.exit(distributed.failure_line(err, hydra_cfg.runtime.output_dir))
        if not sweep and isinstance(err, OSError) and err.strerror:  # disk full, read-only
            sys.exit(f"prunebench: error: {err.filename or 'writing results'}: {err.strerror}")
        if not sweep:
            raise
        log.error("job failed (traceback in its results.json): %s: %s", type(err).__name__,
                  str(err).splitlines()[0] if str(err) else "")
        return math.nan
    if sweep:  # the comparison table comes at the end of the sweep
        return objective.value(results, OmegaConf.select(cfg, "objective"))
    if not distributed.is_main():
        return None
    if any(phase in results for phase in ("dense", "pruned", "final")):
        table.show_run(results)
    if results["status"] != "ok":
        sys.exit(f"prunebench: {results['status']}: {results.get('error')}")
    return objective.value(results, OmegaConf.select(cfg, "objective"))


def divide_threads(cfg: DictConfig, hydra_cfg) -> None:
    """Unless train.threads is set, size torch's thread pool to what the launcher gives a job.

    hydra/launcher=joblib runs n_jobs jobs at once on one machine: each gets cores // n_jobs
    threads (two jobs on 16 cores train with 8 each, not 16 threads fighting over 16 cores).
    The submitit launchers give each job cpus_per_task cores: that many threads.
    """
    if cfg.train.threads is not None:
        return
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    cpus = OmegaConf.select(hydra_cfg, "launcher.cpus_per_task", default=None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if ranks.launched():  # torchrun's ranks on this node share its cores
        threads = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    elif isinstance(n_jobs, int) and n_jobs != 0:
        jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores
        threads = max(1, cores // jobs)
    elif isinstance(cpus, int) and cpus > 0:
        threads = cpus
    else:
        return
    with open_dict(cfg):
        cfg.train.threads = threads


if __name__ == "__main__":
    main()
