"""What a failed submit means for its job, and how long to wait before the next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from fal_queue.exceptions import (
    FalAccountError,
    FalAPIError,
    FalError,
    FalPermanentError,
    FalRetryableError,
    FalTransportError,
)
from models import AttemptOutcome

# Never schedule further ahead than this: ETA messages must stay far below the broker's
# visibility timeout (worker.celery_app.VISIBILITY_TIMEOUT).
MAX_COUNTDOWN = 900.0
_RNG = random.Random()


class Action(StrEnum):
    """What to do with a job after a submit error."""

    RETRY = "retry"
    FAIL = "fail"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The action, the attempt outcome to record, and fal's facts about the error."""

    action: Action
    outcome: AttemptOutcome
    error_type: str
    message: str
    http_status: int | None = None
    retry_after: float | None = None


def classify(exc: FalError) -> Verdict:
    """Map a fal error to retry (transient), fail (this job can never pass) or pause (account)."""
    status = exc.status_code if isinstance(exc, FalAPIError) else None
    error_type = (exc.error_type if isinstance(exc, FalAPIError) else None) or _default_type(exc)
    message = exc.message if isinstance(exc, FalAPIError) else str(exc)
    if isinstance(exc, FalAccountError):
        return Verdict(Action.PAUSE, AttemptOutcome.ACCOUNT_ERROR, error_type, message, status)
    if isinstance(exc, FalPermanentError):
        return Verdict(Action.FAIL, AttemptOutcome.PERMANENT_ERROR, error_type, message, status)
    retry_after = exc.retry_after if isinstance(exc, FalRetryableError) else None
    return Verdict(
        Action.RETRY, AttemptOutcome.RETRYABLE_ERROR, error_type, message, status, retry_after
    )


def _default_type(exc: FalError) -> str:
    if isinstance(exc, FalTransportError):
        return "transport_error"
    if isinstance(exc, FalAccountError):
        return "account_error"
    if isinstance(exc, FalAPIError):
        return f"http_{exc.status_code}"
    return "fal_error"


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number `attempt` (1-based): base*2^(n-1), capped, jittered to 50-100%.

    A server hint (Retry-After / x-ratelimit-reset) is a floor: we never come back sooner than fal
    asked, and never later than MAX_COUNTDOWN.
    """
    rng = rng or _RNG
    exponential = min(cap, base * 2 ** max(0, attempt - 1))
    delay = exponential * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return float(min(delay, MAX_COUNTDOWN))
