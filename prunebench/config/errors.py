"""The error a user's bad value raises; torch-free, so checks before any work stay fast."""


class ConfigError(ValueError):
    """A bad value a user typed; the message is one line naming the key."""


def one_line(err: BaseException) -> str:
    """`Type: first line` of an exception (its cause's, when it wraps one), for a log line
    or a results.json entry; ANSI colours that some libraries put in messages are dropped."""
    import re

    cause = err.__cause__ or err
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__
