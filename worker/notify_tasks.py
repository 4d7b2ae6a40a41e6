"""Celery tasks of the `notify` queue: react to finished jobs and batches, deliver notifications."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from models import NotificationOutcome
from worker import notify
from worker.celery_app import NOTIFY_QUEUE, celery_app

logger = logging.getLogger("worker.notify_tasks")


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        logger.error("dropping a notify message with a malformed id %r", value)
        return None


def _send_deliveries(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        deliver_notification.apply_async(args=[delivery_id], queue=NOTIFY_QUEUE)


@celery_app.task(name="worker.notify_tasks.react_to_job", ignore_result=True)  # type: ignore[untyped-decorator]
def react_to_job(job_id: str) -> int:
    """Run the job hooks and queue the job's notification; returns how many were queued."""
    parsed = _uuid(job_id)
    if parsed is None:
        return 0
    deliveries = notify.react_to_job(parsed)
    _send_deliveries(deliveries)
    return len(deliveries)


@celery_app.task(name="worker.notify_tasks.react_to_batch", ignore_result=True)  # type: ignore[untyped-decorator]
def react_to_batch(batch_id: str) -> int:
    """Queue the batch.completed notification; returns how many were queued."""
    parsed = _uuid(batch_id)
    if parsed is None:
        return 0
    deliveries = notify.react_to_batch(parsed)
    _send_deliveries(deliveries)
    return len(deliveries)


@celery_app.task(  # type: ignore[untyped-decorator]
    bind=True, name="worker.notify_tasks.deliver_notification", ignore_result=True, max_retries=None
)
def deliver_notification(self: Any, delivery_id: int) -> str:
    """POST one notification; on failure retry with backoff (the row counts the attempts)."""
    attempt = notify.deliver(int(delivery_id))
    if attempt.outcome is NotificationOutcome.RETRYING:
        raise self.retry(countdown=notify.retry_delay(attempt.attempts), queue=NOTIFY_QUEUE)
    return attempt.outcome.value
