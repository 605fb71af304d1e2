"""What one pruning call hands a criterion besides the weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from prunebench.pruning.units import Units
    from prunebench.strategies.offload import BlockStore


@dataclass
class PruneContext:
    """What a criterion may use besides the weights: training batches and the loss.

    Data-driven criteria also need the model (its forward), the current masks (what is pruned
    already) and the target of this pruning call (iterative criteria prune in rounds). `units`
    are the model's removable units (pruning.units.Units), traced by the selection at
    granularity=neuron or for a criterion that sets `needs_units`. `select(scores, masks,
    amount)` is the run's selection, for a criterion that prunes in rounds of its own
    (SynFlow, OBD's rounds); `by_weight` says it removes single weights by amount
    (granularity=weight, no N:M pattern).
    """

    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]  # fresh pass over training data
    loss: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    generator: torch.Generator
    model: nn.Module | None = None
    masks: dict[str, Tensor] | None = None
    amount: float | None = None
    units: Units | None = None
    offload: BlockStore | None = None  # model.offload: layer-wise criteria block by block
    select: Callable[[dict, dict, float | None], dict[str, Tensor]] | None = None
    by_weight: bool = False
