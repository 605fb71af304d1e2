"""Run state on disk: atomic files, the dense-model cache, interruption and exact resume."""
