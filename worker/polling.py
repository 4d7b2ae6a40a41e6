"""Asking fal about submitted jobs and applying what it says through models.results."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from fal_queue.client import FalQueueClient
from fal_queue.exceptions import FalAPIError, FalError, FalPermanentError
from fal_queue.types import RequestStatus
from imagine.settings import Settings
from models import Job, JobStatus, utcnow
from models.results import ApplyOutcome, apply_failure, apply_success, describe_error, find_job
from models.transitions import transition

logger = logging.getLogger("worker.polling")

POLL_CHUNK = 200
POLL_THREADS = 8
_POLLABLE = [JobStatus.SUBMITTED, JobStatus.IN_PROGRESS]


@dataclass(frozen=True, slots=True)
class PolledJob:
    """A job due for a poll: its id, current request and where to ask."""

    id: uuid.UUID
    request_id: str
    response_url: str


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """What fal said of one request: still running, its output, or its error."""

    job: PolledJob
    status: RequestStatus | None = None
    output: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None


def poll_timing(settings: Settings) -> tuple[float, float]:
    """(seconds after submit or last webhook before the first poll, seconds between polls)."""
    if settings.polling_mode:
        # Nothing else will tell us: poll on every pass, a little under the pass interval apart.
        return 0.0, 0.9 * min(2.0, settings.reconcile_interval)
    return settings.poll_after_seconds, settings.poll_after_seconds


def due_for_poll(
    session: Session, settings: Settings, *, now: datetime | None = None, limit: int = POLL_CHUNK
) -> list[PolledJob]:
    """Select up to `limit` jobs due for a poll and stamp `last_polled_at` on them."""
    now = now or utcnow()
    after, interval = poll_timing(settings)
    quiet_since = func.coalesce(Job.webhook_received_at, Job.submitted_at)
    rows = session.execute(
        select(Job.id, Job.fal_request_id, Job.fal_response_url)
        .where(
            Job.status.in_(_POLLABLE),
            Job.fal_response_url.is_not(None),
            Job.fal_request_id.is_not(None),
            quiet_since <= now - timedelta(seconds=after),
            or_(
                Job.last_polled_at.is_(None),
                Job.last_polled_at <= now - timedelta(seconds=interval),
            ),
        )
        .order_by(Job.submitted_at)
        .limit(limit)
    ).all()
    jobs = [PolledJob(r.id, r.fal_request_id, r.fal_response_url) for r in rows]
    if jobs:
        session.execute(
            update(Job)
            .where(Job.id.in_([j.id for j in jobs]))
            .values(last_polled_at=now)
            .execution_options(synchronize_session=False)
        )
    return jobs


def _error_of(exc: FalAPIError) -> tuple[str, str]:
    if exc.detail is not None:
        return describe_error(exc.message, {"detail": exc.detail, "error_type": exc.error_type})
    return exc.error_type or "model_error", exc.message


def ask_fal(client: FalQueueClient, job: PolledJob) -> PollAnswer | None:
    """Status, then the result of a finished request; None when fal could not answer now."""
    try:
        status = client.status(job.response_url)
    except FalPermanentError as exc:
        if exc.status_code == 404:
            # fal no longer knows the request: its result is unrecoverable.
            return PollAnswer(job, error_type="request_lost", error_message=exc.message)
        logger.warning("status of job %s: %s", job.id, exc)
        return None
    except FalError as exc:
        logger.info("status of job %s failed for now: %s", job.id, exc)
        return None
    if status.status is not RequestStatus.COMPLETED:
        return PollAnswer(job, status=status.status)
    return fetch_answer(client, job, failed=status.failed, status_error=status)


def fetch_answer(
    client: FalQueueClient, job: PolledJob, *, failed: bool = False, status_error: Any = None
) -> PollAnswer | None:
    """The result of a finished request; a retryable error is final only if fal said it failed."""
    try:
        output = client.result(job.response_url)
    except FalPermanentError as exc:
        error_type, message = _error_of(exc)
        return PollAnswer(
            job, RequestStatus.COMPLETED, error_type=error_type, error_message=message
        )
    except FalAPIError as exc:
        if not failed:
            logger.info("result of job %s failed for now: %s", job.id, exc)
            return None
        error_type, message = _error_of(exc)
        if status_error is not None and status_error.error_type and exc.error_type is None:
            error_type = status_error.error_type
        return PollAnswer(
            job, RequestStatus.COMPLETED, error_type=error_type, error_message=message
        )
    except FalError as exc:
        logger.info("result of job %s failed for now: %s", job.id, exc)
        return None
    return PollAnswer(job, RequestStatus.COMPLETED, output=output)


def ask_many(client: FalQueueClient, jobs: Sequence[PolledJob]) -> list[PollAnswer]:
    """Poll several jobs at once over the shared client."""
    if len(jobs) <= 1:
        answers = [ask_fal(client, job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=min(POLL_THREADS, len(jobs))) as pool:
            answers = list(pool.map(lambda job: ask_fal(client, job), jobs))
    return [answer for answer in answers if answer is not None]


def apply_answers(
    session: Session, answers: Sequence[PollAnswer], *, now: datetime | None = None
) -> list[uuid.UUID]:
    """Record what fal said; returns the ids of jobs this moved to a terminal state."""
    finished: list[uuid.UUID] = []
    for answer in answers:
        job = answer.job
        if answer.status is RequestStatus.IN_PROGRESS:
            transition(session, job.id, JobStatus.IN_PROGRESS, from_={JobStatus.SUBMITTED}, now=now)
            continue
        if answer.output is None and answer.error_type is None:
            continue
        match = find_job(session, job.request_id, str(job.id))
        if match is None:
            continue
        if answer.output is not None:
            outcome = apply_success(session, match, job.request_id, answer.output, now=now)
        else:
            outcome = apply_failure(
                session,
                match,
                answer.error_type or "model_error",
                answer.error_message or "",
                now=now,
            )
        if outcome is ApplyOutcome.APPLIED:
            finished.append(job.id)
    return finished


class FetchLaterError(Exception):
    """fal could not give the result now; the caller retries later."""


def fetch_and_apply(
    client: FalQueueClient, job_id: uuid.UUID, *, database_url: str | None = None
) -> bool:
    """Fetch one job's result from fal and apply it; True when this moved the job to terminal.

    Status first, then result: the webhook that asked for this may be an older attempt's, and the
    current request may still be running.
    """
    from models.db import session_scope
    from worker.events import after_jobs_finished

    with session_scope(database_url) as session:
        row = session.execute(
            select(Job.status, Job.fal_request_id, Job.fal_response_url).where(Job.id == job_id)
        ).one_or_none()
    if row is None or row.status.terminal:
        return False
    if not row.fal_request_id or not row.fal_response_url:
        raise FetchLaterError(f"job {job_id} has no recorded request yet")
    answer = ask_fal(client, PolledJob(job_id, row.fal_request_id, row.fal_response_url))
    if answer is None:
        raise FetchLaterError(f"fal could not answer for job {job_id} now")
    with session_scope(database_url) as session:
        finished = apply_answers(session, [answer])
    after_jobs_finished(finished, database_url=database_url)
    return bool(finished)
