"""The reconciler: the safety net that brings every job to a terminal state without webhooks.

One pass, run by Celery beat every RECONCILE_INTERVAL under a Redis lock (one pass at a time):

1. broker loss: the marker key `imagine:broker-epoch` lives in the broker's Redis, written by
   enqueue (if absent) and by this pass. Its absence means the broker lost everything (flush,
   restart without persistence): every QUEUED job of an active (unpaused, uncancelled) batch is
   published again, then the marker is written. A duplicate message is harmless: the claim is
   conditional. An enqueue racing a flush can hide it; step 2 still finds what was lost.
2. lost messages, the slow net: with the submit queue empty, QUEUED jobs of active batches whose
   last publish (and retry time) is older than SUBMITTING_STALE_SECONDS, or that were never
   published, are published again (e.g. a worker killed while holding their messages, or an
   enqueue that died between its commit and its publish).
3. stale SUBMITTING (a worker died mid-call): after SUBMITTING_STALE_SECONDS the job goes back to
   QUEUED, its open attempt is marked ABANDONED and it is published again (a new attempt); after
   MAX_ATTEMPTS it FAILS. fal may have accepted the abandoned request, so the same input can be
   generated twice: at most one duplicate per worker death per job the worker held, and harmless
   because the webhook carries the job id and a success of any attempt completes the job.
4. polling: SUBMITTED/IN_PROGRESS jobs with no webhook for POLL_AFTER_SECONDS (in polling mode: on
   every pass) are asked for their status; finished ones are applied through models.results.
5. lost archives: with the archive queue empty, completed jobs with unarchived images older than
   SUBMITTING_STALE_SECONDS are published for archiving again (at most once per that period).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import Exists

from fal_queue.client import FalQueueClient
from imagine.settings import Settings, get_settings
from models import AttemptOutcome, Batch, Image, Job, JobAttempt, JobStatus, utcnow
from models.db import session_scope
from models.transitions import transition_many
from worker.celery_app import ARCHIVE_QUEUE, SUBMIT_QUEUE
from worker.polling import apply_answers, ask_many, due_for_poll
from worker.publish import publish_archives, publish_submits
from worker.slots import EPOCH_KEY, broker_redis, get_slot_signal

logger = logging.getLogger("worker.reconcile")

LOCK_KEY = "imagine:reconcile-lock"
ARCHIVE_SWEEP_KEY = "imagine:archive-sweep"
CHUNK = 1_000
# A pass stops polling after this long, leaving the rest to the next pass.
POLL_BUDGET_SECONDS = 20.0
# Short, and renewed between the steps of a pass: a worker killed mid-pass must not stall the
# reconciler (and with it the recovery of its own stale jobs) for longer than this.
LOCK_SECONDS = 30


@dataclass
class ReconcileReport:
    """What one pass did."""

    skipped: bool = False
    broker_lost: bool = False
    republished: int = 0
    recovered: int = 0
    abandoned_failed: int = 0
    polled: int = 0
    finished: list[uuid.UUID] = field(default_factory=list)
    archives: int = 0
    orphans: int = 0


def _active_batch() -> Exists:
    return exists().where(Batch.id == Job.batch_id, ~Batch.paused, ~Batch.cancelled)


def queued_ids_after(session: Session, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """QUEUED jobs of active batches, by id, for keyset pagination."""
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, _active_batch())
    if after is not None:
        query = query.where(Job.id > after)
    return list(session.scalars(query.order_by(Job.id).limit(limit)))


def lost_queued_ids(
    session: Session, settings: Settings, *, queue_empty: bool, now: datetime, limit: int
) -> list[uuid.UUID]:
    """QUEUED jobs whose message is presumably gone (see the module docstring, step 2)."""
    if not queue_empty:
        return []
    cutoff = now - timedelta(seconds=settings.submitting_stale_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED,
                _active_batch(),
                or_(Job.retry_at.is_(None), Job.retry_at <= cutoff),
                or_(Job.published_at.is_(None), Job.published_at <= cutoff),
            )
            .limit(limit)
        )
    )


def recover_stale_submitting(
    session: Session, settings: Settings, *, now: datetime, limit: int = CHUNK
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Release or fail SUBMITTING jobs older than the stale threshold: (requeued, failed)."""
    cutoff = now - timedelta(seconds=settings.submitting_stale_seconds)
    rows = session.execute(
        select(Job.id, Job.attempts)
        .where(Job.status == JobStatus.SUBMITTING, Job.status_changed_at <= cutoff)
        .limit(limit)
    ).all()
    spent = [r.id for r in rows if r.attempts >= settings.max_attempts]
    again = [r.id for r in rows if r.attempts < settings.max_attempts]
    failed_n = transition_many(
        session,
        spent,
        JobStatus.FAILED,
        from_={JobStatus.SUBMITTING},
        values={
            "error_type": "abandoned",
            "error_message": "the worker submitting it stopped answering on every attempt",
        },
        now=now,
    )
    requeued_n = transition_many(
        session,
        again,
        JobStatus.QUEUED,
        from_={JobStatus.SUBMITTING},
        values={"retry_at": None},
        now=now,
    )
    ids = [r.id for r in rows]
    if ids:
        session.execute(
            update(JobAttempt)
            .where(JobAttempt.job_id.in_(ids), JobAttempt.outcome == AttemptOutcome.PENDING)
            .values(outcome=AttemptOutcome.ABANDONED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
    if failed_n != len(spent) or requeued_n != len(again):
        logger.info("some stale SUBMITTING jobs moved on while being recovered")
    return again, spent


def unarchived_job_ids(
    session: Session, settings: Settings, *, now: datetime, limit: int
) -> list[uuid.UUID]:
    """Completed jobs with an image still not archived, completed over the stale threshold ago."""
    cutoff = now - timedelta(seconds=settings.submitting_stale_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.COMPLETED,
                Job.completed_at <= cutoff,
                exists().where(Image.job_id == Job.id, Image.archived_at.is_(None)),
            )
            .limit(limit)
        )
    )


class Reconciler:
    """Runs passes; the task builds one per process."""

    def __init__(
        self,
        client: FalQueueClient,
        settings: Settings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        database_url: str | None = None,
    ) -> None:
        self.client = client
        self.settings = settings or get_settings()
        self.redis = redis_client if redis_client is not None else broker_redis()
        self.database_url = database_url

    def run(self) -> ReconcileReport:
        """One pass, unless another one holds the lock."""
        token = uuid.uuid4().hex
        if self.redis is not None and not self.redis.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
            return ReconcileReport(skipped=True)
        try:
            return self._pass(token)
        finally:
            if self.redis is not None and self.redis.get(LOCK_KEY) == token.encode():
                self.redis.delete(LOCK_KEY)

    def _pass(self, token: str) -> ReconcileReport:
        report = ReconcileReport()
        steps = (
            self._broker_loss,
            self._lost_messages,
            self._stale_submitting,
            self._orphans,
            self._poll,
            self._lost_archives,
        )
        for step in steps:
            step(report)
            self._renew_lock(token)
        if report.republished or report.recovered or report.finished or report.orphans:
            logger.info(
                "reconcile: broker_lost=%s republished=%d recovered=%d orphans=%d polled=%d "
                "finished=%d",
                report.broker_lost,
                report.republished,
                report.recovered,
                report.orphans,
                report.polled,
                len(report.finished),
            )
        return report

    def _renew_lock(self, token: str) -> None:
        # Each step is bounded (polling by POLL_BUDGET_SECONDS), so renewing between steps keeps
        # the lock for a live pass without a long expiry.
        if self.redis is not None and self.redis.get(LOCK_KEY) == token.encode():
            self.redis.expire(LOCK_KEY, LOCK_SECONDS)

    def _orphans(self, report: ReconcileReport) -> None:
        # A webhook can arrive before any job owns its request id (the worker had not stored it
        # and the job_id parameter was missing or wrong); the receiver kept it as an orphan. Its
        # own ingest path re-applies such deliveries, so the rules live in one place. Imported
        # here, not at the top: the receiver depends on the worker, not the other way round.
        from webhook_receiver import match_orphans

        report.orphans = match_orphans(database_url=self.database_url)

    def _broker_loss(self, report: ReconcileReport) -> None:
        if self.redis is None or self.redis.exists(EPOCH_KEY):
            return
        report.broker_lost = True
        after: uuid.UUID | None = None
        while True:
            with session_scope(self.database_url) as session:
                ids = queued_ids_after(session, after, CHUNK)
            if not ids:
                break
            report.republished += publish_submits(ids, database_url=self.database_url)
            after = ids[-1]
        self.redis.set(EPOCH_KEY, utcnow().isoformat())
        logger.warning(
            "broker marker missing (flushed or restarted): republished %d queued jobs",
            report.republished,
        )

    def _queue_empty(self, queue: str) -> bool:
        # Without a Redis broker we cannot look: assume empty (re-publishes stay rate-limited).
        return self.redis is None or int(self.redis.llen(queue)) == 0

    def _lost_messages(self, report: ReconcileReport) -> None:
        queue_empty = self._queue_empty(SUBMIT_QUEUE)
        with session_scope(self.database_url) as session:
            ids = lost_queued_ids(
                session, self.settings, queue_empty=queue_empty, now=utcnow(), limit=CHUNK * 10
            )
        if ids:
            logger.warning(
                "republishing %d queued jobs whose messages look lost (submit queue empty: %s)",
                len(ids),
                queue_empty,
            )
            report.republished += publish_submits(ids, database_url=self.database_url)

    def _stale_submitting(self, report: ReconcileReport) -> None:
        with session_scope(self.database_url) as session:
            again, failed = recover_stale_submitting(session, self.settings, now=utcnow())
        if again:
            logger.warning("recovered %d jobs stuck SUBMITTING: submitting them again", len(again))
            get_slot_signal().announce(len(again))
            publish_submits(again, database_url=self.database_url)
        report.recovered += len(again)
        report.abandoned_failed += len(failed)
        self._finished(report, failed)

    def _finished(self, report: ReconcileReport, job_ids: list[uuid.UUID]) -> None:
        if job_ids:
            from worker.events import after_jobs_finished

            after_jobs_finished(job_ids, database_url=self.database_url)
            report.finished.extend(job_ids)

    def _poll(self, report: ReconcileReport) -> None:
        deadline = time.monotonic() + POLL_BUDGET_SECONDS
        while time.monotonic() < deadline:
            with session_scope(self.database_url) as session:
                jobs = due_for_poll(session, self.settings)
            if not jobs:
                return
            answers = ask_many(self.client, jobs)
            with session_scope(self.database_url) as session:
                finished = apply_answers(session, answers)
            report.polled += len(jobs)
            # Wake slot waiters now, not at the end of the pass.
            self._finished(report, finished)

    def _lost_archives(self, report: ReconcileReport) -> None:
        if not self.settings.archive_enabled or not self._queue_empty(ARCHIVE_QUEUE):
            return
        period = max(1, int(self.settings.submitting_stale_seconds))
        if self.redis is not None and not self.redis.set(
            ARCHIVE_SWEEP_KEY, "1", nx=True, ex=period
        ):
            return
        with session_scope(self.database_url) as session:
            ids = unarchived_job_ids(session, self.settings, now=utcnow(), limit=CHUNK * 10)
        if ids:
            publish_archives(ids)
            report.archives = len(ids)
            logger.info("re-published archiving of %d completed jobs", len(ids))
