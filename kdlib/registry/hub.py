"""Is the Hugging Face hub reachable? Asked once per process, answered in at most a few seconds.

Libraries retry unreachable hosts with backoff (datasets waits ~25 s before giving up), so
the registries ask here first and go straight to their offline fallbacks when the answer is no.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


@functools.lru_cache(maxsize=1)
def hub_available(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False
