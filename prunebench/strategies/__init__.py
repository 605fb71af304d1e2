"""Pruning criteria: base.py turns scores into masks; each module scores weights one way."""
