"""The one pooled fal client of a process."""

from __future__ import annotations

from functools import lru_cache

from fal_queue.client import FalQueueClient
from imagine.settings import get_settings

# Threads of one worker and the poller's pool share these connections.
MAX_CONNECTIONS = 64


@lru_cache(maxsize=1)
def get_fal_client() -> FalQueueClient:
    """A FalQueueClient for the configured queue URL and key, built on first use."""
    settings = get_settings()
    key = settings.fal_key.get_secret_value() if settings.fal_key else None
    return FalQueueClient(
        settings.fal_queue_url,
        key,
        timeout=settings.http_timeout,
        max_connections=MAX_CONNECTIONS,
    )
