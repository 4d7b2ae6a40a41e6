"""History queries shared by the command line, the JSON API and the gallery."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, tuple_
from sqlalchemy.orm import Session

from models.attempt import JobAttempt
from models.base import utcnow
from models.batch import Batch
from models.enums import TERMINAL_STATES, JobStatus
from models.exceptions import ModelsError, NotFoundError
from models.image import Image
from models.job import Job
from models.search import prompt_matches
from models.webhook_event import WebhookEvent

MAX_PAGE = 1000
RATE_WINDOW = timedelta(seconds=60)
_JOB_TIMESTAMPS = (
    "created_at",
    "status_changed_at",
    "submitted_at",
    "started_at",
    "completed_at",
    "last_polled_at",
    "webhook_received_at",
)


class InvalidCursorError(ModelsError):
    """A pagination cursor that this module did not produce."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def image_to_dict(image: Image) -> dict[str, Any]:
    """One image's metadata and its archived copy."""
    return {
        "id": image.id,
        "index": image.index,
        "url": image.url,
        "width": image.width,
        "height": image.height,
        "content_type": image.content_type,
        "file_size": image.file_size,
        "file_name": image.file_name,
        "sha256": image.sha256,
        "local_path": image.archive_path,
        "thumbnail_path": image.thumbnail_path,
        "archived_width": image.archived_width,
        "archived_height": image.archived_height,
        "archived_at": _iso(image.archived_at),
        "archive_error": image.archive_error,
    }


def job_to_dict(job: Job, images: Iterable[Image] = ()) -> dict[str, Any]:
    """The machine-readable form of a job, as the CLI and the API print it."""
    data: dict[str, Any] = {
        "id": str(job.id),
        "batch_id": str(job.batch_id),
        "custom_id": job.custom_id,
        "prompt": job.prompt,
        "aspect_ratio": job.aspect_ratio,
        "resolution": job.resolution,
        "reasoning": job.reasoning,
        "seed": job.seed,
        "returned_seed": job.returned_seed,
        "status": job.status.value,
        "fal_request_id": job.fal_request_id,
        "gateway_request_id": job.gateway_request_id,
        "attempts": job.attempts,
        "error_type": job.error_type,
        "error_message": job.error_message,
    }
    for name in _JOB_TIMESTAMPS:
        data[name] = _iso(getattr(job, name))
    data["images"] = [image_to_dict(image) for image in images]
    return data


def images_by_job(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Image]]:
    """The images of the given jobs, grouped by job, in index order (one query)."""
    grouped: dict[uuid.UUID, list[Image]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        rows = session.scalars(
            select(Image).where(Image.job_id.in_(job_ids)).order_by(Image.job_id, Image.index)
        )
        for image in rows:
            grouped[image.job_id].append(image)
    return grouped


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """An opaque keyset cursor pointing just after (created_at, id)."""
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor points after; InvalidCursorError when it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, row_id = raw.partition("|")
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursorError("invalid cursor") from exc


@dataclass(frozen=True)
class JobFilter:
    """What a history query may filter jobs on; None means no filter."""

    batch_id: uuid.UUID | None = None
    status: JobStatus | None = None
    search: str | None = None
    seed: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, stmt: Select[Any], dialect: str) -> Select[Any]:
        """Add this filter's conditions to a select over jobs on a `dialect` database."""
        if self.batch_id is not None:
            stmt = stmt.where(Job.batch_id == self.batch_id)
        if self.status is not None:
            stmt = stmt.where(Job.status == self.status)
        if self.seed is not None:
            stmt = stmt.where(or_(Job.seed == self.seed, Job.returned_seed == self.seed))
        if self.since is not None:
            stmt = stmt.where(Job.created_at >= self.since)
        if self.until is not None:
            stmt = stmt.where(Job.created_at < self.until)
        if self.search:
            stmt = stmt.where(prompt_matches(dialect, self.search))
        return stmt


def list_jobs(
    session: Session,
    *,
    batch_id: uuid.UUID | None = None,
    status: JobStatus | None = None,
    search: str | None = None,
    seed: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None at the end).

    Keyset pagination on (created_at, id): jobs created while a client pages through never make it
    see a job twice or skip one, unlike OFFSET.
    """
    limit = max(1, min(limit, MAX_PAGE))
    filters = JobFilter(batch_id, status, search, seed, since, until)
    stmt = filters.apply(select(Job), session.get_bind().dialect.name)
    if cursor:
        after_created, after_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(after_created, after_id))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list(session.scalars(stmt))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    images = images_by_job(session, [job.id for job in jobs])
    page = [job_to_dict(job, images[job.id]) for job in jobs]
    next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if more else None
    return page, next_cursor


def get_job_detail(session: Session, job_id: uuid.UUID) -> dict[str, Any]:
    """Everything known of one job: parameters, seeds, images, attempts and webhook events."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    data = job_to_dict(job, images_by_job(session, [job.id])[job.id])
    data["attempt_log"] = [
        {
            "number": attempt.number,
            "outcome": attempt.outcome.value,
            "fal_request_id": attempt.fal_request_id,
            "http_status": attempt.http_status,
            "error_type": attempt.error_type,
            "error_message": attempt.error_message,
            "started_at": _iso(attempt.started_at),
            "finished_at": _iso(attempt.finished_at),
        }
        for attempt in session.scalars(
            select(JobAttempt).where(JobAttempt.job_id == job.id).order_by(JobAttempt.number)
        )
    ]
    data["webhook_events"] = [
        {
            "id": event.id,
            "received_at": _iso(event.received_at),
            "request_id": event.request_id,
            "status": event.status,
            "signature": event.signature.value,
            "outcome": event.outcome.value,
            "detail": event.detail,
        }
        for event in session.scalars(
            select(WebhookEvent).where(WebhookEvent.job_id == job.id).order_by(WebhookEvent.id)
        )
    ]
    return data


def status_counts(
    session: Session, batch_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Jobs per state for each batch (every state present, zeros included), one grouped query."""
    counts = {batch_id: {s.value: 0 for s in JobStatus} for batch_id in batch_ids}
    if batch_ids:
        rows = session.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id, Job.status)
        )
        for batch_id, status, count in rows:
            counts[batch_id][JobStatus(status).value] = int(count)
    return counts


def _batch_dict(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    done = sum(counts[s.value] for s in TERMINAL_STATES)
    return {
        "id": str(batch.id),
        "name": batch.name,
        "model": batch.model,
        "params": batch.params,
        "source": batch.source,
        "created_at": _iso(batch.created_at),
        "finished_at": _iso(batch.finished_at),
        "paused": batch.paused,
        "pause_reason": batch.pause_reason,
        "cancelled": batch.cancelled,
        "cancelled_at": _iso(batch.cancelled_at),
        "estimated_cost_usd": float(batch.price_estimate_usd),
        "total": total,
        "done": done,
        "progress": (done / total) if total else 1.0,
        "counts": counts,
    }


def list_batches(
    session: Session, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of batches, newest first, with counts per state, and the next page's cursor."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(Batch)
    if cursor:
        after_created, after_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(Batch.created_at, Batch.id) < tuple_(after_created, after_id))
    batches = list(
        session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1))
    )
    more = len(batches) > limit
    batches = batches[:limit]
    counts = status_counts(session, [b.id for b in batches])
    page = [_batch_dict(b, counts[b.id]) for b in batches]
    next_cursor = encode_cursor(batches[-1].created_at, batches[-1].id) if more else None
    return page, next_cursor


def batch_summary(
    session: Session, batch_id: uuid.UUID, *, now: datetime | None = None
) -> dict[str, Any]:
    """One batch with counts per state, timings, recent rate and an ETA."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFoundError(f"no batch {batch_id}")
    now = now or utcnow()
    data = _batch_dict(batch, status_counts(session, [batch.id])[batch.id])
    first_submit, last_done = session.execute(
        select(func.min(Job.submitted_at), func.max(Job.completed_at)).where(
            Job.batch_id == batch.id
        )
    ).one()
    recent = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.batch_id == batch.id,
            Job.status.in_(list(TERMINAL_STATES)),
            Job.completed_at >= now - RATE_WINDOW,
        )
    )
    rate = (recent or 0) / RATE_WINDOW.total_seconds()
    remaining = data["total"] - data["done"]
    data.update(
        {
            "first_submitted_at": _iso(first_submit),
            "last_completed_at": _iso(last_done),
            "rate_per_second": round(rate, 3),
            "eta_seconds": round(remaining / rate, 1) if rate > 0 and remaining else None,
        }
    )
    return data
