"""Run state: what a run has finished (progress), interruption and exact resume, the dense-model
cache, atomic files."""
