"""The claim under the global cap and the submit bookkeeping, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from fal_queue.exceptions import FalAccountError, FalPermanentError, FalRateLimitedError
from fal_queue.types import SubmitResult
from imagine.settings import Settings
from models import AttemptOutcome, Batch, Job, JobAttempt, JobStatus, utcnow
from models.db import dispose_engines, session_scope
from worker.claim import ClaimStatus, claim_job, in_flight_count
from worker.enqueue import enqueue_rows
from worker.reconcile import lost_queued_ids, recover_stale_submitting
from worker.retry import classify
from worker.submit import record_accepted, record_error

S = JobStatus
SETTINGS = Settings(
    max_attempts=3,
    retry_backoff_base=0.5,
    retry_backoff_max=4,
    submitting_stale_seconds=60,
    _env_file=None,  # type: ignore[call-arg]
)


@pytest.fixture
def db(database_url: str) -> str:
    yield database_url  # type: ignore[misc]
    dispose_engines()


def make_jobs(url: str, n: int) -> list[uuid.UUID]:
    result = enqueue_rows(
        [{"prompt": f"p{i}", "resolution": "1K"} for i in range(n)],
        name="claim",
        database_url=url,
        publish=False,
        settings=SETTINGS,
    )
    with session_scope(url) as session:
        return list(
            session.scalars(select(Job.id).where(Job.batch_id == result.batch_id).order_by(Job.seq))
        )


def status(url: str, job_id: uuid.UUID) -> Job:
    with session_scope(url) as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def test_claims_stop_at_the_cap_and_count_attempts(db: str) -> None:
    ids = make_jobs(db, 5)
    results = []
    for job_id in ids:
        with session_scope(db) as session:
            results.append(claim_job(session, job_id, 3))
    assert [r.status for r in results] == [ClaimStatus.CLAIMED] * 3 + [ClaimStatus.CAP_FULL] * 2
    claimed = results[0].job
    assert claimed is not None and claimed.attempts == 1 and claimed.attempt_number == 1
    assert claimed.prompt == "p0" and claimed.resolution == "1K" and claimed.seed >= 1
    with session_scope(db) as session:
        assert in_flight_count(session) == 3
        assert claim_job(session, ids[0], 10).status is ClaimStatus.NOT_QUEUED
        assert claim_job(session, uuid.uuid4(), 10).status is ClaimStatus.MISSING
        attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == ids[0])).one()
        assert attempt.outcome is AttemptOutcome.PENDING and attempt.number == 1


def test_concurrent_claims_never_exceed_the_cap(db: str) -> None:
    ids = make_jobs(db, 24)
    cap = 5
    outcomes: list[ClaimStatus] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(part: list[uuid.UUID]) -> None:
        barrier.wait()
        for job_id in part:
            with session_scope(db) as session:
                result = claim_job(session, job_id, cap)
            with lock:
                outcomes.append(result.status)

    threads = [threading.Thread(target=worker, args=(ids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(ClaimStatus.CLAIMED) == cap
    with session_scope(db) as session:
        assert in_flight_count(session) == cap


def test_held_and_not_due_jobs_are_not_claimed(db: str) -> None:
    ids = make_jobs(db, 2)
    later = utcnow() + timedelta(minutes=5)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(retry_at=later))
        result = claim_job(session, ids[0], 10)
        assert result.status is ClaimStatus.NOT_DUE and result.retry_at == later
        session.execute(update(Batch).values(paused=True))
        assert claim_job(session, ids[1], 10).status is ClaimStatus.HELD


def claimed(db: str, job_id: uuid.UUID):  # type: ignore[no-untyped-def]
    with session_scope(db) as session:
        result = claim_job(session, job_id, 10)
    assert result.job is not None
    return result.job


def test_accepted_submit_records_the_request(db: str) -> None:
    (job_id,) = make_jobs(db, 1)
    job = claimed(db, job_id)
    answer = SubmitResult(
        "req-1", "http://fal/r/req-1", "http://fal/r/req-1/status", "http://fal/r/req-1/cancel"
    )
    with session_scope(db) as session:
        assert record_accepted(session, job, answer) is None
    row = status(db, job_id)
    assert (row.status, row.fal_request_id, row.fal_response_url) == (
        S.SUBMITTED,
        "req-1",
        answer.response_url,
    )
    with session_scope(db) as session:
        attempt = session.scalars(select(JobAttempt)).one()
    assert (attempt.outcome, attempt.fal_request_id) == (AttemptOutcome.ACCEPTED, "req-1")


def test_retryable_errors_back_off_then_fail_after_max_attempts(db: str) -> None:
    (job_id,) = make_jobs(db, 1)
    error = classify(FalRateLimitedError("slow down", status_code=429, retry_after=3.0))
    for attempt in range(1, 4):
        with session_scope(db) as session:
            session.execute(update(Job).values(retry_at=None))
        job = claimed(db, job_id)
        assert job.attempt_number == attempt
        with session_scope(db) as session:
            decision = record_error(session, job, error, SETTINGS)
        if attempt < 3:
            assert decision.status is S.QUEUED and decision.delay is not None
            assert decision.delay >= 3.0  # Retry-After is a floor
            row = status(db, job_id)
            assert row.retry_at is not None and row.retry_at > utcnow()
    row = status(db, job_id)
    assert (row.status, row.attempts, row.error_type) == (S.FAILED, 3, "http_429")
    assert "gave up after 3 attempts" in (row.error_message or "")


def test_permanent_error_fails_with_fals_type(db: str) -> None:
    (job_id,) = make_jobs(db, 1)
    job = claimed(db, job_id)
    error = FalPermanentError("prompt: bad", status_code=422, error_type="content_policy_violation")
    with session_scope(db) as session:
        assert record_error(session, job, classify(error), SETTINGS).status is S.FAILED
    row = status(db, job_id)
    assert (row.status, row.error_type, row.error_message) == (
        S.FAILED,
        "content_policy_violation",
        "prompt: bad",
    )


def test_account_error_pauses_the_batch_without_burning_an_attempt(db: str) -> None:
    (job_id,) = make_jobs(db, 1)
    job = claimed(db, job_id)
    error = FalAccountError("User is locked. Reason: Exhausted balance.", status_code=403)
    with session_scope(db) as session:
        assert record_error(session, job, classify(error), SETTINGS).status is S.QUEUED
        batch = session.scalars(select(Batch)).one()
    row = status(db, job_id)
    assert (row.status, row.attempts) == (S.QUEUED, 0)
    assert batch.paused and "Exhausted balance" in (batch.pause_reason or "")
    job = None
    with session_scope(db) as session:
        assert claim_job(session, job_id, 10).status is ClaimStatus.HELD
        # The next attempt gets a new number even though the paused one did not count.
        session.execute(update(Batch).values(paused=False))
    again = claimed(db, job_id)
    assert (again.attempts, again.attempt_number) == (1, 2)


def test_stale_submitting_is_requeued_as_a_new_attempt_or_failed(db: str) -> None:
    ids = make_jobs(db, 2)
    first = claimed(db, ids[0])
    claimed(db, ids[1])
    old = utcnow() - timedelta(minutes=5)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == ids[1]).values(attempts=3))
        session.execute(update(Job).values(status_changed_at=old))
    with session_scope(db) as session:
        again, failed = recover_stale_submitting(session, SETTINGS, now=utcnow())
    assert (again, failed) == ([ids[0]], [ids[1]])
    assert status(db, ids[0]).status is S.QUEUED
    assert (status(db, ids[1]).status, status(db, ids[1]).error_type) == (S.FAILED, "abandoned")
    with session_scope(db) as session:
        outcomes = set(session.scalars(select(JobAttempt.outcome)))
    assert outcomes == {AttemptOutcome.ABANDONED}
    # The abandoned request, if fal accepted it after all, still names its attempt.
    answer = SubmitResult(
        "late", "http://fal/r/late", "http://fal/r/late/status", "http://fal/r/late/cancel"
    )
    with session_scope(db) as session:
        assert record_accepted(session, first, answer) is S.QUEUED
        attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == ids[0])).one()
    assert (attempt.outcome, attempt.fal_request_id) == (AttemptOutcome.ABANDONED, "late")


def test_lost_queued_jobs_are_found_only_when_the_queue_is_empty(db: str) -> None:
    ids = make_jobs(db, 3)
    old = utcnow() - timedelta(minutes=5)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(published_at=old))
        session.execute(update(Job).where(Job.id == ids[1]).values(published_at=utcnow()))
        session.execute(update(Job).where(Job.id == ids[2]).values(created_at=old))
        now = utcnow()
        assert lost_queued_ids(session, SETTINGS, queue_empty=False, now=now, limit=10) == []
        found = lost_queued_ids(session, SETTINGS, queue_empty=True, now=now, limit=10)
        assert sorted(found) == sorted([ids[0], ids[2]])  # published long ago, or never
        session.execute(update(Batch).values(paused=True))
        assert lost_queued_ids(session, SETTINGS, queue_empty=True, now=now, limit=10) == []
