"""eval.tasks: zero-shot tasks of EleutherAI's lm-evaluation-harness beside perplexity.

Each recorded phase (dense, pruned, final) of a model=hf run is handed, as it is (masks
applied), to the harness's Python API (lm_eval.simple_evaluate over an HFLM wrapping the
transformers model and the run's tokenizer). A phase in results.json gets `tasks`: per task
its metrics (acc, acc_norm, ... with their stderr), and `harness`: lm_eval's version, the
task configs as the harness resolved them and the number of documents. Offline, users and
tests name their own tasks (a YAML over a local JSON file) in `eval.include_path`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunebench.config.errors import ConfigError

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """One line per bad eval.* value, before any work."""
    tasks = OmegaConf.select(cfg, "eval.tasks", default=None) or []
    if not isinstance(tasks, (list, tuple)) and not OmegaConf.is_list(tasks) or not all(
            isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"eval.tasks={tasks} is invalid: allowed a list of task names")
    limit = OmegaConf.select(cfg, "eval.limit", default=None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ConfigError(f"eval.limit={limit} is invalid: allowed null or an integer >= 1")
    size = OmegaConf.select(cfg, "eval.batch_size", default=8)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"eval.batch_size={size} is invalid: allowed an integer >= 1")
    include = OmegaConf.select(cfg, "eval.include_path", default=None)
    if include is not None and not Path(include).expanduser().is_dir():
        raise ConfigError(f"eval.include_path={include} is not a folder")
    if not tasks:
        return
    if OmegaConf.select(cfg, "model._target_") != "prunebench.models.hf.HFCausalLM":
        raise ConfigError("eval.tasks runs lm-evaluation-harness on a Hugging Face model: it "
                          "needs model=hf")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("eval.tasks needs lm-evaluation-harness: pip install "
                          "'prunebench[lm-eval]'") from None


def run(cfg: DictConfig, model: nn.Module) -> dict:
    """{'tasks': {task: metrics}, 'harness': {...}} for `model` (an HFCausalLM), or {}."""
    tasks = list(OmegaConf.select(cfg, "eval.tasks", default=None) or [])
    if not tasks:
        return {}
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from prunebench.models.hf import load_tokenizer

    include = OmegaConf.select(cfg, "eval.include_path", default=None)
    inner = model.model
    lm = HFLM(pretrained=inner, tokenizer=load_tokenizer(cfg.model.tokenizer),
              batch_size=cfg.eval.batch_size, device=str(next(inner.parameters()).device),
              max_length=cfg.dataset.get("seq_len"))
    manager = TaskManager(include_path=str(Path(include).expanduser()) if include else None)
    seed = int(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=cfg.eval.limit,
            log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING")
    except (KeyError, ValueError) as err:  # an unknown task name
        raise ConfigError(f"eval.tasks={tasks}: {str(err).splitlines()[0][:200]}") from None
    finally:
        model.train(was_training)
    metrics = {task: {name.split(",")[0]: value for name, value in values.items()
                      if "," in name and isinstance(value, (int, float))}
               for task, values in out["results"].items()}
    log.info("eval: %s", ", ".join(f"{t} {m}" for t, m in metrics.items()))
    return {"tasks": metrics,
            "harness": {"lm_eval": lm_eval.__version__, "configs": plain(out["configs"]),
                        "samples": plain(out.get("n-samples", {}))}}


def plain(value):
    """The harness's configs as JSON-able data (callables and others as their text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
