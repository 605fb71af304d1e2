"""The config-facing layer: the structured schema Hydra composes against, the value checks
run before any work, and the preflight of output folders."""
