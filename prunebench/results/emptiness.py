"""Pruning that leaves nothing: a layer (or the whole model) with zero weights left.

Not an error (a threshold search may go there on purpose), but never silent: a warning in the
log, and `warnings` in results.json naming the layers.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def warnings(results: dict) -> dict:
    """{"warnings": [...]} for a run whose final (or pruned) weights left a layer empty."""
    phase = results.get("final") or results.get("pruned") or {}
    layers = [layer for layer in phase.get("layers") or [] if isinstance(layer, dict)]
    empty = [str(layer.get("name")) for layer in layers
             if layer.get("params") and layer.get("nonzero") == 0]
    if not empty:
        return {}
    if len(empty) == len(layers) or phase.get("nonzero") == 0:
        message = "pruning removed every prunable weight: the model is empty"
    else:
        message = (f"pruning removed every weight of {len(empty)} layer(s): "
                   f"{', '.join(empty)}")
    log.warning("%s", message)
    return {"warnings": [*results.get("warnings", []), message], "empty_layers": empty}
