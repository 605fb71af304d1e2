"""The Hugging Face hub, asked once whether it is there: offline, the local cache answers at once.

An unreachable hub costs huggingface_hub five retries per file (1 + 2 + 4 + 8 + 8 s, a warning
each) before the caller's one-line error: about 50 s for a model and its tokenizer. One HEAD
request to the endpoint, through huggingface_hub's own client (its proxies, its
HF_ENDPOINT), says whether the hub is reachable; when it is not, huggingface_hub's offline mode
is switched on for this process, so transformers and timm read the local cache and fail at
once, with prunebench's one line, when the files are not there (`datasets`, which
dataset=wikitext2 uses and the tests do not install, goes through huggingface_hub too).
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def offline_unless_reachable(what: str) -> bool:
    """True when the hub is out of reach or offline mode is already on (set now if need be);
    `what` names the key that asked, in the log."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if reachable(constants.ENDPOINT):
        return False
    constants.HF_HUB_OFFLINE = True
    log.info("%s: %s is out of reach; the local Hugging Face cache only", what,
             constants.ENDPOINT)
    return True


@functools.cache  # a model and its tokenizer ask once
def reachable(endpoint: str) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        # the wait huggingface_hub itself gives a metadata request (HF_HUB_ETAG_TIMEOUT)
        get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception:  # noqa: BLE001  no route or name, refused, timed out: so would the files be
        return False
    return True
