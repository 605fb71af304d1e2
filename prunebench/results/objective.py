"""The number a run returns to Hydra's sweeper (hydra/sweeper=optuna maximizes it).

It is computed on the validation split (results.json's <phase>.validation), never on the
test split: a search selects on validation numbers and the tables report test numbers. A run
without a validation split (dataset.val_fraction=0) falls back to test numbers, and says so
in one warning line.

`objective.name` in the config picks it:
- final_accuracy: final accuracy;
- final_accuracy_at_min_sparsity: final accuracy, subject to sparsity >= objective.min_sparsity;
- sparsity_at_max_drop: sparsity, subject to dense - final accuracy <= objective.max_drop.

A language model is judged by its perplexity instead (lower is better): its "accuracy"
is 1 / perplexity (= exp(-mean token cross-entropy), the geometric mean of the probabilities
given to the true next tokens, in (0, 1]), and its drop is the relative perplexity increase
final / dense - 1.

A feasible run scores in [0, 1]; an infeasible one scores minus its constraint violation (in
(-1, 0]), so every feasible run beats every infeasible one and the search is still pulled
toward feasibility; a failed or diverged run scores FAILED.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

OBJECTIVES = ("final_accuracy", "final_accuracy_at_min_sparsity", "sparsity_at_max_drop")
FAILED = -2.0


def value(results: dict, objective: Mapping | None) -> float:
    objective = objective or {}
    name = objective.get("name", "final_accuracy")
    if name not in OBJECTIVES:
        raise ValueError(f"objective.name={name} is invalid: allowed {', '.join(OBJECTIVES)}")
    final, dense = results.get("final") or {}, results.get("dense") or {}
    if results.get("status") != "ok" or not ("accuracy" in final or "perplexity" in final):
        return FAILED
    final, dense = selection_metrics(final, dense)
    if "perplexity" in final:
        score, drop = 1 / final["perplexity"], final["perplexity"] / dense["perplexity"] - 1
    else:
        score, drop = final["accuracy"], dense["accuracy"] - final["accuracy"]
    if name == "final_accuracy":
        return float(score)
    if name == "final_accuracy_at_min_sparsity":
        shortfall = float(objective["min_sparsity"]) - final["sparsity"]
        return float(score) if shortfall <= 0 else -shortfall
    excess = drop - float(objective["max_drop"])
    return float(final["sparsity"]) if excess <= 0 else -excess


def selection_metrics(final: dict, dense: dict) -> tuple[dict, dict]:
    """The final and dense numbers a search may select on: the validation split's, with the
    sparsity read off the final model; the test split's (with a warning) when there is none."""
    if "validation" in final and "validation" in dense:
        return {**final["validation"], "sparsity": final["sparsity"]}, dense["validation"]
    log.warning("objective: no validation split (dataset.val_fraction=0), so this run is "
                "scored on its test split; a search over such runs selects on test data")
    return final, dense
