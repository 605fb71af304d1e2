"""Datasets live in memory as tensors; `batches` serves them with no per-sample Python work."""

from prunebench.data.batches import Dataset, Split, batches, carve_validation, steps_per_epoch

__all__ = ["Dataset", "Split", "batches", "carve_validation", "steps_per_epoch"]
