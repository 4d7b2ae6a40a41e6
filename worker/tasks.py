"""Celery tasks: thin wrappers that take ids, set retry options and call plain functions."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache
from typing import Any

from imagine.settings import get_settings
from worker.archive import MAX_ARCHIVE_ATTEMPTS, archive_job_images
from worker.celery_app import celery_app
from worker.fal import get_fal_client
from worker.polling import FetchLaterError, fetch_and_apply
from worker.reconcile import Reconciler
from worker.retry import backoff_delay
from worker.slots import get_slot_signal
from worker.submit import Submitter

logger = logging.getLogger("worker.tasks")

FETCH_MAX_RETRIES = 8


@lru_cache(maxsize=1)
def get_submitter() -> Submitter:
    """The process-wide submitter."""
    return Submitter(get_settings(), get_fal_client(), get_slot_signal())


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        logger.error("dropping a message with a malformed job id %r", value)
        return None


def _backoff(retries: int) -> float:
    settings = get_settings()
    return backoff_delay(
        retries + 1, base=settings.retry_backoff_base, cap=settings.retry_backoff_max
    )


@celery_app.task(name="worker.tasks.submit_job", ignore_result=True)  # type: ignore[untyped-decorator]
def submit_job(job_id: str) -> str | None:
    """Claim, submit and record one job (waiting briefly for a free slot)."""
    parsed = _uuid(job_id)
    return get_submitter().run(parsed).value if parsed else None


@celery_app.task(bind=True, name="worker.tasks.archive_job", ignore_result=True, max_retries=None)  # type: ignore[untyped-decorator]
def archive_job(self: Any, job_id: str) -> int:
    """Download and keep every image of a completed job; retried with backoff on failure."""
    settings = get_settings()
    parsed = _uuid(job_id)
    if parsed is None or not settings.archive_enabled:
        return 0
    errors = archive_job_images(get_fal_client(), parsed, settings.archive_dir)
    if errors and self.request.retries + 1 < MAX_ARCHIVE_ATTEMPTS:
        raise self.retry(countdown=_backoff(self.request.retries))
    if errors:
        logger.error("giving up archiving job %s: %s", job_id, errors[-1])
    return len(errors)


@celery_app.task(bind=True, name="worker.tasks.fetch_result", ignore_result=True, max_retries=None)  # type: ignore[untyped-decorator]
def fetch_result(self: Any, job_id: str) -> bool:
    """Fetch a finished request's result from fal and apply it (a webhook came without payload)."""
    parsed = _uuid(job_id)
    if parsed is None:
        return False
    try:
        return fetch_and_apply(get_fal_client(), parsed)
    except FetchLaterError as exc:
        if self.request.retries >= FETCH_MAX_RETRIES:
            # The reconciler's polling picks the job up from here.
            logger.warning("fetch_result %s: %s; leaving it to the reconciler", job_id, exc)
            return False
        raise self.retry(countdown=_backoff(self.request.retries)) from exc


@celery_app.task(name="worker.tasks.reconcile", ignore_result=True)  # type: ignore[untyped-decorator]
def reconcile() -> dict[str, Any]:
    """One reconciler pass (Celery beat sends this every RECONCILE_INTERVAL)."""
    report = Reconciler(get_fal_client()).run()
    return {
        "skipped": report.skipped,
        "republished": report.republished,
        "recovered": report.recovered,
        "finished": len(report.finished),
    }
