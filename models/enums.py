"""Explicit enumerations stored as strings."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life; see models.transitions for the allowed moves."""

    QUEUED = "QUEUED"
    SUBMITTING = "SUBMITTING"
    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True for the states that absorb every later event."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
# States in which a job occupies one of fal's concurrency slots (or is about to).
IN_FLIGHT_STATES = frozenset({JobStatus.SUBMITTING, JobStatus.SUBMITTED, JobStatus.IN_PROGRESS})


class AspectRatio(StrEnum):
    """The model's aspect_ratio enum."""

    R1_1 = "1:1"
    R16_9 = "16:9"
    R9_16 = "9:16"
    R4_3 = "4:3"
    R3_4 = "3:4"
    R3_1 = "3:1"
    R1_3 = "1:3"
    R3_2 = "3:2"
    R2_3 = "2:3"
    R21_9 = "21:9"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R4_1 = "4:1"
    R1_4 = "1:4"


class Resolution(StrEnum):
    """The model's resolution enum."""

    R1K = "1K"
    R2K = "2K"


class Reasoning(StrEnum):
    """The model's reasoning enum."""

    LOW = "low"
    HIGH = "high"


class SignatureOutcome(StrEnum):
    """What signature verification said of one webhook delivery."""

    VALID = "valid"
    INVALID = "invalid"
    SKIPPED = "skipped"


class WebhookOutcome(StrEnum):
    """What the receiver did with one webhook delivery."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    ORPHAN = "orphan"
    REJECTED = "rejected"
    FETCH_SCHEDULED = "fetch_scheduled"


class AttemptOutcome(StrEnum):
    """How one submit attempt to fal ended."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    RETRYABLE_ERROR = "retryable_error"
    PERMANENT_ERROR = "permanent_error"
    ACCOUNT_ERROR = "account_error"
    ABANDONED = "abandoned"
