"""Dynamic sparsity: masks keep changing during fine-tuning and pruned weights can come back.

`variant=dns` — Dynamic Network Surgery (Guo et al. 2016). The dense weights are kept and
trained; the mask is applied in the forward pass only (a straight-through parametrization),
so pruned weights keep receiving gradient updates. Every `frequency` steps the strategy
scores the dense weights: below the lower threshold a weight is cut, above the upper one
(a * `hysteresis`) it is spliced back, in between it keeps its state. With strategy.amount,
a is the score that prunes exactly that fraction; with strategy.threshold, a is the
threshold. A last update puts the sparsity exactly on the target, then the mask is baked in.

`variant=rigl` — RigL (Evci et al. 2020). Masks are held as usual (pruned weights are zeros);
every `frequency` steps each layer drops the `fraction` of its active weights that score
lowest (magnitude with strategy=l1) and grows as many of its pruned weights with the largest
gradient magnitude (one batch), starting at zero. Sparsity stays constant; the fraction
decays as alpha/2 * (1 + cos(pi t / T_end)).

Mask updates stop at epoch `end` of fine-tuning; the rest of it trains the final mask. Every
update takes the Session's one mask-change path (`session.change_masks`): BatchNorm statistics
are recalibrated after it (finetune.bn_recalibrate), and a resumed run replays the recorded
updates like any other schedule's.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunebench.config.errors import ConfigError
from prunebench.data import Dataset, batches
from prunebench.pruning.masks import Masks
from prunebench.schedules.base import Schedule, Session, require_amount
from prunebench.strategies.ranking import select_by_amount
from prunebench.training.loop import cross_entropy

VARIANTS = ("dns", "rigl")


class Dynamic(Schedule):
    def __init__(self, name: str, variant: str = "dns", frequency: int = 100, end: float = 5.0,
                 hysteresis: float = 1.1, alpha: float = 0.3):
        super().__init__(name)
        self.variant, self.frequency, self.end = variant, frequency, end
        self.hysteresis, self.alpha = hysteresis, alpha
        self.forward_masks: dict[str, ForwardMask] = {}  # attached while DNS trains

    def run(self, session: Session) -> None:
        first, last = session.step, round(self.end * session.steps_per_epoch())

        def on_step(step: int) -> None:
            t = step - first
            if (t % self.frequency and t != last) or t > last:
                return
            if self.variant == "rigl" and t < last:
                regrow(session, self.alpha / 2 * (1 + math.cos(math.pi * t / last)))
            elif self.variant == "dns" and t < last:
                self.surgery(session)
            elif self.variant == "dns":
                self.settle(session)
            session.model.train()

        if self.variant == "dns":
            self.run_surgery(session, on_step)
        else:
            session.prune(require_amount(session.selection.amount, self.name))
            session.record("pruned")  # 'pruned': one-shot to the target, before any training
            session.finetune(session.settings.finetune_epochs, on_step=on_step)

    def check(self, cfg: DictConfig, data: Dataset) -> None:
        epochs, strategy = cfg.finetune.epochs, cfg.strategy
        if self.variant not in VARIANTS:
            raise ConfigError(f"schedule.variant={self.variant} is invalid: allowed "
                              f"{', '.join(VARIANTS)}")
        # cutting, splicing and regrowing act on single weights (select_by_amount, the
        # hysteresis band, |grad| growth); no rule here keeps whole units together
        if strategy.granularity != "weight":
            raise ConfigError(f"strategy.granularity={strategy.granularity} is invalid with "
                              f"schedule=dynamic: allowed weight")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ConfigError(f"schedule.frequency={self.frequency} is invalid: allowed an "
                              f"integer number of steps >= 1")
        if not 0 <= self.end <= epochs:
            raise ConfigError(f"schedule.end={self.end} is invalid: allowed "
                              f"0 <= end <= finetune.epochs ({epochs})")
        if self.hysteresis < 1:
            raise ConfigError(f"schedule.hysteresis={self.hysteresis} is invalid: allowed >= 1")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"schedule.alpha={self.alpha} is invalid: allowed 0 < alpha <= 1")
        if self.variant == "rigl":
            require_amount(cfg.strategy.amount, self.name)

    # --- dynamic network surgery -------------------------------------------------------
    def run_surgery(self, session: Session, on_step) -> None:
        masks = session.masks
        # 'pruned': the first surgery on the dense model, before any training; the record
        # holds exact zeros (and statistics recalibrated for them), then the dense values
        # come back for training
        dense = [w.detach().clone() for w in masks.weights.values()]
        self.surgery(session, zero_pruned=True)
        session.record("pruned")
        with torch.no_grad():
            torch._foreach_copy_(list(masks.weights.values()), dense)
        self.forward_masks, self.settled = attach(session), False
        try:
            session.finetune(session.settings.finetune_epochs, on_step=on_step,
                             hold_masks=False)
            if not self.settled:  # end = 0: no step reached it
                self.settle(session)
        finally:  # bake the masks in: plain weights again, pruned ones exact zeros
            for name in self.forward_masks:
                module = session.model.get_submodule(name.rpartition(".")[0])
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            self.forward_masks = {}
            masks.apply()

    def settle(self, session: Session) -> None:
        """At `end`: land exactly on strategy.amount (a final ranking of the dense weights);
        the mask stays fixed from here and the remaining epochs train it."""
        self.settled = True
        if session.selection.amount is None:
            return

        def final_masks() -> dict[str, Tensor]:
            keep = select_by_amount(scores(session), session.selection.amount,
                                    session.selection.scope)
            dtype = next(iter(session.masks.masks.values())).dtype
            return {n: k.to(dtype) for n, k in keep.items()}

        session.change_masks(final_masks, zero_pruned=False, count_masks=True)

    def surgery(self, session: Session, zero_pruned: bool = False) -> None:
        """Cut and splice by the scores of the dense weights; the weights stay dense unless
        `zero_pruned` (the first surgery, recorded as 'pruned')."""
        selection = session.selection
        session.change_masks(
            lambda: surgery_masks(scores(session), session.masks.masks, selection.amount,
                                  selection.threshold, selection.scope, self.hysteresis),
            zero_pruned=zero_pruned, count_masks=True)


class ForwardMask(nn.Module):
    """Straight-through mask: the forward pass sees w * mask, the gradient reaches all of w.
    The mask is read from the session's Masks at each forward, so it is always the current
    one (BatchNorm recalibration right after a change sees it too)."""

    def __init__(self, masks: Masks, name: str):
        super().__init__()
        self.masks, self.name = masks, name

    def forward(self, weight: Tensor) -> Tensor:
        # w + (w*m - w) is exactly w*m (0 where m == 0); only the first w carries gradient
        return weight + (weight * self.masks.masks[self.name] - weight).detach()


def attach(session: Session) -> dict[str, ForwardMask]:
    """Mask every prunable weight in the forward pass; the Parameter stays the dense one."""
    forward_masks = {}
    for name in session.masks.masks:
        module = session.model.get_submodule(name.rpartition(".")[0])
        forward_masks[name] = ForwardMask(session.masks, name)
        parametrize.register_parametrization(module, "weight", forward_masks[name])
    return forward_masks


def scores(session: Session) -> dict[str, Tensor]:
    """The strategy's scores of the (dense) weights, whatever the current masks."""
    ctx = replace(session.context(), model=session.model, masks=session.masks.masks,
                  amount=session.selection.amount)
    with torch.enable_grad():
        raw = session.selection.criterion.score(dict(session.masks.weights), ctx)
    return {n: s.detach().float() for n, s in raw.items()}


@torch.no_grad()
def surgery_masks(scores: dict[str, Tensor], masks: dict[str, Tensor], amount: float | None,
                  threshold: float | None, scope: str, hysteresis: float) -> dict[str, Tensor]:
    """Cut below a, splice back above b = a + (hysteresis - 1)|a|, keep the state between."""
    if amount is not None:
        keep = select_by_amount(scores, amount, scope)
        below = {n: ~k for n, k in keep.items()}
        cut = {n: s[below[n]].max() if below[n].any() else s.new_tensor(-math.inf)
               for n, s in scores.items()}
        if scope == "global":
            top = torch.stack(list(cut.values())).max()
            cut = dict.fromkeys(scores, top)
    else:
        below = {n: s < threshold for n, s in scores.items()}
        cut = {n: s.new_tensor(float(threshold)) for n, s in scores.items()}
    new = {}
    for n, s in scores.items():
        a = cut[n]
        if not torch.isfinite(a):  # nothing to cut (amount 0): everything is kept
            new[n] = torch.ones_like(masks[n])
            continue
        above = s > a + (hysteresis - 1) * a.abs()
        keep = torch.where(below[n], False, torch.where(above, True, masks[n] > 0))
        new[n] = keep.to(masks[n].dtype)
    return new


# --- RigL ------------------------------------------------------------------------------
def regrow(session: Session, fraction: float) -> None:
    """Per layer: drop `fraction` of the active weights by score, grow as many by |grad|;
    dropped weights become zeros, grown ones are zeros already."""
    session.change_masks(lambda: regrown_masks(session, fraction), count_masks=True)


def regrown_masks(session: Session, fraction: float) -> dict[str, Tensor]:
    masks = session.masks
    score = scores(session)
    grads = dense_gradient(session)
    new = {}
    for name, mask in masks.masks.items():
        active = mask.flatten() > 0
        k = min(int(fraction * int(active.sum())), int((~active).sum()))
        flat = mask.flatten().clone()
        if k > 0:
            drop = torch.argsort(score[name].flatten().masked_fill(~active, math.inf),
                                 stable=True)[:k]
            grow = torch.argsort(grads[name].abs().flatten().masked_fill(active, -math.inf),
                                 descending=True, stable=True)[:k]
            flat[drop], flat[grow] = 0, 1
        new[name] = flat.view_as(mask)
    return new


def dense_gradient(session: Session) -> dict[str, Tensor]:
    """Gradient of the loss on one training batch for every weight, pruned ones included.

    The batch is the schedule's own growth signal, not a criterion's calibration data: it is
    drawn from the same generator but not counted in results.json `calibration` (whose
    running SHA-256 a resumed run could not continue)."""
    x, y = next(batches(session.data, session.data.train, session.settings.batch_size,
                        shuffle=True, generator=session.calibration_generator))
    weights = session.masks.weights
    with torch.enable_grad():
        loss = cross_entropy(session.model(x), y)
        grads = torch.autograd.grad(loss, list(weights.values()))
    return dict(zip(weights, grads, strict=True))
