"""Recording and applying fal webhook deliveries: plain functions on a session that never commit."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from models import Job, JobAttempt, SignatureOutcome, WebhookEvent, WebhookOutcome, utcnow
from models.db import session_scope
from models.enums import TERMINAL_STATES
from models.results import (
    ApplyOutcome,
    JobMatch,
    apply_failure,
    apply_success,
    describe_error,
    find_job,
)
from models.webhook_event import MAX_STORED_BODY
from webhook_receiver.dispatch import CeleryPostCommit, PostCommit, run_post_commit
from webhook_receiver.exceptions import MalformedWebhookError

logger = logging.getLogger(__name__)

# Column widths of webhook_events; longer values from the wire are cut, never allowed to fail.
MAX_REQUEST_ID = 100
MAX_JOB_ID_PARAM = 100
MAX_DETAIL = 2000
# An orphan older than this will not be claimed by any job: the worker stores a request id
# seconds after fal hands it out.
ORPHAN_MAX_AGE = timedelta(hours=24)
ORPHAN_BATCH = 500

_OUTCOMES = {
    ApplyOutcome.APPLIED: WebhookOutcome.APPLIED,
    ApplyOutcome.DUPLICATE: WebhookOutcome.DUPLICATE,
    ApplyOutcome.STALE: WebhookOutcome.STALE,
}


@dataclass(frozen=True)
class FalWebhook:
    """The parts of fal's webhook body the receiver uses."""

    request_id: str
    status: str
    payload: Any
    error: Any
    gateway_request_id: str | None


@dataclass
class IngestResult:
    """What one delivery did, and the work to hand to the workers after commit."""

    outcome: WebhookOutcome
    job_id: uuid.UUID | None = None
    detail: str | None = None
    finished: list[uuid.UUID] = field(default_factory=list)
    fetch: list[uuid.UUID] = field(default_factory=list)
    matched: int = 0


def _clean(value: Any) -> Any:
    """JSON with every string storable: no NUL (PostgreSQL text) and no lone surrogates (UTF-8)."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    return value


def parse_webhook(body: bytes) -> FalWebhook:
    """fal's webhook from raw bytes; MalformedWebhookError when it is not JSON of fal's shape."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedWebhookError("body is not JSON") from exc
    if not isinstance(doc, dict):
        raise MalformedWebhookError("body is not a JSON object")
    doc = _clean(doc)
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise MalformedWebhookError("request_id missing or not a string")
    if len(request_id) > MAX_REQUEST_ID:
        raise MalformedWebhookError(f"request_id longer than {MAX_REQUEST_ID} characters")
    status = doc.get("status")
    if status not in ("OK", "ERROR"):
        raise MalformedWebhookError("status is neither OK nor ERROR")
    payload = doc.get("payload")
    if status == "OK" and payload is not None and not isinstance(payload, dict):
        raise MalformedWebhookError("payload of an OK webhook is neither an object nor null")
    gateway = doc.get("gateway_request_id")
    gateway = gateway if isinstance(gateway, str) and len(gateway) <= MAX_REQUEST_ID else None
    return FalWebhook(request_id, status, payload, doc.get("error"), gateway or None)


def body_sha256(body: bytes) -> str:
    """Hex SHA-256 of the whole raw body."""
    return hashlib.sha256(body).hexdigest()


def dedupe_key(request_id: str, digest: str) -> str:
    """The unique key of the first valid delivery of one result."""
    return hashlib.sha256(f"{request_id}\n{digest}".encode()).hexdigest()


def stored_body(body: bytes) -> str:
    """The body as kept for diagnosis: bounded, valid UTF-8, no NUL."""
    text = body[: MAX_STORED_BODY * 4].decode("utf-8", "replace")[:MAX_STORED_BODY]
    return text.replace("\x00", "\ufffd")


def _event(
    *,
    body: bytes,
    digest: str,
    signature: SignatureOutcome,
    outcome: WebhookOutcome,
    now: datetime,
    request_id: str | None = None,
    job_id_param: str | None = None,
    status: str | None = None,
    detail: str | None = None,
    key: str | None = None,
) -> WebhookEvent:
    return WebhookEvent(
        request_id=_clean(request_id[:MAX_REQUEST_ID]) if request_id else None,
        job_id_param=_clean(job_id_param[:MAX_JOB_ID_PARAM]) if job_id_param else None,
        received_at=now,
        signature=signature,
        body_sha256=digest,
        body=stored_body(body) if body else None,
        status=status,
        outcome=outcome,
        detail=_clean(detail[:MAX_DETAIL]) if detail else None,
        dedupe_key=key,
        processed_at=now,
    )


def record_rejected(
    session: Session,
    *,
    body: bytes,
    signature: SignatureOutcome,
    detail: str,
    request_id: str | None = None,
    job_id_param: str | None = None,
    now: datetime | None = None,
) -> WebhookEvent:
    """Keep a delivery that was refused (too large, bad signature, malformed); no job changes."""
    event = _event(
        body=body,
        digest=body_sha256(body),
        signature=signature,
        outcome=WebhookOutcome.REJECTED,
        now=now or utcnow(),
        request_id=request_id,
        job_id_param=job_id_param,
        detail=detail,
    )
    session.add(event)
    session.flush()
    return event


def ingest(
    session: Session,
    webhook: FalWebhook,
    body: bytes,
    *,
    signature: SignatureOutcome,
    job_id_param: str | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Record a verified delivery and apply it to its job, exactly once per distinct result."""
    now = now or utcnow()
    digest = body_sha256(body)
    common: dict[str, Any] = {
        "body": body,
        "digest": digest,
        "signature": signature,
        "now": now,
        "request_id": webhook.request_id,
        "job_id_param": job_id_param,
        "status": webhook.status,
    }
    event = _event(
        outcome=WebhookOutcome.ORPHAN, key=dedupe_key(webhook.request_id, digest), **common
    )
    try:
        # On PostgreSQL a concurrent twin blocks here until the first commits, then collides.
        with session.begin_nested():
            session.add(event)
    except IntegrityError:
        duplicate = _event(
            outcome=WebhookOutcome.DUPLICATE, detail="repeat of an earlier delivery", **common
        )
        session.add(duplicate)
        session.flush()
        return IngestResult(WebhookOutcome.DUPLICATE, detail=duplicate.detail)
    match = find_job(session, webhook.request_id, job_id_param)
    if match is None:
        event.detail = "no job has this request id yet"
        session.flush()
        return IngestResult(WebhookOutcome.ORPHAN, detail=event.detail)
    result = _apply(session, match, webhook, now)
    event.job_id = match.job.id
    event.outcome = result.outcome
    event.detail = result.detail
    session.flush()
    return result


def _apply(session: Session, match: JobMatch, webhook: FalWebhook, now: datetime) -> IngestResult:
    """Apply one verified result to its matched job."""
    job = match.job
    session.execute(
        update(Job)
        .where(Job.id == job.id, Job.webhook_received_at.is_(None))
        .values(webhook_received_at=now)
        .execution_options(synchronize_session=False)
    )
    if webhook.status == "OK" and webhook.payload is None:
        return _schedule_fetch(session, match)
    try:
        with session.begin_nested():
            outcome = _apply_result(session, match, webhook, now)
    except DataError as exc:
        # A result the schema cannot hold must end the job, not bounce fal's retries off a 5xx
        # for two hours. Only DataError: a deadlock or a lost connection is transient, so it
        # propagates, the delivery answers 503 and fal delivers again.
        logger.warning("result of job %s could not be stored: %s", job.id, type(exc).__name__)
        with session.begin_nested():
            outcome = apply_failure(
                session, match, "invalid_output", "fal's result could not be stored", now=now
            )
    result = IngestResult(_OUTCOMES[outcome], job_id=job.id)
    if outcome is ApplyOutcome.APPLIED:
        result.finished.append(job.id)
    elif outcome is ApplyOutcome.DUPLICATE:
        result.detail = "job already finished"
    else:
        result.detail = "result of an older attempt; the job has moved on"
    return result


def _apply_result(
    session: Session, match: JobMatch, webhook: FalWebhook, now: datetime
) -> ApplyOutcome:
    if webhook.status == "OK":
        return apply_success(
            session,
            match,
            webhook.request_id,
            webhook.payload,
            gateway_request_id=webhook.gateway_request_id,
            now=now,
        )
    error_type, message = describe_error(webhook.error, webhook.payload)
    outcome = apply_failure(session, match, error_type, message, now=now)
    if outcome is ApplyOutcome.APPLIED and webhook.gateway_request_id:
        session.execute(
            update(Job)
            .where(Job.id == match.job.id)
            .values(gateway_request_id=webhook.gateway_request_id)
            .execution_options(synchronize_session=False)
        )
    return outcome


def _schedule_fetch(session: Session, match: JobMatch) -> IngestResult:
    """A success without its payload: the result must be fetched from the queue."""
    job_id = match.job.id
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status in TERMINAL_STATES:
        return IngestResult(WebhookOutcome.DUPLICATE, job_id, "job already finished")
    if not match.current:
        return IngestResult(
            WebhookOutcome.STALE, job_id, "result of an older attempt; the job has moved on"
        )
    return IngestResult(
        WebhookOutcome.FETCH_SCHEDULED, job_id, "no payload: result fetch scheduled", fetch=[job_id]
    )


def _intact(event: WebhookEvent) -> bytes | None:
    """The stored body when it is the whole body that was signed, else None."""
    if event.body is None:
        return None
    raw = event.body.encode("utf-8")
    return raw if body_sha256(raw) == event.body_sha256 else None


def apply_orphans(
    session: Session, *, now: datetime | None = None, limit: int = ORPHAN_BATCH
) -> IngestResult:
    """Apply orphan deliveries whose request id now belongs to a job, in the caller's transaction.

    The caller commits, then hands `finished` and `fetch` to the workers; `match_orphans` does
    all of it.
    """
    now = now or utcnow()
    known = or_(
        exists().where(Job.fal_request_id == WebhookEvent.request_id),
        exists().where(JobAttempt.fal_request_id == WebhookEvent.request_id),
    )
    candidates = session.scalars(
        select(WebhookEvent)
        .where(
            WebhookEvent.outcome == WebhookOutcome.ORPHAN,
            WebhookEvent.received_at >= now - ORPHAN_MAX_AGE,
            WebhookEvent.request_id.is_not(None),
            known,
        )
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    merged = IngestResult(WebhookOutcome.APPLIED)
    matched = 0
    for event in candidates:
        match = find_job(session, event.request_id, event.job_id_param)
        if match is None:
            continue
        # Claim the orphan, so two reconciler passes never apply it twice.
        claimed = session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id, WebhookEvent.outcome == WebhookOutcome.ORPHAN)
            .values(outcome=WebhookOutcome.STALE)
            .execution_options(synchronize_session=False)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            continue
        result = _rematch(session, event, match, now)
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id)
            .values(
                job_id=match.job.id,
                outcome=result.outcome,
                detail=f"matched later: {result.detail or result.outcome.value}"[:MAX_DETAIL],
                processed_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        merged.finished.extend(result.finished)
        merged.fetch.extend(result.fetch)
        matched += 1
    merged.matched = matched
    return merged


def _rematch(session: Session, event: WebhookEvent, match: JobMatch, now: datetime) -> IngestResult:
    raw = _intact(event)
    if raw is not None:
        try:
            return _apply(session, match, parse_webhook(raw), now)
        except MalformedWebhookError:
            pass
    # The stored copy was cut short: the queue still has the result.
    return _schedule_fetch(session, match)


def match_orphans(*, database_url: str | None = None, dispatch: PostCommit | None = None) -> int:
    """Match orphan webhooks to the jobs that now own their request ids; returns how many.

    Owns its transaction and, after the commit, enqueues the finished jobs' follow-up work and
    the result fetches; the reconciler calls it once per pass.
    """
    with session_scope(database_url) as session:
        result = apply_orphans(session)
    run_post_commit(dispatch or CeleryPostCommit(database_url), result.finished, result.fetch)
    matched = result.matched
    if matched:
        logger.info("matched %d orphan webhook(s)", matched)
    return matched
