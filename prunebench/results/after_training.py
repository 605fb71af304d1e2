"""The steps after training: exports, the 2:4 semi-structured form, latency.

They read the final model and add files or numbers beside the results; none changes what was
trained. So a step that fails (a model torch.export cannot trace, a kernel that is missing)
costs one warning and an entry in results.json's `failed_steps` ({step, error}), never the
run: the results are written with status ok. Trackers and plots keep the same rule
(results/trackers, results/plots.py).

Their keys (runstate.folder.AFTER_TRAINING) may be changed in a folder that holds a run:
the runner runs these steps again from the folder's checkpoints instead of training again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunebench.config.errors import one_line
from prunebench.data import Dataset, batches
from prunebench.results import export

log = logging.getLogger(__name__)
RESULT_KEYS = ("semi_structured", "exports", "latency", "failed_steps")  # what run() adds


class Steps:
    """Runs steps that may fail; `failed` lists the ones that did, with their reason."""

    def __init__(self):
        self.failed: list[dict] = []

    def attempt(self, step: str, call: Callable, *args):
        """call(*args), or None when it raises an Exception (a stop request still stops)."""
        try:
            return call(*args)
        except Exception as err:
            reason = one_line(err)
            log.warning("%s failed: %s; the run's results are kept without it", step, reason)
            self.failed.append({"step": step, "error": reason})
            return None


def run(cfg: DictConfig, model: nn.Module, dense_state: dict, data: Dataset,
        out_dir: Path) -> dict:
    """results.json's entries of the steps after training, and `failed_steps` if any failed."""
    steps, extra = Steps(), {}
    if OmegaConf.select(cfg, "export.semi_structured", default=False):
        from prunebench.pruning import semi_structured

        extra["semi_structured"] = steps.attempt(
            "export.semi_structured", semi_structured.run, model,
            next(batches(data, data.test, cfg.train.batch_size))[0])

    if export.wanted(cfg):  # ONNX / safetensors / CSR files, each checked after writing
        extra["exports"] = export.run(cfg, model, data, out_dir, steps.attempt)
    if cfg.inference.measure:  # dense, masked, sparse (CSR) and compact forms timed
        from prunebench.pruning import latency

        extra["latency"] = steps.attempt("inference.measure", latency.run, cfg, model,
                                         dense_state, data, out_dir)
    extra = {k: v for k, v in extra.items() if v is not None}
    return extra | ({"failed_steps": steps.failed} if steps.failed else {})
