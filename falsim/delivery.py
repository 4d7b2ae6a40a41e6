"""Signed webhook delivery: a bounded pool of senders, retries with backoff, delivery faults.

Ready deliveries wait in one asyncio queue drained by `webhook_concurrency` sender tasks over one
connection-limited client session, so thousands of pending webhooks never open thousands of
sockets. Delays and retry backoff are loop timers that put the delivery back on that queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from nacl.signing import SigningKey

from fal_queue.webhooks import sign_webhook
from falsim.config import SimConfig

if TYPE_CHECKING:
    from falsim.engine import SimRequest

logger = logging.getLogger(__name__)

# A scaled-down timeout below this would fail healthy deliveries on a busy machine.
MIN_TIMEOUT = 0.5
# A slow delivery stalls this many timeouts mid-body, so the attempt surely times out.
SLOW_STALL_FACTOR = 1.5


@dataclass(slots=True)
class Delivery:
    """One webhook body on its way to one URL, counting its attempts."""

    request: SimRequest
    url: str
    body: bytes
    epoch: int
    duplicate: bool = False
    attempt: int = 0


class WebhookDispatcher:
    """Sends webhooks from a fixed pool of sender tasks; call `send` on the loop thread."""

    def __init__(self, config: SimConfig, signing_key: SigningKey) -> None:
        self.config = config
        self.signing_key = signing_key
        self.counters: Counter[str] = Counter()
        self.epoch = 0
        self.pending = 0
        self._ready: asyncio.Queue[Delivery] = asyncio.Queue()
        self._senders: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client session and start the sender tasks."""
        size = self.config.webhook_concurrency
        connector = aiohttp.TCPConnector(limit=size, limit_per_host=size)
        self._session = aiohttp.ClientSession(connector=connector)
        self._senders = [
            asyncio.create_task(self._sender(), name=f"falsim-webhook-{i}") for i in range(size)
        ]

    async def close(self) -> None:
        """Stop the senders and close every connection."""
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        """Drop every pending delivery and count."""
        self.epoch += 1
        while not self._ready.empty():
            self._ready.get_nowait()
        self.pending = 0
        self.counters.clear()

    def _scaled(self, seconds: float) -> float:
        return seconds * self.config.time_scale

    def timeout(self) -> float:
        """Seconds one attempt may take before it counts as failed."""
        return max(MIN_TIMEOUT, self._scaled(self.config.webhook_timeout))

    def send(self, request: SimRequest, url: str, body: bytes) -> None:
        """Deliver `body` for `request`, subject to the drop/delay/duplicate faults."""
        faults = self.config.faults
        rng = request.rng
        if rng.random() < faults.webhook_drop_rate:
            self.counters["dropped"] += 1
            return
        delay = 0.0
        if rng.random() < faults.webhook_delay_rate:
            self.counters["delayed"] += 1
            delay = self._scaled(rng.uniform(0.0, faults.webhook_delay_max))
        self._schedule(Delivery(request, url, body, self.epoch), delay)
        if rng.random() < faults.webhook_duplicate_rate:
            self.counters["duplicates_sent"] += 1
            extra = self._scaled(rng.uniform(0.0, 2.0))
            self._schedule(Delivery(request, url, body, self.epoch, duplicate=True), delay + extra)

    def _schedule(self, delivery: Delivery, delay: float) -> None:
        self.pending += 1
        if delay <= 0:
            self._ready.put_nowait(delivery)
        else:
            asyncio.get_running_loop().call_later(delay, self._requeue, delivery)

    def _requeue(self, delivery: Delivery) -> None:
        if delivery.epoch == self.epoch:
            self._ready.put_nowait(delivery)

    async def _sender(self) -> None:
        while True:
            delivery = await self._ready.get()
            if delivery.epoch != self.epoch:
                continue
            try:
                delivered = await self._attempt(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A sender must survive anything one receiver does to it.
                logger.exception("webhook attempt for %s crashed", delivery.request.id)
                delivered = False
            if delivery.epoch != self.epoch:
                continue
            if delivered:
                self.pending -= 1
                self.counters["delivered"] += 1
                delivery.request.webhook_deliveries += 1
            elif delivery.attempt >= self.config.webhook_attempts:
                self.pending -= 1
                self.counters["exhausted"] += 1
                logger.warning(
                    "webhook for %s given up after %d attempts",
                    delivery.request.id,
                    delivery.attempt,
                )
            else:
                backoff = self._scaled(self.config.webhook_backoff * 2 ** (delivery.attempt - 1))
                asyncio.get_running_loop().call_later(backoff, self._requeue, delivery)

    async def _attempt(self, delivery: Delivery) -> bool:
        assert self._session is not None
        delivery.attempt += 1
        delivery.request.webhook_attempts += 1
        self.counters["attempts"] += 1
        timeout = self.timeout()
        headers = sign_webhook(
            self.signing_key, delivery.request.id, self.config.user_id, delivery.body
        )
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(delivery.body))
        slow = delivery.request.rng.random() < self.config.faults.webhook_slow_rate
        data: bytes | AsyncIterator[bytes] = delivery.body
        if slow:
            self.counters["slow"] += 1
            data = _trickle(delivery.body, timeout * SLOW_STALL_FACTOR)
        try:
            async with self._session.post(
                delivery.url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counters["failed_attempts"] += 1
            if isinstance(exc, TimeoutError):
                self.counters["timeouts"] += 1
            logger.debug("webhook attempt %d for %s: %r", delivery.attempt, delivery.url, exc)
            return False
        if 200 <= status < 300:
            return True
        self.counters["failed_attempts"] += 1
        self.counters[f"status_{status}"] += 1
        return False


async def _trickle(body: bytes, stall: float) -> AsyncIterator[bytes]:
    """Send half the body, then stall: a delivery slower than any sane timeout."""
    half = max(1, len(body) // 2)
    yield body[:half]
    await asyncio.sleep(stall)
    yield body[half:]
