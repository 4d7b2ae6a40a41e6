"""Reactions: signed Standard Webhooks notifications, retries, recording, and isolated job hooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from imagine.settings import Settings
from models import Batch, Job, JobStatus, NotificationDelivery, NotificationOutcome
from models.db import make_engine
from tests.fixtures.falsim import ReceivedWebhook, WebhookSink
from tests.fixtures.receiver import add_job
from worker import notify

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-secret-for-the-tests!!").decode()
HOOK_CALLS: list[dict[str, Any]] = []


def recording_hook(job: dict[str, Any]) -> None:
    HOOK_CALLS.append(job)


def raising_hook(job: dict[str, Any]) -> None:
    raise RuntimeError(f"hook failure for {job['id']}")


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def settings(database_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("notify_secret", SECRET)
    return Settings(database_url=database_url, **overrides)


def verify_standard_webhook(hook: ReceivedWebhook, secret: str) -> dict[str, Any]:
    """An independent Standard Webhooks verifier (as a receiver would write it)."""
    headers = {k.lower(): v for k, v in hook.headers.items()}
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + hook.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [part.split(",", 1)[1] for part in headers["webhook-signature"].split(" ")]
    assert any(hmac.compare_digest(expected, sig) for sig in given)
    moment = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 300
    body: dict[str, Any] = json.loads(hook.body)
    return body


def delivery(sessions: sessionmaker[Session], delivery_id: int) -> NotificationDelivery:
    with sessions() as session:
        row = session.get(NotificationDelivery, delivery_id)
        assert row is not None
        return row


def test_job_completed_is_posted_signed_and_recorded_once(
    database_url: str, sessions: sessionmaker[Session], webhook_sink: WebhookSink
) -> None:
    job_id = add_job(sessions, status=JobStatus.COMPLETED, notify_url=webhook_sink.url)
    config = settings(database_url)
    (delivery_id,) = notify.react_to_job(job_id, settings=config, database_url=database_url)
    attempt = notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert attempt.outcome is NotificationOutcome.DELIVERED
    (hook,) = webhook_sink.received
    body = verify_standard_webhook(hook, SECRET)
    assert body["type"] == "job.completed"
    assert body["data"]["id"] == str(job_id) and body["data"]["status"] == "COMPLETED"
    row = delivery(sessions, delivery_id)
    assert (row.attempts, row.status_code, row.error) == (1, 200, None)
    assert row.delivered_at is not None and row.webhook_id == hook.headers["webhook-id"]
    # A redelivered reaction reuses the event's row; a delivered row is never sent again.
    again = notify.react_to_job(job_id, settings=config, database_url=database_url)
    assert again == [delivery_id]
    notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert len(webhook_sink.received) == 1


def test_failing_endpoint_is_retried_with_the_same_id_and_each_attempt_recorded(
    database_url: str, sessions: sessionmaker[Session], webhook_sink: WebhookSink
) -> None:
    answers = iter([500, 503, 204])
    webhook_sink.respond = lambda hook: next(answers)
    job_id = add_job(sessions, status=JobStatus.FAILED, notify_url=webhook_sink.url)
    config = settings(database_url)
    (delivery_id,) = notify.react_to_job(job_id, settings=config, database_url=database_url)
    first = notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert (first.outcome, first.attempts, first.status_code) == (
        NotificationOutcome.RETRYING,
        1,
        500,
    )
    row = delivery(sessions, delivery_id)
    assert row.outcome is NotificationOutcome.RETRYING and row.error == "HTTP 500"
    assert notify.deliver(delivery_id, settings=config, database_url=database_url).attempts == 2
    last = notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert (last.outcome, last.attempts, last.status_code) == (
        NotificationOutcome.DELIVERED,
        3,
        204,
    )
    ids = {hook.headers["webhook-id"] for hook in webhook_sink.received}
    bodies = {hook.body for hook in webhook_sink.received}
    assert len(webhook_sink.received) == 3 and len(ids) == 1 and len(bodies) == 1
    assert json.loads(webhook_sink.received[0].body)["type"] == "job.failed"
    assert [notify.retry_delay(n) for n in (1, 2, 3)] == [5.0, 15.0, 45.0]
    assert notify.retry_delay(50) == notify.BACKOFF_MAX


def test_gone_endpoint_and_exhausted_attempts_fail_for_good(
    database_url: str, sessions: sessionmaker[Session], webhook_sink: WebhookSink
) -> None:
    webhook_sink.respond = lambda hook: 410
    config = settings(database_url)
    job_id = add_job(sessions, status=JobStatus.COMPLETED, notify_url=webhook_sink.url)
    (gone,) = notify.react_to_job(job_id, settings=config, database_url=database_url)
    assert notify.deliver(gone, settings=config, database_url=database_url).outcome is (
        NotificationOutcome.FAILED
    )
    webhook_sink.respond = lambda hook: 500
    other = add_job(sessions, status=JobStatus.COMPLETED, notify_url=webhook_sink.url)
    (failing,) = notify.react_to_job(other, settings=config, database_url=database_url)
    outcomes = [
        notify.deliver(failing, settings=config, database_url=database_url).outcome
        for _ in range(notify.MAX_ATTEMPTS + 1)
    ]
    assert outcomes.count(NotificationOutcome.RETRYING) == notify.MAX_ATTEMPTS - 1
    assert outcomes[-2:] == [NotificationOutcome.FAILED] * 2
    assert len(webhook_sink.received) == 1 + notify.MAX_ATTEMPTS


def test_unreachable_endpoint_is_retried(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job_id = add_job(sessions, status=JobStatus.COMPLETED, notify_url=f"http://127.0.0.1:{port}/")
    config = settings(database_url)
    (delivery_id,) = notify.react_to_job(job_id, settings=config, database_url=database_url)
    attempt = notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert attempt.outcome is NotificationOutcome.RETRYING and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("ConnectError")


def test_without_a_secret_nothing_is_sent_and_the_skip_is_recorded(
    database_url: str, sessions: sessionmaker[Session], webhook_sink: WebhookSink
) -> None:
    job_id = add_job(sessions, status=JobStatus.COMPLETED, notify_url=webhook_sink.url)
    config = Settings(database_url=database_url, notify_secret=None)
    (delivery_id,) = notify.react_to_job(job_id, settings=config, database_url=database_url)
    attempt = notify.deliver(delivery_id, settings=config, database_url=database_url)
    assert attempt.outcome is NotificationOutcome.SKIPPED
    assert webhook_sink.received == []
    assert delivery(sessions, delivery_id).error == "NOTIFY_SECRET is not set"


def test_plain_secret_without_prefix_is_used_as_bytes() -> None:
    header = notify.sign("plain", "msg_1", 1700000000, b"{}")
    expected = hmac.new(b"plain", b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert header == "v1," + base64.b64encode(expected).decode()
    with pytest.raises(ValueError, match="not base64"):
        notify.secret_key("whsec_***")


def test_hooks_see_each_finished_job_and_a_raising_hook_is_isolated(
    database_url: str, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    HOOK_CALLS.clear()
    notify.load_hooks.cache_clear()  # hooks resolve once per process; this test wants the log
    module = __name__
    config = settings(
        database_url,
        job_hooks=[f"{module}:raising_hook", "no.such.module:hook", f"{module}:recording_hook"],
    )
    done = add_job(sessions, status=JobStatus.COMPLETED)
    failed = add_job(sessions, status=JobStatus.FAILED)
    running = add_job(sessions, status=JobStatus.SUBMITTED)
    for job_id in (done, failed, running):
        assert notify.react_to_job(job_id, settings=config, database_url=database_url) == []
    assert [(c["id"], c["status"]) for c in HOOK_CALLS] == [
        (str(done), "COMPLETED"),
        (str(failed), "FAILED"),
    ]
    assert sum("job hook" in r.getMessage() for r in caplog.records) == 2
    assert any("no.such.module:hook" in r.getMessage() for r in caplog.records)
    with sessions() as session:
        states = {row.id: row.status for row in session.execute(select(Job.id, Job.status))}
    assert states == {
        done: JobStatus.COMPLETED,
        failed: JobStatus.FAILED,
        running: JobStatus.SUBMITTED,
    }


def test_batch_completed_is_posted_once_the_batch_is_finished(
    database_url: str, sessions: sessionmaker[Session], webhook_sink: WebhookSink
) -> None:
    job_id = add_job(sessions, status=JobStatus.COMPLETED, notify_url=webhook_sink.url)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        batch_id = job.batch_id
    config = settings(database_url)
    assert notify.react_to_batch(batch_id, database_url=database_url) == []
    with sessions() as session, session.begin():
        session.execute(
            update(Batch).where(Batch.id == batch_id).values(finished_at=job.created_at)
        )
    (delivery_id,) = notify.react_to_batch(batch_id, database_url=database_url)
    assert notify.deliver(delivery_id, settings=config, database_url=database_url).outcome is (
        NotificationOutcome.DELIVERED
    )
    body = verify_standard_webhook(webhook_sink.received[0], SECRET)
    assert body["type"] == "batch.completed"
    assert body["data"]["id"] == str(batch_id) and body["data"]["counts"]["COMPLETED"] == 1
    assert notify.react_to_batch(uuid.uuid4(), database_url=database_url) == []
