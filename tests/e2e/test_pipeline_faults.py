"""The pipeline under faults: fal errors, a worker killed with SIGKILL, a flushed broker."""

from __future__ import annotations

import signal

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import AttemptOutcome, JobAttempt, JobStatus
from tests.e2e.test_pipeline import assert_completed_and_archived, mixed_rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_submit_errors_retry_and_model_errors_fail_exactly_those_jobs(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline = make_pipeline(
        max_in_flight=30,
        falsim_config={
            "concurrency": 40,
            "faults": {
                "submit_429_rate": 0.05,
                "submit_503_rate": 0.05,
                "retry_after_seconds": 0,
                "model_error_rate": 0.05,
            },
        },
    )
    pipeline.start_worker("submitter", queues="submit,maintenance")
    pipeline.start_worker("archiver", queues="archive,notify")
    pipeline.start_beat()
    rows = [dict(row, resolution="1K") for row in mixed_rows(300)]
    result = pipeline.enqueue_rows(rows)
    counts = pipeline.wait_finished(result["batch_id"], timeout=150)
    stats = pipeline.falsim.stats()
    assert sum(stats["rejected"].values()) > 0, stats["rejected"]  # the faults did fire
    errors = {
        r["request_id"]: r["error_type"]
        for r in pipeline.falsim.requests()
        if r["error_type"] is not None
    }
    assert errors, "falsim produced no model error"
    jobs = pipeline.jobs(result["batch_id"])
    failed = {job.fal_request_id: job.error_type for job in jobs if job.status is JobStatus.FAILED}
    # Exactly the requests fal failed, each with fal's own error type; every other job completed.
    assert failed == errors
    assert counts == {"COMPLETED": 300 - len(errors), "FAILED": len(errors)}
    retried = [job for job in jobs if job.attempts > 1]
    assert retried, "no job needed a second submit"
    with Session(pipeline.engine) as session:
        outcomes = dict(
            session.execute(
                select(JobAttempt.outcome, func.count()).group_by(JobAttempt.outcome)
            ).all()
        )
    assert outcomes[AttemptOutcome.RETRYABLE_ERROR] == sum(stats["rejected"].values())


def test_sigkilled_worker_and_flushed_broker_lose_no_job(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    concurrency = 6
    pipeline = make_pipeline(
        max_in_flight=12, falsim_config={"concurrency": 24, "time_scale": 0.01}
    )
    for name in ("victim", "survivor"):
        pipeline.start_worker(name, queues="submit,maintenance", concurrency=concurrency)
    pipeline.start_worker("archiver", queues="archive,notify")
    pipeline.start_beat()
    n = 400
    result = pipeline.enqueue_rows(mixed_rows(n))
    batch_id = result["batch_id"]

    def done() -> int:
        counts = pipeline.counts(batch_id)
        return counts.get("COMPLETED", 0) + counts.get("FAILED", 0)

    pipeline.wait_until(lambda: done() >= n // 4, 90, "a quarter of the batch")
    # Mid-call, mid-wait, holding prefetched messages: whatever it held must not be lost.
    pipeline.kill("victim", signal.SIGKILL)
    pipeline.wait_until(lambda: done() >= n // 2, 90, "half of the batch")
    redis.Redis.from_url(pipeline.redis_url).flushdb()
    counts = pipeline.wait_finished(batch_id, timeout=150)
    assert counts == {"COMPLETED": n}
    assert_completed_and_archived(pipeline, batch_id, n)
    stats = pipeline.falsim.stats()
    with Session(pipeline.engine) as session:
        abandoned = session.scalar(
            select(func.count())
            .select_from(JobAttempt)
            .where(JobAttempt.outcome == AttemptOutcome.ABANDONED)
        )
    duplicates = stats["payloads"]["extra_submits"]
    print(f"abandoned attempts: {abandoned}, inputs submitted twice: {duplicates}")
    # The bound: a worker death duplicates at most the jobs it was submitting at that moment,
    # one per thread; a broker flush duplicates none (the claim is conditional).
    assert duplicates <= abandoned <= concurrency
