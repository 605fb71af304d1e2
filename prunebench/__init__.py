"""prunebench: train, prune, fine-tune and compare neural-network pruning criteria."""

__version__ = "0.1.0"
