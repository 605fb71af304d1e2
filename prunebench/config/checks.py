"""Value checks run before any work; each failure names the key and what it allows.

The keys every run has are checked here. A strategy's own keys (a criterion's variant, batches,
penalty ...) are checked by its constructor with `number` and `choice` (config/values.py), and
`build.check` runs `check` and then builds the strategy once, so those checks also run before
any work; nothing here names a criterion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prunebench.config.errors import ConfigError
from prunebench.config.values import choice, number
from prunebench.results.objective import OBJECTIVES
from prunebench.strategies import allocation
from prunebench.strategies.patterns import parse_pattern
from prunebench.strategies.selection import GRANULARITIES, SCOPES

LR_SCHEDULES = ("none", "cosine", "step")
AMP_MODES = (None, "bf16", "fp16")


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def _number(cfg, key, **limits):
    number(key, _get(cfg, key), **limits)


def _choice(cfg, key, choices):
    choice(key, _get(cfg, key), choices)


def check(cfg: DictConfig, sets_own_sparsity: Callable[[], bool]) -> None:
    """Raise ConfigError on the first bad value. `sets_own_sparsity()` says whether the
    strategy may leave amount and threshold both unset (asked only when they are)."""
    _number(cfg, "seed", integer=True, allowed="an integer")
    _choice(cfg, "resume", ("auto", True, False))
    _number(cfg, "train.epochs", low=0, integer=True, allowed="an integer >= 0")
    _number(cfg, "train.batch_size", low=1, integer=True, allowed="an integer >= 1")
    _number(cfg, "finetune.epochs", low=0, integer=True, allowed="an integer >= 0")
    _number(cfg, "finetune.lr_scale", low=0, low_open=True, allowed="a number > 0")
    _number(cfg, "finetune.bn_batches", low=1, integer=True, optional=True,
            allowed="an integer >= 1")
    _number(cfg, "finetune.distill.alpha", low=0, high=1, optional=True,
            allowed="a weight 0 <= alpha <= 1")
    _number(cfg, "finetune.distill.temperature", low=0, low_open=True, optional=True,
            allowed="a number > 0")
    if _get(cfg, "baseline.reinit_budget") is not None:
        _choice(cfg, "baseline.reinit_budget", ("epochs", "matched_flops"))
    _number(cfg, "optimizer.lr", low=0, low_open=True, allowed="a number > 0")
    _choice(cfg, "train.lr_schedule", LR_SCHEDULES)
    amp = _get(cfg, "train.amp")
    if amp not in AMP_MODES:
        raise ConfigError(f"train.amp={amp} is invalid: allowed null, bf16, fp16")
    _choice(cfg, "train.compile", (True, False))
    _choice(cfg, "inference.kernel", ("auto", "dense", "csr"))  # pruning/sparse.py
    checkpoint = _get(cfg, "dense.checkpoint")  # read once the model is built: said now
    if checkpoint is not None and not Path(str(checkpoint)).expanduser().is_file():
        raise ConfigError(f"dense.checkpoint={checkpoint}: no such file")
    _number(cfg, "calibration.samples", low=1, integer=True, optional=True,
            allowed="null or an integer >= 1")
    _number(cfg, "train.threads", low=1, integer=True, optional=True,
            allowed="an integer >= 1, or null for torch's default")
    if _get(cfg, "objective") is not None:  # the sweep's number, read after the run
        _choice(cfg, "objective.name", OBJECTIVES)
        _number(cfg, "objective.min_sparsity", low=0, high=1, allowed="a fraction 0..1")
    for key in ("train.grad_clip.max_norm", "train.grad_clip.max_value"):
        _number(cfg, key, low=0, low_open=True, optional=True, allowed="null or a number > 0")
    for key in ("train.regularization.l1", "train.regularization.l2"):
        _number(cfg, key, low=0, allowed="a number >= 0")
    _number(cfg, "dataset.val_fraction", low=0, high=1, high_open=True, optional=True,
            allowed="0 <= val_fraction < 1")
    prefix = _get(cfg, "dense.checkpoint_prefix")
    if prefix is not None and not _get(cfg, "dense.checkpoint"):
        raise ConfigError(f"dense.checkpoint_prefix={prefix} has no checkpoint to choose in: "
                          f"set dense.checkpoint=PATH too")
    check_strategy(cfg, sets_own_sparsity)


def check_pattern_amount(pattern: tuple[int, int], amount: float) -> None:
    """N:M removes exactly N of every M weights: an amount that says otherwise is refused, not
    silently capped (amount=0.9 with 2:4 used to give 0.5). A rounded N/M (0.33 for 1:3)
    passes; an iterative schedule's smaller steps toward it are not this key."""
    n, m = pattern
    if abs(amount - n / m) > 0.005:
        raise ConfigError(f"strategy.amount={amount} contradicts strategy.pattern={n}:{m}, "
                          f"which removes exactly {n} of every {m} weights (sparsity "
                          f"{n / m:.4g}): set strategy.amount={n / m:.4g}, or "
                          f"another pattern")


def check_allocation_target(name: str | None, amount, pattern) -> None:
    """erk, lamp and owl divide `strategy.amount` among the layers: with a threshold (no
    amount) or an N:M pattern (every layer at N/M) there is nothing for them to divide, and
    the selection used to go on without them while results.json named them."""
    if name not in ("erk", "lamp", "owl"):
        return
    if pattern is not None:
        raise ConfigError(f"strategy.allocation={name} contradicts strategy.pattern="
                          f"{pattern[0]}:{pattern[1]}, which gives every layer the same "
                          f"sparsity: set one")
    if amount is None:
        raise ConfigError(f"strategy.allocation={name} divides strategy.amount among "
                          f"the layers: set strategy.amount (a threshold is not divided)")


def check_strategy(cfg: DictConfig, sets_own_sparsity: Callable[[], bool]) -> None:
    amount, threshold = _get(cfg, "strategy.amount"), _get(cfg, "strategy.threshold")
    if amount is not None and threshold is not None:
        raise ConfigError("strategy.amount and strategy.threshold are both set: set one "
                          "(e.g. strategy.threshold=null)")
    # a criterion that sets its own sparsity (a penalty's optimum) may leave both unset
    if amount is None and threshold is None and not sets_own_sparsity():
        raise ConfigError("strategy.amount or strategy.threshold must be set")
    _number(cfg, "strategy.amount", low=0, high=1, high_open=True, optional=True,
            allowed="a fraction 0 <= amount < 1")
    _number(cfg, "strategy.threshold", optional=True, allowed="a number")
    _choice(cfg, "strategy.scope", SCOPES)
    _choice(cfg, "strategy.granularity", GRANULARITIES)
    problem = allocation.check(_get(cfg, "strategy.allocation"), _get(cfg, "strategy.scope"),
                               _get(cfg, "strategy.granularity"))
    if problem:
        raise ConfigError(problem)
    try:
        pattern = parse_pattern(_get(cfg, "strategy.pattern"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if pattern is not None and amount is not None:
        check_pattern_amount(pattern, amount)
    check_allocation_target(_get(cfg, "strategy.allocation"), amount, pattern)
