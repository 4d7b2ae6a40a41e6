"""The one place that moves a job between states."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.enums import JobStatus
from models.exceptions import InvalidTransitionError
from models.job import Job

S = JobStatus

# For each target state, the states a job may come from. Terminal states appear on no right-hand
# side, so a late or duplicate event never reopens a job. SUBMITTING -> QUEUED is the one step
# back: it releases the claim when fal never accepted the request (a retryable submit error).
ALLOWED_FROM: Mapping[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.SUBMITTING}),
    S.SUBMITTING: frozenset({S.QUEUED}),
    S.SUBMITTED: frozenset({S.SUBMITTING}),
    S.IN_PROGRESS: frozenset({S.SUBMITTING, S.SUBMITTED}),
    S.COMPLETED: frozenset({S.SUBMITTING, S.SUBMITTED, S.IN_PROGRESS}),
    S.FAILED: frozenset({S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.IN_PROGRESS}),
    S.CANCELLED: frozenset({S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.IN_PROGRESS}),
}

# The timestamp column each move stamps, besides status_changed_at.
_STAMP: Mapping[JobStatus, str] = {
    S.SUBMITTED: "submitted_at",
    S.IN_PROGRESS: "started_at",
    S.COMPLETED: "completed_at",
    S.FAILED: "completed_at",
    S.CANCELLED: "completed_at",
}


def transition(
    session: Session,
    job_id: uuid.UUID,
    to: JobStatus,
    *,
    from_: Iterable[JobStatus] | None = None,
    values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """Move one job to `to` if it is in an allowed state; True when the move applied."""
    return transition_many(session, [job_id], to, from_=from_, values=values, now=now) == 1


def transition_many(
    session: Session,
    job_ids: Iterable[uuid.UUID],
    to: JobStatus,
    *,
    from_: Iterable[JobStatus] | None = None,
    values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Move every listed job that is in an allowed state; returns how many moved."""
    allowed = ALLOWED_FROM[to]
    sources = frozenset(from_) if from_ is not None else allowed
    if not sources or not sources <= allowed:
        raise InvalidTransitionError(f"{sorted(s.value for s in sources)} -> {to.value}")
    ids = list(job_ids)
    if not ids:
        return 0
    now = now or utcnow()
    changes: dict[str, Any] = {"status": to, "status_changed_at": now}
    if to in _STAMP:
        changes[_STAMP[to]] = now
    changes.update(values or {})
    result = session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.status.in_(sources))
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
