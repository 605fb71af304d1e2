"""Value helpers every module may use to check its own keys: torch-free, at the bottom.

Each raises ConfigError with one line naming the key and what it allows.
"""

from __future__ import annotations

from omegaconf import ListConfig

from prunebench.config.errors import ConfigError


def number(key: str, value, *, low=None, high=None, low_open=False, high_open=False,
           integer=False, optional=False, allowed="") -> None:
    """Raise ConfigError naming `key` unless `value` is a number within the limits."""
    if value is None:
        if optional:
            return
        raise ConfigError(f"{key} is required ({allowed})")
    kind = int if integer else (int, float)
    bad_type = isinstance(value, bool) or not isinstance(value, kind)
    too_low = low is not None and not bad_type and (value <= low if low_open else value < low)
    too_high = high is not None and not bad_type and (value >= high if high_open else value > high)
    if bad_type or too_low or too_high:
        raise ConfigError(f"{key}={value} is invalid: allowed {allowed}")


def choice(key: str, value, choices) -> None:
    """Raise ConfigError naming `key` unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}={value} is invalid: allowed {', '.join(map(str, choices))}")


def check_sizes(key: str, sizes, *, allowed: str = "integers >= 1", empty: bool = False) -> None:
    """For models: a size or list of sizes that must be integers >= 1 (`empty`: [] is fine)."""
    values = list(sizes) if isinstance(sizes, (list, tuple, ListConfig)) else [sizes]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or (not values and not empty):
        shown = list(values) if isinstance(sizes, (list, tuple, ListConfig)) else sizes
        raise ConfigError(f"{key}={shown} is invalid: allowed {allowed}")
