"""Applying fal's outcome to a job: the one path shared by the webhook receiver and the poller."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from models.attempt import JobAttempt
from models.base import utcnow
from models.batch import Batch
from models.enums import TERMINAL_STATES, JobStatus
from models.image import Image
from models.job import Job
from models.transitions import transition

MAX_ERROR_MESSAGE = 2000


class ApplyOutcome(StrEnum):
    """What applying one result did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class JobMatch:
    """The job a fal request belongs to, and whether that request is the job's current one."""

    job: Job
    current: bool


def find_job(
    session: Session, request_id: str | None, job_id: str | None = None
) -> JobMatch | None:
    """The job of `request_id`, else of the `job_id` hint; None when neither names one."""
    if request_id:
        job = session.scalar(select(Job).where(Job.fal_request_id == request_id))
        if job is not None:
            return JobMatch(job, current=True)
        job = session.scalar(
            select(Job)
            .join(JobAttempt, JobAttempt.job_id == Job.id)
            .where(JobAttempt.fal_request_id == request_id)
        )
        if job is not None:
            return JobMatch(job, current=False)
    parsed = _parse_uuid(job_id)
    if parsed is None:
        return None
    job = session.get(Job, parsed)
    if job is None:
        return None
    # A webhook may beat the worker's write of the request id: the job then has none yet.
    return JobMatch(job, current=job.fal_request_id is None or job.fal_request_id == request_id)


def _parse_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class ImageInfo:
    """fal's metadata of one output image."""

    url: str
    content_type: str | None
    width: int | None
    height: int | None
    file_size: int | None
    file_name: str | None


class InvalidOutputError(ValueError):
    """A successful result whose payload is not the model's output shape."""


def parse_output(payload: Mapping[str, Any]) -> tuple[list[ImageInfo], int | None]:
    """The images and the returned seed of a model output, or InvalidOutputError."""
    raw_images = payload.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise InvalidOutputError("the result has no images")
    images = []
    for n, item in enumerate(raw_images):
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise InvalidOutputError(f"image {n} has no url")
        images.append(
            ImageInfo(
                url=item["url"],
                content_type=_opt_str(item.get("content_type"), 100),
                width=_opt_int(item.get("width")),
                height=_opt_int(item.get("height")),
                file_size=_opt_int(item.get("file_size"), INT64_MAX),
                file_name=_opt_str(item.get("file_name"), 300),
            )
        )
    return images, _opt_int(payload.get("seed"), INT64_MAX)


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _opt_int(value: Any, limit: int = INT32_MAX) -> int | None:
    # A number the column cannot hold is dropped, not allowed to fail the whole result.
    if isinstance(value, int) and not isinstance(value, bool) and -limit - 1 <= value <= limit:
        return value
    return None


def _opt_str(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def describe_error(error: Any, payload: Any) -> tuple[str, str]:
    """fal's error type and a readable message from an ERROR webhook or error result."""
    error_type = None
    message = None
    if isinstance(payload, Mapping):
        detail = payload.get("detail")
        if isinstance(payload.get("error_type"), str):
            error_type = payload["error_type"]
        if isinstance(detail, str):
            message = detail
        elif isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, Mapping):
                    error_type = error_type or _opt_str(item.get("type"), 100)
                    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                    msg = str(item.get("msg", ""))
                    parts.append(f"{loc}: {msg}" if loc else msg)
            message = "; ".join(parts) or None
    if message is None:
        message = str(error) if error else "fal reported an error without detail"
    return error_type or "model_error", message[:MAX_ERROR_MESSAGE]


def apply_success(
    session: Session,
    match: JobMatch,
    request_id: str | None,
    payload: Mapping[str, Any],
    *,
    gateway_request_id: str | None = None,
    now: datetime | None = None,
) -> ApplyOutcome:
    """Complete the job with its images and returned seed; idempotent."""
    job = match.job
    try:
        images, returned_seed = parse_output(payload)
    except InvalidOutputError as exc:
        if not match.current:
            return ApplyOutcome.STALE
        return apply_failure(session, match, "invalid_output", str(exc), now=now)
    values: dict[str, Any] = {"returned_seed": returned_seed}
    if gateway_request_id:
        values["gateway_request_id"] = gateway_request_id
    if job.fal_request_id is None and request_id:
        values["fal_request_id"] = request_id
    # Any attempt's success is a valid result: every attempt sent the same input and seed.
    if not transition(session, job.id, JobStatus.COMPLETED, values=values, now=now):
        return _not_applied(session, job.id)
    session.execute(
        insert(Image),
        [
            {
                "job_id": job.id,
                "index": n,
                "url": image.url,
                "content_type": image.content_type,
                "width": image.width,
                "height": image.height,
                "file_size": image.file_size,
                "file_name": image.file_name,
                "created_at": now or utcnow(),
            }
            for n, image in enumerate(images)
        ],
    )
    return ApplyOutcome.APPLIED


def apply_failure(
    session: Session,
    match: JobMatch,
    error_type: str,
    message: str,
    *,
    now: datetime | None = None,
) -> ApplyOutcome:
    """Fail the job with fal's error type and message, unless the error is an older attempt's."""
    if not match.current:
        return ApplyOutcome.STALE
    values = {"error_type": error_type[:100], "error_message": message[:MAX_ERROR_MESSAGE]}
    if not transition(session, match.job.id, JobStatus.FAILED, values=values, now=now):
        return _not_applied(session, match.job.id)
    return ApplyOutcome.APPLIED


def _not_applied(session: Session, job_id: uuid.UUID) -> ApplyOutcome:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return ApplyOutcome.DUPLICATE if status in TERMINAL_STATES else ApplyOutcome.STALE


def finish_batch_if_done(
    session: Session, batch_id: uuid.UUID, *, now: datetime | None = None
) -> bool:
    """Stamp the batch finished once every job is terminal; True only for the call that did it."""
    unfinished = exists().where(Job.batch_id == batch_id, Job.status.not_in(list(TERMINAL_STATES)))
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.finished_at.is_(None), ~unfinished)
        .values(finished_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
