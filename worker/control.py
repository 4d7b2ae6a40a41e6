"""Operator actions on batches and jobs: cancel, retry failed, pause, resume."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select, update

from fal_queue.client import FalQueueClient
from fal_queue.exceptions import FalError
from models import Batch, Job, JobStatus, utcnow
from models.db import session_scope
from models.transitions import transition_many
from worker.exceptions import NotFoundError, PipelineError
from worker.publish import publish_submits

logger = logging.getLogger("worker.control")

CHUNK = 1_000
CANCEL_THREADS = 8
_LOCAL = [JobStatus.QUEUED, JobStatus.SUBMITTING]
_AT_FAL = [JobStatus.SUBMITTED, JobStatus.IN_PROGRESS]


@dataclass(frozen=True, slots=True)
class Target:
    """What an id names: a batch or a single job (with its batch)."""

    kind: str
    id: uuid.UUID
    batch_id: uuid.UUID


@dataclass
class CancelReport:
    """What a cancel did."""

    cancelled_local: int = 0
    cancelled_at_fal: int = 0
    fal_answers: dict[str, int] = field(default_factory=dict)


def resolve(ident: str, *, database_url: str | None = None) -> Target:
    """The batch or job an id names; NotFoundError otherwise."""
    try:
        parsed = uuid.UUID(ident)
    except ValueError:
        raise NotFoundError(f"{ident!r} is not a batch or job id") from None
    with session_scope(database_url) as session:
        if session.scalar(select(Batch.id).where(Batch.id == parsed)) is not None:
            return Target("batch", parsed, parsed)
        batch_id = session.scalar(select(Job.batch_id).where(Job.id == parsed))
    if batch_id is None:
        raise NotFoundError(f"no batch or job {ident}")
    return Target("job", parsed, batch_id)


def _id_chunks(
    target: Target, statuses: list[JobStatus], database_url: str | None
) -> Iterator[list[tuple[uuid.UUID, str | None]]]:
    after: uuid.UUID | None = None
    while True:
        query = select(Job.id, Job.fal_response_url).where(Job.status.in_(statuses))
        if target.kind == "job":
            query = query.where(Job.id == target.id)
        else:
            query = query.where(Job.batch_id == target.id)
        if after is not None:
            query = query.where(Job.id > after)
        with session_scope(database_url) as session:
            rows = [
                (r.id, r.fal_response_url)
                for r in session.execute(query.order_by(Job.id).limit(CHUNK))
            ]
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def cancel(
    target: Target, client: FalQueueClient | None, *, database_url: str | None = None
) -> CancelReport:
    """Cancel a job or a whole batch: local jobs at once, jobs at fal via fal's cancel too.

    Every job is marked CANCELLED in the database first (so a later webhook is absorbed), then
    fal is asked to stop the requests, with no transaction open.
    """
    from worker.events import after_jobs_finished

    report = CancelReport()
    if target.kind == "batch":
        with session_scope(database_url) as session:
            session.execute(
                update(Batch)
                .where(Batch.id == target.id)
                .values(cancelled=True, cancelled_at=utcnow())
            )
    for rows in _id_chunks(target, _LOCAL, database_url):
        with session_scope(database_url) as session:
            moved = transition_many(
                session, [r[0] for r in rows], JobStatus.CANCELLED, from_=_LOCAL
            )
        report.cancelled_local += moved
        after_jobs_finished([r[0] for r in rows], database_url=database_url)
    for rows in _id_chunks(target, _AT_FAL, database_url):
        with session_scope(database_url) as session:
            moved = transition_many(
                session, [r[0] for r in rows], JobStatus.CANCELLED, from_=_AT_FAL
            )
        report.cancelled_at_fal += moved
        urls = [url for _, url in rows if url]
        if client is not None and urls:
            with ThreadPoolExecutor(max_workers=min(CANCEL_THREADS, len(urls))) as pool:
                for answer in pool.map(lambda url: _cancel_at_fal(client, url), urls):
                    report.fal_answers[answer] = report.fal_answers.get(answer, 0) + 1
        after_jobs_finished([r[0] for r in rows], database_url=database_url)
    return report


def _cancel_at_fal(client: FalQueueClient, url: str) -> str:
    try:
        return client.cancel(url).value
    except FalError as exc:
        logger.warning("fal cancel failed: %s", exc)
        return "error"


def retry_failed(batch_id: uuid.UUID, *, database_url: str | None = None) -> int:
    """Re-queue every FAILED job of a batch and publish them; returns how many.

    The one user-initiated exception to forward-only moves: a dedicated UPDATE FAILED -> QUEUED
    that clears the error, request id and attempt count, and reopens the batch. Old attempts keep
    their request ids, so a late webhook of one is still recognised.
    """
    with session_scope(database_url) as session:
        cancelled = session.scalar(select(Batch.cancelled).where(Batch.id == batch_id))
    if cancelled is None:
        raise NotFoundError(f"no batch {batch_id}")
    if cancelled:
        raise PipelineError(f"batch {batch_id} was cancelled; it cannot be retried")
    total = 0
    target = Target("batch", batch_id, batch_id)
    for rows in _id_chunks(target, [JobStatus.FAILED], database_url):
        ids = [r[0] for r in rows]
        now = utcnow()
        with session_scope(database_url) as session:
            moved = (
                session.execute(
                    update(Job)
                    .where(Job.id.in_(ids), Job.status == JobStatus.FAILED)
                    .values(
                        status=JobStatus.QUEUED,
                        status_changed_at=now,
                        error_type=None,
                        error_message=None,
                        fal_request_id=None,
                        fal_response_url=None,
                        gateway_request_id=None,
                        attempts=0,
                        retry_at=None,
                        completed_at=None,
                        submitted_at=None,
                        started_at=None,
                        last_polled_at=None,
                    )
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                )
                .scalars()
                .all()
            )
            session.execute(update(Batch).where(Batch.id == batch_id).values(finished_at=None))
        total += publish_submits(moved, database_url=database_url)
    return total


def pause(
    batch_id: uuid.UUID, reason: str = "paused by user", *, database_url: str | None = None
) -> None:
    """Stop submitting a batch's jobs (in-flight ones finish normally)."""
    _set_paused(batch_id, True, reason, database_url)


def resume(batch_id: uuid.UUID, *, database_url: str | None = None) -> int:
    """Unpause a batch and publish its QUEUED jobs again; returns how many were published."""
    _set_paused(batch_id, False, None, database_url)
    total = 0
    target = Target("batch", batch_id, batch_id)
    for rows in _id_chunks(target, [JobStatus.QUEUED], database_url):
        total += publish_submits([r[0] for r in rows], database_url=database_url)
    return total


def _set_paused(
    batch_id: uuid.UUID, paused: bool, reason: str | None, database_url: str | None
) -> None:
    with session_scope(database_url) as session:
        found = session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(paused=paused, pause_reason=reason)
            .returning(Batch.id)
        ).first()
    if found is None:
        raise NotFoundError(f"no batch {batch_id}")
