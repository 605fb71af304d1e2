"""Whether this process is one rank of several, read from the launcher's environment.

Torch-free, so that the CLI and Hydra callbacks can ask before torch loads; the process
group itself lives in prunebench/distributed.py.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """Started as a rank: by torchrun (even alone: --nproc-per-node=1 still runs DDP, over a
    group of one) or as one of several tasks of a submitit job (hydra/launcher=slurm with
    tasks_per_node or nodes > 1)."""
    return ("TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
            or slurm_tasks() > 1)


def env_rank() -> int:
    """This process's rank from the environment, before the process group exists."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return _submitit_job().global_rank if slurm_tasks() > 1 else 0


def slurm_tasks() -> int:
    """Tasks of this submitit job (hydra/launcher=slurm or submitit_local); 1 elsewhere."""
    return _submitit_job().num_tasks if "SUBMITIT_EXECUTOR" in os.environ else 1


def _submitit_job():
    from submitit import JobEnvironment  # submitit's own reading of Slurm's variables

    return JobEnvironment()
