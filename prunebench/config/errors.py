"""The error a user's bad value raises; torch-free, so checks before any work stay fast."""


class ConfigError(ValueError):
    """A bad value a user typed; the message is one line naming the key."""
