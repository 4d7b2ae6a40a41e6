"""Claiming a job for submission under the global in-flight cap, with the database as the judge.

One conditional UPDATE moves QUEUED -> SUBMITTING only while fewer than `cap` jobs are in flight
(SUBMITTING, SUBMITTED, IN_PROGRESS) across every worker and machine. Two claims must not both see
the same count: on PostgreSQL a transaction-scoped advisory lock taken first serialises them; on
SQLite the writer lock of BEGIN IMMEDIATE (models.db) already does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models import IN_FLIGHT_STATES, AttemptOutcome, Batch, Job, JobAttempt, JobStatus, utcnow

# pg_advisory_xact_lock key of the claim ("imag" in ASCII); any constant shared by all claimers.
CLAIM_LOCK_KEY = 0x696D6167
_IN_FLIGHT = sorted(IN_FLIGHT_STATES)


class ClaimStatus(StrEnum):
    """Why a claim did or did not happen."""

    CLAIMED = "claimed"
    CAP_FULL = "cap_full"
    NOT_DUE = "not_due"
    HELD = "held"
    NOT_QUEUED = "not_queued"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """What a submit needs of a claimed job."""

    id: uuid.UUID
    batch_id: uuid.UUID
    attempts: int
    attempt_id: int
    attempt_number: int
    prompt: str
    aspect_ratio: str
    resolution: str
    reasoning: str
    seed: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The claim's status, the job when claimed, and its retry time when not yet due."""

    status: ClaimStatus
    job: ClaimedJob | None = None
    retry_at: datetime | None = None


def in_flight_count(session: Session) -> int:
    """Jobs occupying a slot right now."""
    return int(session.scalar(select(func.count()).where(Job.status.in_(_IN_FLIGHT))) or 0)


def claim_job(
    session: Session, job_id: uuid.UUID, cap: int, *, now: datetime | None = None
) -> ClaimResult:
    """Move the job QUEUED -> SUBMITTING and open its attempt row, if due, unheld and under cap."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
    inflight = Job.__table__.alias("inflight")
    busy = (
        select(func.count())
        .select_from(inflight)
        .where(inflight.c.status.in_(_IN_FLIGHT))
        .scalar_subquery()
    )
    held = exists().where(Batch.id == Job.batch_id, or_(Batch.paused, Batch.cancelled))
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.QUEUED,
            or_(Job.retry_at.is_(None), Job.retry_at <= now),
            ~held,
            busy < cap,
        )
        .values(
            status=JobStatus.SUBMITTING,
            status_changed_at=now,
            attempts=Job.attempts + 1,
            retry_at=None,
        )
        .returning(
            Job.batch_id,
            Job.attempts,
            Job.prompt,
            Job.aspect_ratio,
            Job.resolution,
            Job.reasoning,
            Job.seed,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return _why_not(session, job_id, now)
    number = (
        select(func.coalesce(func.max(JobAttempt.number), 0) + 1)
        .where(JobAttempt.job_id == job_id)
        .scalar_subquery()
    )
    attempt_id, attempt_number = session.execute(
        insert(JobAttempt)
        .values(job_id=job_id, number=number, outcome=AttemptOutcome.PENDING, started_at=now)
        .returning(JobAttempt.id, JobAttempt.number)
    ).one()
    job = ClaimedJob(
        id=job_id,
        batch_id=row.batch_id,
        attempts=row.attempts,
        attempt_id=attempt_id,
        attempt_number=attempt_number,
        prompt=row.prompt,
        aspect_ratio=row.aspect_ratio,
        resolution=row.resolution,
        reasoning=row.reasoning,
        seed=row.seed,
    )
    return ClaimResult(ClaimStatus.CLAIMED, job)


def _why_not(session: Session, job_id: uuid.UUID, now: datetime) -> ClaimResult:
    row = session.execute(
        select(Job.status, Job.retry_at, Batch.paused, Batch.cancelled)
        .join(Batch, Batch.id == Job.batch_id)
        .where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return ClaimResult(ClaimStatus.MISSING)
    if row.status is not JobStatus.QUEUED:
        return ClaimResult(ClaimStatus.NOT_QUEUED)
    if row.paused or row.cancelled:
        return ClaimResult(ClaimStatus.HELD)
    if row.retry_at is not None and row.retry_at > now:
        return ClaimResult(ClaimStatus.NOT_DUE, retry_at=row.retry_at)
    return ClaimResult(ClaimStatus.CAP_FULL)
