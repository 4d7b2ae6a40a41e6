"""Submitting one job to fal: claim (committed), call fal with no transaction open, record.

The domain functions take a session and never commit; `Submitter.run` is the boundary that owns
each short transaction and does the publishing that must follow a commit.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from fal_queue.client import FalQueueClient
from fal_queue.exceptions import FalError
from fal_queue.types import SubmitResult
from imagine.settings import Settings
from models import AttemptOutcome, Batch, Job, JobAttempt, JobStatus, utcnow
from models.db import session_scope
from models.transitions import transition
from worker.claim import ClaimedJob, ClaimStatus, claim_job
from worker.retry import Action, Verdict, backoff_delay, classify
from worker.slots import WAIT_STEP, SlotSignal, try_become_waiter

logger = logging.getLogger("worker.submit")

MAX_SLOT_WAIT = 20.0
RECORD_TRIES = 3
_S = JobStatus


class SubmitOutcome(StrEnum):
    """How one run of the submit task ended."""

    SUBMITTED = "submitted"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    LOST_CLAIM = "lost_claim"
    CAP_FULL = "cap_full"
    NOT_DUE = "not_due"
    HELD = "held"
    NOT_QUEUED = "not_queued"
    MISSING = "missing"


def webhook_url(settings: Settings, job_id: uuid.UUID) -> str | None:
    """`{WEBHOOK_BASE_URL}/webhooks/fal?job_id=<id>`, or None in polling mode."""
    if not settings.webhook_base_url:
        return None
    return f"{settings.webhook_base_url}/webhooks/fal?job_id={job_id}"


def fal_arguments(job: ClaimedJob) -> dict[str, Any]:
    """The model input of a job, seed included (always concrete)."""
    return {
        "prompt": job.prompt,
        "aspect_ratio": job.aspect_ratio,
        "resolution": job.resolution,
        "reasoning": job.reasoning,
        "seed": job.seed,
    }


def max_slot_wait(settings: Settings) -> float:
    """How long a task may hold a QUEUED job's message waiting for a slot.

    Kept under half the stale threshold so the reconciler's lost-message check, which uses the
    same threshold on `published_at`, never mistakes a waiting task for a lost message.
    """
    return min(MAX_SLOT_WAIT, settings.submitting_stale_seconds / 2)


def _close_attempt(
    session: Session,
    job: ClaimedJob,
    outcome: AttemptOutcome,
    now: datetime,
    *,
    verdict: Verdict | None = None,
    request_id: str | None = None,
) -> None:
    values: dict[str, Any] = {"finished_at": now}
    if request_id:
        values["fal_request_id"] = request_id
    if verdict is not None:
        values.update(
            http_status=verdict.http_status,
            error_type=verdict.error_type[:100],
            error_message=verdict.message[:2000],
        )
    # An attempt the reconciler already ABANDONED keeps that outcome but still learns its request
    # id, so the request's late webhook is recognised as this job's (models.results.find_job).
    session.execute(update(JobAttempt).where(JobAttempt.id == job.attempt_id).values(**values))
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.id == job.attempt_id, JobAttempt.outcome == AttemptOutcome.PENDING)
        .values(outcome=outcome)
    )


def record_accepted(
    session: Session, job: ClaimedJob, result: SubmitResult, *, now: datetime | None = None
) -> JobStatus | None:
    """Store fal's request id (SUBMITTING -> SUBMITTED); the job's status when the move lost.

    The job row is written before the attempt row, in the same order as the webhook receiver's
    transaction, so the two never deadlock when a fast webhook races this write.
    """
    now = now or utcnow()
    moved = transition(
        session,
        job.id,
        _S.SUBMITTED,
        from_={_S.SUBMITTING},
        values={
            "fal_request_id": result.request_id,
            "fal_response_url": result.response_url,
            "gateway_request_id": result.gateway_request_id,
        },
        now=now,
    )
    status = None
    if not moved:
        # A webhook may have completed the job already, or a cancel / stale recovery moved it.
        session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.fal_response_url.is_(None),
                Job.fal_request_id == result.request_id,
            )
            .values(fal_response_url=result.response_url)
        )
        status = session.scalar(select(Job.status).where(Job.id == job.id))
    _close_attempt(session, job, AttemptOutcome.ACCEPTED, now, request_id=result.request_id)
    return status


@dataclass(frozen=True, slots=True)
class ErrorDecision:
    """What recording a submit error did: the job's new state and the retry delay if any."""

    status: JobStatus | None
    delay: float | None = None


def record_error(
    session: Session,
    job: ClaimedJob,
    verdict: Verdict,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> ErrorDecision:
    """Release, fail or pause after a submit error; status None when the claim was already lost."""
    now = now or utcnow()
    decision = _move_after_error(session, job, verdict, settings, now)
    _close_attempt(session, job, verdict.outcome, now, verdict=verdict)
    if verdict.action is Action.PAUSE:
        session.execute(
            update(Batch)
            .where(Batch.id == job.batch_id)
            .values(paused=True, pause_reason=f"fal refused the account: {verdict.message}"[:2000])
        )
    return decision


def _move_after_error(
    session: Session, job: ClaimedJob, verdict: Verdict, settings: Settings, now: datetime
) -> ErrorDecision:
    error = {"error_type": verdict.error_type[:100], "error_message": verdict.message[:2000]}
    if verdict.action is Action.PAUSE:
        # The account cannot submit at all: the batch is held and this attempt does not count.
        released = transition(
            session,
            job.id,
            _S.QUEUED,
            from_={_S.SUBMITTING},
            values={"attempts": Job.attempts - 1, "retry_at": None},
            now=now,
        )
        return ErrorDecision(_S.QUEUED if released else None)
    if verdict.action is Action.FAIL or job.attempts >= settings.max_attempts:
        if verdict.action is Action.RETRY:
            message = f"gave up after {job.attempts} attempts: {verdict.message}"
            error["error_message"] = message[:2000]
        failed = transition(
            session, job.id, _S.FAILED, from_={_S.SUBMITTING}, values=error, now=now
        )
        return ErrorDecision(_S.FAILED if failed else None)
    delay = backoff_delay(
        job.attempts,
        base=settings.retry_backoff_base,
        cap=settings.retry_backoff_max,
        retry_after=verdict.retry_after,
    )
    released = transition(
        session,
        job.id,
        _S.QUEUED,
        from_={_S.SUBMITTING},
        values={"retry_at": now + timedelta(seconds=delay), **error},
        now=now,
    )
    return ErrorDecision(_S.QUEUED if released else None, delay)


@dataclass
class Submitter:
    """Runs the submit of one job end to end; one per process, shared by threads."""

    settings: Settings
    client: FalQueueClient
    signal: SlotSignal
    database_url: str | None = None

    def run(self, job_id: uuid.UUID) -> SubmitOutcome:
        """Claim (waiting for a slot), submit, record; schedules whatever must follow."""
        outcome, job = self._claim(job_id)
        if job is None:
            return outcome
        try:
            result = self.client.submit(
                self.settings.fal_model,
                fal_arguments(job),
                webhook_url=webhook_url(self.settings, job.id),
            )
        except FalError as exc:
            return self._failed_submit(job, classify(exc))
        status = self._record_accepted(job, result)
        if status is None:
            logger.debug("job %s submitted as %s", job.id, result.request_id)
            return SubmitOutcome.SUBMITTED
        if status is _S.CANCELLED:
            # Cancelled while we were calling fal: take the request back.
            self._cancel_quietly(result.cancel_url)
            return SubmitOutcome.CANCELLED
        return SubmitOutcome.LOST_CLAIM if status is not _S.COMPLETED else SubmitOutcome.SUBMITTED

    def _record_accepted(self, job: ClaimedJob, result: SubmitResult) -> JobStatus | None:
        # fal has the request now: a transient database error must not lose its id, so the
        # short record transaction is retried before leaving it to the stale-claim recovery.
        for attempt in range(RECORD_TRIES):
            try:
                with session_scope(self.database_url) as session:
                    return record_accepted(session, job, result)
            except OperationalError:
                if attempt == RECORD_TRIES - 1:
                    raise
                logger.warning("recording request %s failed; retrying", result.request_id)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _claim(self, job_id: uuid.UUID) -> tuple[SubmitOutcome, ClaimedJob | None]:
        from worker.publish import publish_submits

        waiter = try_become_waiter()
        # A task without a waiter permit waits one step only, leaving threads for other queues.
        limit = max_slot_wait(self.settings) if waiter is not None else WAIT_STEP
        deadline = time.monotonic() + limit
        try:
            while True:
                with session_scope(self.database_url) as session:
                    claim = claim_job(session, job_id, self.settings.max_in_flight)
                if claim.status is ClaimStatus.CLAIMED:
                    return SubmitOutcome.SUBMITTED, claim.job
                if claim.status is ClaimStatus.NOT_DUE and claim.retry_at is not None:
                    countdown = (claim.retry_at - utcnow()).total_seconds()
                    publish_submits([job_id], countdown=countdown, database_url=self.database_url)
                    return SubmitOutcome.NOT_DUE, None
                if claim.status is not ClaimStatus.CAP_FULL:
                    return SubmitOutcome(claim.status.value), None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Back of the queue, so the message is never held long by one thread.
                    publish_submits([job_id], database_url=self.database_url)
                    return SubmitOutcome.CAP_FULL, None
                self.signal.wait(min(WAIT_STEP, remaining))
        finally:
            if waiter is not None:
                waiter.release()

    def _failed_submit(self, job: ClaimedJob, verdict: Verdict) -> SubmitOutcome:
        from worker.events import after_jobs_finished
        from worker.publish import publish_submits

        logger.info(
            "submit of job %s (attempt %d) failed: %s %s: %s",
            job.id,
            job.attempt_number,
            verdict.http_status or "-",
            verdict.error_type,
            verdict.message,
        )
        with session_scope(self.database_url) as session:
            decision = record_error(session, job, verdict, self.settings)
        if decision.status is _S.FAILED:
            after_jobs_finished([job.id], database_url=self.database_url)
            return SubmitOutcome.FAILED
        if decision.status is _S.QUEUED:
            self.signal.announce(1)
            if verdict.action is Action.PAUSE:
                logger.warning("batch %s paused: fal refused the account", job.batch_id)
                return SubmitOutcome.PAUSED
            publish_submits([job.id], countdown=decision.delay, database_url=self.database_url)
            return SubmitOutcome.RETRY_SCHEDULED
        return SubmitOutcome.LOST_CLAIM

    def _cancel_quietly(self, cancel_url: str) -> None:
        try:
            self.client.cancel(cancel_url)
        except FalError as exc:
            logger.warning("could not cancel a request of a cancelled job: %s", exc)
