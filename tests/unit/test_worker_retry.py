"""Retry classification and backoff of submit errors."""

from __future__ import annotations

import random

import pytest

from fal_queue.client import map_error
from fal_queue.exceptions import FalTransportError
from models import AttemptOutcome
from worker.retry import MAX_COUNTDOWN, Action, backoff_delay, classify


@pytest.mark.parametrize(
    ("status", "headers", "body", "action", "error_type"),
    [
        (429, {"retry-after": "7"}, b'{"detail": "slow down"}', Action.RETRY, "http_429"),
        (
            503,
            {"x-fal-error-type": "runner_scheduling_failure"},
            b"{}",
            Action.RETRY,
            "runner_scheduling_failure",
        ),
        (500, {}, b"oops", Action.RETRY, "http_500"),
        (408, {}, b"", Action.RETRY, "http_408"),
        (
            422,
            {},
            b'{"detail": [{"loc": ["body", "prompt"], "msg": "bad", "type": "value_error"}]}',
            Action.FAIL,
            "http_422",
        ),
        (
            422,
            {"x-fal-error-type": "content_policy_violation"},
            b'{"detail": "no"}',
            Action.FAIL,
            "content_policy_violation",
        ),
        (400, {}, b'{"detail": "bad request"}', Action.FAIL, "http_400"),
        (
            401,
            {},
            b'{"detail": "No user found for Key ID and Secret"}',
            Action.PAUSE,
            "account_error",
        ),
        (
            403,
            {},
            b'{"detail": "User is locked. Reason: Exhausted balance."}',
            Action.PAUSE,
            "account_error",
        ),
    ],
)
def test_classification(
    status: int, headers: dict[str, str], body: bytes, action: Action, error_type: str
) -> None:
    verdict = classify(map_error(status, headers, body))
    assert verdict.action is action
    assert verdict.http_status == status
    assert verdict.error_type == error_type
    assert verdict.message


def test_rate_limit_hint_and_transport_errors() -> None:
    assert classify(map_error(429, {"retry-after": "7"}, b"")).retry_after == 7
    verdict = classify(FalTransportError("ConnectError on POST /x"))
    assert (verdict.action, verdict.outcome, verdict.error_type) == (
        Action.RETRY,
        AttemptOutcome.RETRYABLE_ERROR,
        "transport_error",
    )
    assert verdict.http_status is None


def test_account_errors_never_burn_the_job() -> None:
    verdict = classify(map_error(401, {}, b'{"detail": "No user found for Key ID and Secret"}'))
    assert verdict.outcome is AttemptOutcome.ACCOUNT_ERROR
    assert "No user found" in verdict.message


def test_backoff_doubles_with_jitter_and_caps() -> None:
    rng = random.Random(5)
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (9, 60.0)]:
        delays = [backoff_delay(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not lock-step


def test_server_hint_is_a_floor_and_everything_is_bounded() -> None:
    assert backoff_delay(1, base=1.0, cap=10.0, retry_after=30.0) == 30.0
    assert backoff_delay(1, base=1.0, cap=10.0, retry_after=0.0) <= 1.0
    assert backoff_delay(50, base=1.0, cap=10**6, retry_after=10**6) == MAX_COUNTDOWN
