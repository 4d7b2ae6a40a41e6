"""The receiver with its neighbours: real HTTP under concurrency on PostgreSQL, falsim's signed
webhooks, the pipeline's result fetch, the real Celery publish into Redis and a real worker."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from sqlalchemy import func, select, update

from fal_queue.client import FalQueueClient
from falsim.server import SimServer
from imagine.settings import Settings
from models import Image, Job, JobStatus, WebhookEvent, WebhookOutcome
from tests.fixtures.falsim import TEST_KEY, WebhookSink, wait_for
from tests.fixtures.receiver import Receiver, add_job, ok_body
from tests.integration.test_notify import SECRET, verify_standard_webhook

ENDPOINT = "imagineart/imagineart-2.0-preview/text-to-image"
CONCURRENT = 50


@pytest.mark.postgres
def test_50_concurrent_deliveries_of_one_webhook_apply_exactly_once(
    make_receiver: Callable[..., Receiver], pg_database: str, serve: Callable[[Flask], str]
) -> None:
    rx = make_receiver(pg_database)
    job_id = add_job(rx.sessions, request_id="req-c")
    base = serve(rx.app)
    body = ok_body("req-c", images=2)
    headers = {**rx.signed(body, "req-c"), "Content-Type": "application/json"}
    start = threading.Barrier(CONCURRENT)
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)

    def send(_: int) -> httpx.Response:
        start.wait()
        return client.post(f"{base}/webhooks/fal", content=body, headers=headers)

    with (
        httpx.Client(limits=limits, timeout=60) as client,
        ThreadPoolExecutor(CONCURRENT) as pool,
    ):
        responses = list(pool.map(send, range(CONCURRENT)))
    assert {r.status_code for r in responses} == {200}
    assert Counter(r.json()["outcome"] for r in responses) == {"applied": 1, "duplicate": 49}
    events = Counter(e.outcome for e in rx.events())
    assert events == {WebhookOutcome.APPLIED: 1, WebhookOutcome.DUPLICATE: 49}
    with rx.sessions() as session:
        images = session.scalars(select(Image.index).where(Image.job_id == job_id)).all()
        keys = session.scalar(select(func.count(WebhookEvent.dedupe_key)))
    assert sorted(images) == [0, 1] and keys == 1
    assert rx.job(job_id).status is JobStatus.COMPLETED
    assert rx.dispatch.finished == [job_id]


def submit(sim: SimServer, webhook: str, **input: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{sim.base_url}/{ENDPOINT}",
        json={"prompt": "a lighthouse at dusk", **input},
        params={"fal_webhook": webhook},
        headers={"Authorization": f"Key {TEST_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    handle: dict[str, Any] = response.json()
    return handle


def test_falsim_signed_webhooks_complete_and_fail_jobs(
    make_receiver: Callable[..., Receiver],
    database_url: str,
    serve: Callable[[Flask], str],
    make_falsim: Callable[..., SimServer],
) -> None:
    sim = make_falsim()
    rx = make_receiver(database_url, fal_jwks_url=sim.jwks_url)
    base = serve(rx.app)
    # SUBMITTING with no request id yet: the webhook must be matched by the job_id parameter.
    ok_job = add_job(rx.sessions, status=JobStatus.SUBMITTING)
    handle = submit(sim, f"{base}/webhooks/fal?job_id={ok_job}", seed=5)
    wait_for(lambda: rx.job(ok_job).status is JobStatus.COMPLETED, what="OK webhook")
    job = rx.job(ok_job)
    assert job.fal_request_id == handle["request_id"] and job.returned_seed == 5
    sim.set_faults(model_error_rate=1.0, model_error_types=("content_policy_violation",))
    bad_job = add_job(rx.sessions, status=JobStatus.SUBMITTING)
    submit(sim, f"{base}/webhooks/fal?job_id={bad_job}")
    wait_for(lambda: rx.job(bad_job).status is JobStatus.FAILED, what="ERROR webhook")
    assert rx.job(bad_job).error_type == "content_policy_violation"
    assert {e.signature.value for e in rx.events()} == {"valid"}
    assert sorted(rx.dispatch.finished) == sorted([ok_job, bad_job])


def test_null_payload_ends_completed_after_the_pipelines_fetch(
    make_receiver: Callable[..., Receiver],
    database_url: str,
    serve: Callable[[Flask], str],
    make_falsim: Callable[..., SimServer],
    celery_env: Callable[..., Settings],
) -> None:
    from worker.polling import fetch_and_apply

    sim = make_falsim()
    sim.set_faults(webhook_null_payload_rate=1.0)
    rx = make_receiver(database_url, fal_jwks_url=sim.jwks_url)
    base = serve(rx.app)
    job_id = add_job(rx.sessions, status=JobStatus.SUBMITTING)
    handle = submit(sim, f"{base}/webhooks/fal?job_id={job_id}", seed=11)
    # What the worker records when fal accepts the submit.
    with rx.sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.SUBMITTED,
                fal_request_id=handle["request_id"],
                fal_response_url=handle["response_url"],
            )
        )
    wait_for(lambda: rx.dispatch.fetched == [job_id], what="fetch scheduled")
    assert rx.events()[0].outcome is WebhookOutcome.FETCH_SCHEDULED
    assert rx.job(job_id).status is JobStatus.SUBMITTED
    # The plain function behind worker.tasks.fetch_result, against falsim's queue API.
    with FalQueueClient(sim.base_url, TEST_KEY) as client:
        assert fetch_and_apply(client, job_id, database_url=database_url)
    job = rx.job(job_id)
    assert job.status is JobStatus.COMPLETED and job.returned_seed == 11


def _messages(client: redis.Redis, queue: str) -> list[tuple[str, list[Any]]]:
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        found.append((message["headers"]["task"], args))
    return found


@pytest.mark.redis
def test_finished_job_is_published_to_redis_and_a_real_worker_sends_the_notifications(
    make_receiver: Callable[..., Receiver],
    database_url: str,
    redis_url: str,
    celery_env: Callable[..., Settings],
    webhook_sink: WebhookSink,
) -> None:
    from celery.contrib.testing.worker import start_worker

    from worker.celery_app import NOTIFY_QUEUE, celery_app

    celery_env(database_url=database_url, notify_secret=SECRET, archive_enabled="true")
    rx = make_receiver(database_url, dispatch=None)  # the real CeleryPostCommit
    job_id = add_job(rx.sessions, request_id="req-real", notify_url=webhook_sink.url)
    assert outcome(rx.deliver(ok_body("req-real"), "req-real")) == "applied"
    broker = redis.Redis.from_url(redis_url)
    job = rx.job(job_id)
    assert _messages(broker, "archive") == [("worker.tasks.archive_job", [str(job_id)])]
    assert sorted(_messages(broker, NOTIFY_QUEUE)) == [
        ("worker.notify_tasks.react_to_batch", [str(job.batch_id)]),
        ("worker.notify_tasks.react_to_job", [str(job_id)]),
    ]
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, queues=[NOTIFY_QUEUE], loglevel="WARNING"
    ):
        hooks = wait_for(lambda: len(webhook_sink.complete()) >= 2 and webhook_sink.complete())
    types = sorted(verify_standard_webhook(hook, SECRET)["type"] for hook in hooks)
    assert types == ["batch.completed", "job.completed"]
    broker.close()


def outcome(response: Any) -> str:
    return str(response.get_json()["outcome"])


def test_unknown_job_id_parameter_is_an_orphan(
    make_receiver: Callable[..., Receiver], database_url: str
) -> None:
    rx = make_receiver(database_url)
    assert outcome(rx.deliver(ok_body("req-x"), "req-x", job_id=uuid.uuid4())) == "orphan"
    assert outcome(rx.deliver(ok_body("req-y"), "req-y", job_id="not-a-uuid")) == "orphan"
