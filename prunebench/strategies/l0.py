"""L0 regularization with hard-concrete gates (Louizos, Welling & Kingma 2018).

Every weight (granularity=weight) or removable output unit (granularity=neuron: the units
base.py / pruning/units.py may remove) is multiplied by a stochastic gate z in [0, 1] with a
learned log-alpha. Gates and weights train together from the current (dense) weights for
`epochs` epochs on

    loss + lambda * sum over gates of P(z != 0) * (weights the gate holds)

so lambda is a price per expected nonzero weight. At test time the gates are deterministic,
z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1).

Scores are the gates' open probabilities P(z != 0). With `amount` set, base.py keeps the most
probably open weights, so the target is met exactly. With amount and threshold both null the
L0 model decides by itself: a weight is pruned where its deterministic gate is zero (the same
as an open probability below CLOSED_BELOW) and the sparsity reached is what lambda buys.

The trained weights are kept: the model gets weight * z for every surviving weight, i.e. the
L0 network at test time. (A survivor whose deterministic gate is zero, which only happens when
`amount` keeps more than L0 opened, gets its trained weight unscaled rather than a zero.)
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor
from torch.func import functional_call

from prunebench.config.values import number
from prunebench.strategies.base import PruneContext, Strategy

log = logging.getLogger(__name__)
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


def open_probability(log_alpha: Tensor) -> Tensor:
    """P(z != 0) of a hard-concrete gate, in closed form."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def sample_gate(log_alpha: Tensor, generator: torch.Generator) -> Tensor:
    """A reparameterized hard-concrete sample (differentiable in log_alpha)."""
    u = torch.rand(log_alpha.shape, generator=generator, device=generator.device)
    u = u.to(log_alpha.device).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gate(log_alpha: Tensor) -> Tensor:
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


# the deterministic gate is zero exactly when the open probability is at most this
CLOSED_BELOW = float(open_probability(torch.tensor(math.log(-GAMMA / ZETA))))


class L0(Strategy):
    own_threshold = CLOSED_BELOW  # amount and threshold unset: the gates decide

    def __init__(self, epochs: int = 10, lr: float = 1e-3, gate_lr: float = 0.05,
                 init_open: float = 0.9, **penalty):
        # `lambda` is a Python keyword, so it arrives through **penalty
        lam = penalty.pop("lambda", 1e-4)
        if penalty:
            raise TypeError(f"L0 got unexpected keys {', '.join(penalty)}")
        number("strategy.lambda", lam, low=0, allowed="a number >= 0")
        number("strategy.epochs", epochs, low=0, integer=True, allowed="an integer >= 0")
        for key, value in (("lr", lr), ("gate_lr", gate_lr)):
            number(f"strategy.{key}", value, low=0, low_open=True, allowed="a number > 0")
        number("strategy.init_open", init_open, low=0, high=1, low_open=True, high_open=True,
               allowed="a probability 0 < init_open < 1")
        self.lam = float(lam)
        self.epochs, self.lr, self.gate_lr, self.init_open = epochs, lr, gate_lr, init_open
        self._trained: dict[str, Tensor] = {}
        self.log_alpha: dict[str, Tensor] = {}  # the gates of the last pruning call

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """granularity=weight: one gate per weight, scored by its open probability."""
        shapes = {n: tuple(w.shape) for n, w in weights.items()}
        return {n: open_probability(a) for n, a in self.train_gates(weights, shapes, ctx).items()}

    def score_units(self, weights: dict[str, Tensor], ctx: PruneContext
                    ) -> dict[str, Tensor] | None:
        """granularity=neuron: one gate per removable unit (ctx.units, traced by the
        selection)."""
        shapes = {n: (weights[n].shape[0],) + (1,) * (weights[n].dim() - 1)
                  for n in ctx.units.layers}
        gates = self.train_gates(weights, shapes, ctx)
        return {n: open_probability(a).flatten() for n, a in gates.items()}

    def train_gates(self, weights: dict[str, Tensor], shapes: dict[str, tuple[int, ...]],
                    ctx: PruneContext) -> dict[str, Tensor]:
        """Train gates of `shapes` (broadcast over the weights) with all parameters."""
        model = ctx.model
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        # start with most gates open: P(z > 0) high, so training begins near the dense net
        init = math.log(self.init_open / (1 - self.init_open))
        log_alpha = {n: torch.full(shape, init, device=weights[n].device, requires_grad=True)
                     for n, shape in shapes.items()}
        held = {n: weights[n].numel() // log_alpha[n].numel() for n in log_alpha}
        optimizer = torch.optim.Adam([{"params": list(params.values()), "lr": self.lr},
                                      {"params": list(log_alpha.values()), "lr": self.gate_lr}])
        was_training = model.training
        model.train()
        for _ in range(self.epochs):
            for x, y in ctx.batches():
                gated = {n: params[n] * ctx.masks[n] * sample_gate(a, ctx.generator)
                         for n, a in log_alpha.items()}
                out = functional_call(model, {**params, **gated}, (x,))
                penalty = sum(open_probability(a).sum() * held[n] for n, a in log_alpha.items())
                loss = ctx.loss(out, y) + self.lam * penalty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.train(was_training)
        self.log_alpha = {n: a.detach() for n, a in log_alpha.items()}
        self._trained = {n: p.detach() for n, p in params.items()}
        for n, a in self.log_alpha.items():
            gate = deterministic_gate(a)
            self._trained[n] = self._trained[n] * torch.where(gate > 0, gate, 1.0)
        closed = sum(int((deterministic_gate(a) == 0).sum()) * held[n]
                     for n, a in self.log_alpha.items())
        log.info("l0: %d epochs, lambda %g: deterministic gates close %d of %d gated weights",
                 self.epochs, self.lam, closed, sum(weights[n].numel() for n in log_alpha))
        return self.log_alpha

    @torch.no_grad()
    def compensate(self, weights: dict[str, Tensor], masks: dict[str, Tensor],
                   ctx: PruneContext) -> None:
        """Keep the weights L0 trained (biases too), with the deterministic gates folded in."""
        for n, p in ctx.model.named_parameters():
            p.copy_(self._trained[n])
        self._trained = {}
