"""The contract every criterion shares: it scores, the selection chooses.

Following Torch-Pruning's split of importance and pruner, a criterion returns scores (higher =
more important) and, where it must, updated weights (OBS's surgeon, L0's trained weights,
SparseGPT's column solver). Which weights go (amount or threshold, allocation, granularity,
N:M pattern, exclude) is the business of the one `Selection` (selection.py) built from
cfg.strategy, so any criterion works with any of them. A criterion's constructor takes only
its own keys and checks them (config.values.number / choice, raising ConfigError naming
`strategy.KEY`); build.check builds it once before any work.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunebench.strategies.context import PruneContext
from prunebench.strategies.ranking import LayerTarget

__all__ = ["LayerTarget", "PruneContext", "Strategy", "expand_units", "unit_sums"]


class Strategy:
    """A criterion: override `score` (one score per weight); the rest is optional.

    A criterion that judges whole units (a unit's activations, a filter's norm) overrides
    `score_units` instead or as well; otherwise, with granularity=neuron, a unit's score is
    the sum of its weights' scores.

    A layer-wise criterion (Wanda, SparseGPT) sets `layerwise = True`: the selection then
    drives it layer by layer (calibration.sequential), each block's inputs read through the
    blocks pruned before it; `accumulate` gathers a layer's input statistics and
    `score_layer` scores it (or `solve_layer` chooses the layer's mask itself and updates its
    weight). At granularity=neuron a layer-wise criterion is scored in one pass by `score`.
    """

    # the threshold applied when strategy.amount and strategy.threshold are both null, for a
    # criterion that decides the sparsity itself (L0's closed gates); the run then reports
    # the sparsity it reached
    own_threshold: float | None = None
    needs_units = False  # True: the selection traces the model's units for `ctx.units`
    layerwise = False  # True: pruned layer by layer on inputs through the pruned layers
    needs_amount = False  # True: a target fraction, not a threshold (SparseGPT's solver)
    # True: the scores read nothing but the weights (magnitude), so under model.offload they
    # are taken one block at a time on the device
    weights_only = False
    batches = 8  # calibration batches a layer-wise criterion reads

    def check_model(self, model: nn.Module, weights: dict[str, Tensor]) -> None:
        """Raise ConfigError (one line naming the layer) on a model whose prunable `weights`
        this criterion cannot prune; called once the model is built, before any training."""

    def score(self, weights: dict[str, Tensor], ctx: PruneContext) -> dict[str, Tensor]:
        """One score per weight, the shape of each prunable weight (higher = more important).

        `weights` maps each prunable layer's name to its weight (already masked); `ctx` gives
        training batches, the loss, the model and the current masks.
        """
        raise NotImplementedError

    def score_units(self, weights: dict[str, Tensor], ctx: PruneContext
                    ) -> dict[str, Tensor] | None:
        """One score per output unit (dim 0 of each weight), or None to sum `score`."""
        return None

    def compensate(self, weights: dict[str, Tensor], masks: dict[str, Tensor],
                   ctx: PruneContext) -> None:
        """Optionally update surviving weights in place once the new masks are chosen.

        Most criteria only rank weights; Optimal Brain Surgeon moves the survivors to make up
        for the removed ones, and L0 keeps the weights it trained along with its gates.
        """

    # ---- layer-wise criteria (layerwise = True) -------------------------------------------

    def accumulate(self, stats: dict, name: str, x: Tensor) -> None:
        """Add one calibration batch of layer `name`'s inputs (rows [samples, width] matching
        weight.flatten(1)'s columns) to `stats[name]`."""
        raise NotImplementedError

    def score_layer(self, name: str, weight: Tensor, stats) -> Tensor:
        """One layer's scores from its accumulated input statistics."""
        raise NotImplementedError

    def solve_layer(self, name: str, weight: Tensor, stats, mask: Tensor,
                    target: LayerTarget) -> tuple[Tensor, Tensor]:
        """(new weight, boolean keep-mask) of one layer meeting `target`; by default its
        `score_layer` scores, the lowest removed and the survivors left as they are."""
        keep = target.keep(self.score_layer(name, weight, stats), mask)
        return weight.detach() * keep.to(weight.dtype), keep

    def group_budget(self, weights: dict[str, Tensor], x: Tensor):
        """(bytes a layer's statistics take, budget) to cut a block's layers into groups
        whose statistics fit in memory together, or None (a block is one group)."""
        return None


def unit_sums(scores: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-weight scores summed over each output unit, masked weights left out."""
    return {n: s.detach().float().masked_fill(masks[n] == 0, 0).flatten(1).sum(1)
            for n, s in scores.items()}


def expand_units(units: dict[str, Tensor], weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Unit scores as per-weight scores: each weight gets its unit's score."""
    return {n: units[n].view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone()
            for n, w in weights.items()}
