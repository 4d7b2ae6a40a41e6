"""Waking submit tasks when an in-flight slot frees, without polling the database.

The database claim (worker.claim) is the truth; a token here is only a hint that a claim may now
succeed. With a Redis broker, `after_jobs_finished` pushes one token per freed slot onto a list
and waiting tasks block on BLPOP; with any other broker (the demo's embedded one) waiting is a
short sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Protocol

import redis

from imagine.settings import get_settings

logger = logging.getLogger("worker.slots")

FREED_KEY = "imagine:slots:freed"
# Present while the broker keeps its data; worker.reconcile republishes when it vanishes.
EPOCH_KEY = "imagine:broker-epoch"
# Seconds of one blocking wait; the submit task re-checks the database after each.
WAIT_STEP = 1.0
SLEEP_STEP = 0.25

_waiters_lock = threading.Lock()
_waiters = threading.BoundedSemaphore(4)


class SlotSignal(Protocol):
    """Wake-ups for tasks waiting on a free slot."""

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when a slot was announced."""

    def announce(self, count: int) -> None:
        """Tell waiters that `count` slots have just freed."""


class RedisSlotSignal:
    """Tokens on a Redis list: LPUSH on free, BLPOP to wait."""

    def __init__(self, client: redis.Redis, cap: int) -> None:
        self._client = client
        self._cap = cap

    def wait(self, timeout: float) -> bool:
        """Block on the token list for up to `timeout` seconds."""
        try:
            return self._client.blpop([FREED_KEY], timeout=max(timeout, 0.01)) is not None
        except redis.RedisError as exc:
            logger.warning("slot wait failed (%s); sleeping instead", type(exc).__name__)
            time.sleep(min(timeout, SLEEP_STEP))
            return False

    def announce(self, count: int) -> None:
        """Push `count` tokens, trimmed so stale tokens stay bounded by the cap."""
        if count <= 0:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.lpush(FREED_KEY, *(["1"] * min(count, self._cap)))
        pipe.ltrim(FREED_KEY, 0, self._cap - 1)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # Waiters re-check the database after each wait step anyway.
            logger.warning("could not announce freed slots: %s", type(exc).__name__)


class SleepSlotSignal:
    """The fallback without Redis: waiting is a short sleep, announcing does nothing."""

    def wait(self, timeout: float) -> bool:
        """Sleep a little."""
        time.sleep(min(timeout, SLEEP_STEP))
        return False

    def announce(self, count: int) -> None:
        """Nothing to do: sleepers re-check on their own."""


def broker_redis_url() -> str | None:
    """The broker's Redis URL, or None when the broker is not Redis."""
    url = get_settings().celery_broker_url
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


@lru_cache(maxsize=1)
def broker_redis() -> redis.Redis | None:
    """A pooled client of the broker's Redis, or None when the broker is not Redis."""
    url = broker_redis_url()
    if url is None:
        return None
    # The socket timeout must outlast a blocking BLPOP step.
    return redis.Redis.from_url(url, socket_timeout=WAIT_STEP + 5, health_check_interval=30)


@lru_cache(maxsize=1)
def get_slot_signal() -> SlotSignal:
    """The process-wide slot signal for the configured broker."""
    client = broker_redis()
    if client is None:
        return SleepSlotSignal()
    return RedisSlotSignal(client, get_settings().max_in_flight)


def mark_broker_epoch() -> None:
    """Write the broker-loss marker unless present (see worker.reconcile); best effort."""
    client = broker_redis()
    if client is None:
        return
    try:
        client.set(EPOCH_KEY, str(time.time()), nx=True)
    except redis.RedisError as exc:
        logger.warning("could not write the broker marker: %s", type(exc).__name__)


def configure_waiters(concurrency: int) -> None:
    """Let at most half the worker's threads block on a slot, so other queues keep moving."""
    global _waiters
    with _waiters_lock:
        _waiters = threading.BoundedSemaphore(max(1, concurrency // 2))


def try_become_waiter() -> threading.BoundedSemaphore | None:
    """The waiter semaphore, acquired, or None when enough threads are already waiting."""
    semaphore = _waiters
    return semaphore if semaphore.acquire(blocking=False) else None
