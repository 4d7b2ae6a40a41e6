"""Reconciler passes: orphan webhooks, and the lock a killed pass leaves behind."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import redis
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fal_queue.client import FalQueueClient
from falsim.server import SimServer
from imagine.settings import Settings
from models import Batch, Image, Job, JobStatus, SignatureOutcome, WebhookEvent, WebhookOutcome
from models import prompt_hash as make_hash
from models.db import make_engine
from tests.fixtures.falsim import TEST_KEY
from worker.reconcile import LOCK_KEY, Reconciler, ReconcileReport
from worker.slots import EPOCH_KEY

MODEL = "imagineart/imagineart-2.0-preview/text-to-image"


def test_a_pass_applies_an_orphan_once_its_request_id_is_known(
    celery_env: Callable[..., Settings], database_url: str, redis_url: str, falsim: SimServer
) -> None:
    settings = celery_env(
        database_url=database_url,
        webhook_base_url="http://127.0.0.1:9/",  # webhook mode: nothing is due for polling yet
        fal_queue_url=falsim.base_url,
    )
    engine = make_engine(database_url)
    body = json.dumps(
        {
            "request_id": "req-late",
            "status": "OK",
            "payload": {
                "images": [{"url": "http://127.0.0.1:9/a.png", "width": 1024, "height": 576}],
                "seed": 5,
            },
        }
    )
    with Session(engine) as session, session.begin():
        batch = Batch(name="orphans", model=MODEL, params={})
        session.add(batch)
        session.flush()
        job_id = uuid.uuid4()
        session.execute(
            insert(Job).values(
                id=job_id, batch_id=batch.id, seq=0, custom_id="0", prompt="p",
                prompt_hash=make_hash(MODEL, "p", "16:9", "1K", "low", 5), aspect_ratio="16:9",
                resolution="1K", reasoning="low", seed=5, status=JobStatus.SUBMITTED,
                fal_request_id="req-late",
            )
        )  # fmt: skip
        session.add(
            WebhookEvent(
                request_id="req-late",
                signature=SignatureOutcome.VALID,
                body_sha256=hashlib.sha256(body.encode()).hexdigest(),
                body=body,
                status="OK",
                outcome=WebhookOutcome.ORPHAN,
            )
        )
    broker = redis.Redis.from_url(redis_url)
    broker.set(EPOCH_KEY, "test")  # the broker did not lose its messages
    with FalQueueClient(falsim.base_url, TEST_KEY) as client:
        report = Reconciler(client, settings, redis_client=broker, database_url=database_url).run()
    assert report.orphans == 1
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status is JobStatus.COMPLETED
        assert job.returned_seed == 5
        assert session.scalars(select(Image.width).where(Image.job_id == job_id)).all() == [1024]
        event = session.scalars(select(WebhookEvent)).one()
        assert event.outcome is WebhookOutcome.APPLIED
        assert event.job_id == job_id
    with FalQueueClient(falsim.base_url, TEST_KEY) as client:
        again = Reconciler(client, settings, redis_client=broker, database_url=database_url).run()
    assert again.orphans == 0
    engine.dispose()


def test_a_lock_left_by_a_killed_pass_stalls_the_reconciler_only_briefly(
    celery_env: Callable[..., Settings], database_url: str, redis_url: str, falsim: SimServer
) -> None:
    settings = celery_env(database_url=database_url, fal_queue_url=falsim.base_url)
    broker = redis.Redis.from_url(redis_url)
    broker.set(EPOCH_KEY, "test")
    with FalQueueClient(falsim.base_url, TEST_KEY) as client:
        reconciler = Reconciler(client, settings, redis_client=broker, database_url=database_url)
        assert not reconciler.run().skipped
        assert not broker.exists(LOCK_KEY)  # a finished pass releases its lock
        # While another pass holds the lock (or a killed worker's lock has not expired), skip.
        broker.set(LOCK_KEY, "another-pass", ex=30)
        assert reconciler.run().skipped
        broker.delete(LOCK_KEY)
    # The lock a live pass holds is short-lived, so a worker killed mid-pass stalls the
    # reconciler (and the recovery of the jobs it was submitting) for seconds, not minutes.
    ttls: list[int] = []

    class Spy(Reconciler):
        def _lost_archives(self, report: ReconcileReport) -> None:  # the last step of a pass
            ttls.append(int(broker.ttl(LOCK_KEY)))

    with FalQueueClient(falsim.base_url, TEST_KEY) as client:
        Spy(client, settings, redis_client=broker, database_url=database_url).run()
    assert len(ttls) == 1
    assert 0 < ttls[0] <= 30
