"""prunebench: train, prune, fine-tune and compare neural-network pruning criteria."""

from prunebench.config import schema

__version__ = "0.1.0"

# conf/config.yaml composes against this schema; registering on import makes every way of
# composing prunebench.conf (the CLI, Hydra's compose API in tests or notebooks) find it
schema.register()
