"""Typed answers of fal's queue API."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple


class RequestStatus(StrEnum):
    """Queue state of a fal request; failures end COMPLETED with `error` set (no FAILED)."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelOutcome(StrEnum):
    """What fal said to a cancel: all three are normal answers, not errors."""

    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """fal's answer to a submit; keep the URLs, they are the request's address from now on."""

    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    gateway_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """fal's answer to a status poll."""

    status: RequestStatus
    request_id: str | None = None
    response_url: str | None = None
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def done(self) -> bool:
        """True once the request ended, successfully or not."""
        return self.status is RequestStatus.COMPLETED

    @property
    def failed(self) -> bool:
        """True when the request ended with a model or runner error."""
        return self.done and (self.error is not None or self.error_type is not None)


class DownloadResult(NamedTuple):
    """A finished download: what the server called the file, its size and its sha256 hex digest."""

    content_type: str | None
    bytes_written: int
    sha256: str
