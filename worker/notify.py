"""Reactions to finished work: in-process hooks and Standard Webhooks notifications to notify_url.

Both run from the `notify` queue after the job's state is committed; neither can change a job.
Each event gets one `notification_deliveries` row whose `webhook_id` is derived from the event
and its subject, so a re-run reaction never sends an event twice and every retry carries the same
id and bytes (receivers dedupe on `webhook-id`). Hooks run at least once per finished job: a
worker lost mid-task runs them again on redelivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imagine.settings import Settings, get_settings
from models import (
    Batch,
    Job,
    JobStatus,
    NotificationDelivery,
    NotificationEvent,
    NotificationOutcome,
    utcnow,
)
from models.db import session_scope
from models.queries import batch_summary, images_by_job, job_to_dict

logger = logging.getLogger("worker.notify")

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format marker, not a secret
SIGNATURE_VERSION = "v1"
USER_AGENT = "imagine-batch-notify/0.1"
NOTIFY_TIMEOUT = 10.0
MAX_ATTEMPTS = 8
BACKOFF_BASE = 5.0
BACKOFF_FACTOR = 3.0
# Far below the broker's visibility timeout, which redelivers unacknowledged ETA messages.
BACKOFF_MAX = 1800.0
MAX_ERROR_CHARS = 500
# 410 Gone: the endpoint asked never to be called again (the Standard Webhooks convention).
GONE = 410

JobHook = Callable[[dict[str, Any]], object]
FINISHED_EVENTS = {
    JobStatus.COMPLETED: NotificationEvent.JOB_COMPLETED,
    JobStatus.FAILED: NotificationEvent.JOB_FAILED,
}


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>` decoded, as Standard Webhooks defines it.

    A secret without the prefix is used as its UTF-8 bytes, so a plain random string works too.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("NOTIFY_SECRET starts with whsec_ but is not base64") from None
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), message, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def notification_headers(
    secret: str, webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one Standard Webhooks delivery."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def webhook_id_for(event: NotificationEvent, subject: uuid.UUID) -> str:
    """A stable message id for one event of one job or batch."""
    return "msg_" + hashlib.sha256(f"{event.value}:{subject}".encode()).hexdigest()[:32]


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones."""
    return float(min(BACKOFF_BASE * BACKOFF_FACTOR ** max(attempts - 1, 0), BACKOFF_MAX))


@lru_cache(maxsize=8)
def load_hooks(names: tuple[str, ...]) -> tuple[tuple[str, JobHook], ...]:
    """The callables named `module:function`; a name that does not resolve is logged and skipped."""
    hooks: list[tuple[str, JobHook]] = []
    for name in names:
        module_name, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError):
            logger.exception("JOB_HOOKS entry %r does not name an importable callable", name)
            continue
        if not callable(target):
            logger.error("JOB_HOOKS entry %r is not callable", name)
            continue
        hooks.append((name, target))
    return tuple(hooks)


def run_job_hooks(hooks: Sequence[tuple[str, JobHook]], job: dict[str, Any]) -> int:
    """Call every hook with the job; returns how many raised (logged; none stops the rest)."""
    failed = 0
    for name, hook in hooks:
        try:
            hook(dict(job))
        except Exception:
            logger.exception("job hook %s raised for job %s", name, job.get("id"))
            failed += 1
    return failed


def _envelope(event: NotificationEvent, data: Mapping[str, Any]) -> str:
    return json.dumps(
        {"type": event.value, "timestamp": utcnow().isoformat(), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def create_delivery(
    session: Session,
    event: NotificationEvent,
    *,
    batch_id: uuid.UUID,
    job_id: uuid.UUID | None,
    url: str,
    data: Mapping[str, Any],
) -> int:
    """The delivery row of this event (created once); returns its id."""
    webhook_id = webhook_id_for(event, job_id or batch_id)
    existing = session.scalar(
        select(NotificationDelivery.id).where(NotificationDelivery.webhook_id == webhook_id)
    )
    if existing is not None:
        return existing
    row = NotificationDelivery(
        webhook_id=webhook_id,
        event=event,
        batch_id=batch_id,
        job_id=job_id,
        url=url,
        body=_envelope(event, data),
        outcome=NotificationOutcome.PENDING,
        attempts=0,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # A concurrent redelivery of the same reaction created it first.
        found = session.scalar(
            select(NotificationDelivery.id).where(NotificationDelivery.webhook_id == webhook_id)
        )
        assert found is not None
        return found
    return row.id


def react_to_job(
    job_id: uuid.UUID, *, settings: Settings | None = None, database_url: str | None = None
) -> list[int]:
    """Record the job's notification (if its batch has a notify_url) and run the job hooks.

    Returns the ids of deliveries to send; the caller sends them after this commit.
    """
    settings = settings or get_settings()
    deliveries: list[int] = []
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not job.status.terminal:
            return []
        data = job_to_dict(job, images_by_job(session, [job.id])[job.id])
        notify_url = session.scalar(select(Batch.notify_url).where(Batch.id == job.batch_id))
        event = FINISHED_EVENTS.get(job.status)
        if notify_url and event is not None:
            deliveries.append(
                create_delivery(
                    session, event, batch_id=job.batch_id, job_id=job.id, url=notify_url, data=data
                )
            )
    # Outside the transaction: a slow hook holds no connection and no lock.
    run_job_hooks(load_hooks(tuple(settings.job_hooks)), data)
    return deliveries


def react_to_batch(batch_id: uuid.UUID, *, database_url: str | None = None) -> list[int]:
    """Record the batch.completed notification of a finished batch; returns delivery ids."""
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.finished_at is None or not batch.notify_url:
            return []
        data = batch_summary(session, batch_id)
        return [
            create_delivery(
                session,
                NotificationEvent.BATCH_COMPLETED,
                batch_id=batch_id,
                job_id=None,
                url=batch.notify_url,
                data=data,
            )
        ]


@dataclass(frozen=True)
class DeliveryAttempt:
    """How one try of a delivery went."""

    outcome: NotificationOutcome
    attempts: int
    status_code: int | None = None
    error: str | None = None


@lru_cache(maxsize=1)
def get_notify_client() -> httpx.Client:
    """The process-wide pooled client for outgoing notifications."""
    return httpx.Client(timeout=NOTIFY_TIMEOUT, follow_redirects=False)


def _finish(
    database_url: str | None, delivery_id: int, attempt: DeliveryAttempt, *, tried: bool
) -> DeliveryAttempt:
    now = utcnow()
    values: dict[str, Any] = {
        "outcome": attempt.outcome,
        "attempts": attempt.attempts,
        "status_code": attempt.status_code,
        "error": attempt.error,
    }
    if tried:
        values["last_attempt_at"] = now
    if attempt.outcome is NotificationOutcome.DELIVERED:
        values["delivered_at"] = now
    with session_scope(database_url) as session:
        session.execute(
            update(NotificationDelivery)
            .where(NotificationDelivery.id == delivery_id)
            .values(values)
        )
    return attempt


def deliver(
    delivery_id: int,
    *,
    settings: Settings | None = None,
    database_url: str | None = None,
    client: httpx.Client | None = None,
) -> DeliveryAttempt:
    """Try one delivery once and record the outcome; RETRYING means call again later."""
    settings = settings or get_settings()
    with session_scope(database_url) as session:
        row = session.get(NotificationDelivery, delivery_id)
        if row is None:
            return DeliveryAttempt(NotificationOutcome.FAILED, 0, error="no such delivery")
        if row.outcome not in (NotificationOutcome.PENDING, NotificationOutcome.RETRYING):
            return DeliveryAttempt(row.outcome, row.attempts, row.status_code, row.error)
        url, body, webhook_id, attempts = row.url, row.body.encode(), row.webhook_id, row.attempts
    if settings.notify_secret is None:
        # Unsigned notifications would teach receivers to skip verification: never send them.
        skipped = DeliveryAttempt(
            NotificationOutcome.SKIPPED, attempts, error="NOTIFY_SECRET is not set"
        )
        logger.warning("notification %s not sent: NOTIFY_SECRET is not set", webhook_id)
        return _finish(database_url, delivery_id, skipped, tried=False)
    if not url.startswith(("http://", "https://")):
        bad = DeliveryAttempt(
            NotificationOutcome.FAILED, attempts, error="notify_url is not http(s)"
        )
        return _finish(database_url, delivery_id, bad, tried=False)
    attempts += 1
    headers = notification_headers(
        settings.notify_secret.get_secret_value(), webhook_id, int(time.time()), body
    )
    status_code: int | None = None
    try:
        response = (client or get_notify_client()).post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        error: str | None = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    else:
        status_code = response.status_code
        error = None if response.is_success else f"HTTP {status_code}"
    if error is None:
        outcome = NotificationOutcome.DELIVERED
    elif status_code == GONE or attempts >= MAX_ATTEMPTS:
        outcome = NotificationOutcome.FAILED
    else:
        outcome = NotificationOutcome.RETRYING
    if outcome is not NotificationOutcome.DELIVERED:
        logger.warning("notification %s attempt %d: %s", webhook_id, attempts, error)
    attempt = DeliveryAttempt(outcome, attempts, status_code, error)
    return _finish(database_url, delivery_id, attempt, tried=True)
