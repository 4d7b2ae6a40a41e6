"""Handing job ids to the broker in chunks over one producer, stamping `published_at`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import update

from models import Job, utcnow
from models.db import session_scope
from worker.celery_app import ARCHIVE_QUEUE, SUBMIT_QUEUE, celery_app

logger = logging.getLogger("worker.publish")

CHUNK = 1_000


def _chunks(ids: Iterable[uuid.UUID], size: int = CHUNK) -> Iterable[list[uuid.UUID]]:
    chunk: list[uuid.UUID] = []
    for job_id in ids:
        chunk.append(job_id)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def publish_submits(
    job_ids: Iterable[uuid.UUID],
    *,
    countdown: float | None = None,
    database_url: str | None = None,
    stamp: bool = True,
) -> int:
    """Publish a submit message per job (after the caller's commit); returns how many.

    `published_at` is stamped (and committed) before sending, so the reconciler never mistakes a
    message being sent for a lost one; a crash in between leaves a stamp without a message, which
    the reconciler's slow net finds.
    """
    count = 0
    for chunk in _chunks(job_ids):
        if stamp:
            with session_scope(database_url) as session:
                session.execute(
                    update(Job)
                    .where(Job.id.in_(chunk))
                    .values(published_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
        _send("worker.tasks.submit_job", chunk, SUBMIT_QUEUE, countdown)
        count += len(chunk)
    return count


def publish_archives(job_ids: Sequence[uuid.UUID], *, countdown: float | None = None) -> None:
    """Publish an archive message per job."""
    for chunk in _chunks(job_ids):
        _send("worker.tasks.archive_job", chunk, ARCHIVE_QUEUE, countdown)


def _send(task: str, ids: Sequence[uuid.UUID], queue: str, countdown: float | None) -> None:
    options = {"countdown": max(0.0, countdown)} if countdown else {}
    with celery_app.producer_or_acquire() as producer, _batched(producer):
        for job_id in ids:
            celery_app.send_task(
                task, args=[str(job_id)], queue=queue, producer=producer, **options
            )


def _batched(producer: Any) -> AbstractContextManager[Any]:
    # kombu >= 5.6 pipelines a Redis producer's publishes (one round trip per chunk instead of
    # one per message); other transports, and older kombu, publish one by one.
    batch = getattr(producer, "batch", None)
    return batch(CHUNK) if batch is not None else nullcontext()
