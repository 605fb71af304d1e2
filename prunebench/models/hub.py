"""The Hugging Face hub, asked once whether it is there: offline, the local cache answers at once.

An unreachable hub costs huggingface_hub five retries per file (1 + 2 + 4 + 8 + 8 s, a warning
each) before the caller's one-line error: about 50 s for a model and its tokenizer. A HEAD
request to the endpoint, through huggingface_hub's own client (its proxies, its
HF_ENDPOINT), says whether the hub is reachable; when it is not, huggingface_hub's offline mode
is switched on for this process, so transformers and timm read the local cache and fail at
once, with prunebench's one line, when the files are not there.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)
PROBES = 2               # a second try after a pause: one DNS hiccup must not cut a run off
PROBE_PAUSE_S = 1.0


def offline_unless_reachable(key: str, name: str | None = None) -> None:
    """Before loading `name` (a hub id, or a local folder: nothing to ask) for config `key`:
    switch huggingface_hub to offline mode when the hub is out of reach."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or (name and Path(name).expanduser().is_dir()):
        return
    if reachable(constants.ENDPOINT):
        return
    constants.HF_HUB_OFFLINE = True
    log.warning("%s: %s is out of reach; reading the local Hugging Face cache only", key,
                constants.ENDPOINT)


@functools.cache  # asked once a process: a model and its tokenizer, every job of a sweep
def reachable(endpoint: str) -> bool:
    """Whether a HEAD request to the endpoint gets an answer from the hub (not a proxy's
    407 or a gateway's 5xx), in PROBES tries."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    for attempt in range(PROBES):
        if attempt:
            time.sleep(PROBE_PAUSE_S)
        try:
            # the wait huggingface_hub itself gives a metadata request (HF_HUB_ETAG_TIMEOUT)
            status = get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except Exception:  # noqa: BLE001  no route or name, refused, timed out
            continue
        if status.status_code != 407 and status.status_code < 500:
            return True
    return False
