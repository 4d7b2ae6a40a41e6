"""The JSON history API: keyset pages under concurrent inserts, filters, errors, auth, images,
batch creation and cancellation, health."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from imagine.settings import Settings
from models import Batch, Image, Job, JobStatus, utcnow
from tests.fixtures.receiver import Receiver, add_job, ok_body
from tests.integration.test_notify import SECRET


@pytest.fixture
def rx(make_receiver: Callable[..., Receiver], database_url: str) -> Receiver:
    return make_receiver(database_url)


def get_json(rx: Receiver, url: str, status: int = 200, **kw: Any) -> Any:
    response = rx.client.get(url, **kw)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def new_batch(rx: Receiver, count: int, **kw: Any) -> tuple[uuid.UUID, list[uuid.UUID]]:
    first = add_job(rx.sessions, **kw)
    batch_id = rx.job(first).batch_id
    return batch_id, [first] + [
        add_job(rx.sessions, batch_id=batch_id, **kw) for _ in range(count - 1)
    ]


def test_pages_return_every_job_exactly_once_while_new_jobs_arrive(rx: Receiver) -> None:
    batch_id, existing = new_batch(rx, 60)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"batch": str(batch_id), "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = get_json(rx, "/api/jobs", query_string=query)
        seen.extend(job["id"] for job in page["jobs"])
        pages += 1
        # Jobs created mid-walk sort before the cursor: they never shift or repeat a page.
        for _ in range(3):
            add_job(rx.sessions, batch_id=batch_id)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert {str(job_id) for job_id in existing} <= set(seen)
    assert pages == 9


def ids(body: dict[str, Any]) -> set[str]:
    return {job["id"] for job in body["jobs"]}


def test_filters_narrow_the_list(rx: Receiver) -> None:
    batch_id, jobs = new_batch(rx, 3, prompt="a blue whale", seed=1234)
    other = add_job(rx.sessions, status=JobStatus.FAILED, prompt="a green tree", seed=5)
    assert ids(get_json(rx, "/api/jobs?status=failed")) == {str(other)}
    assert ids(get_json(rx, f"/api/jobs?batch={batch_id}")) == {str(j) for j in jobs}
    assert ids(get_json(rx, "/api/jobs?seed=5")) == {str(other)}
    assert ids(get_json(rx, "/api/jobs?q=WHALE")) == {str(j) for j in jobs}
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert ids(get_json(rx, "/api/jobs", query_string={"since": future})) == set()
    assert len(ids(get_json(rx, "/api/jobs", query_string={"until": future}))) == 4


@pytest.mark.parametrize(
    "query",
    [
        "status=DONE",
        "batch=nope",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "seed=1.5",
        f"seed={2**64}",
        "since=yesterday",
        "cursor=garbage",
        "q=%00",
    ],
)
def test_bad_query_parameters_are_400_json(rx: Receiver, query: str) -> None:
    body = get_json(rx, f"/api/jobs?{query}", status=400)
    assert body["error"] == "bad_request" and body["message"]


def test_job_detail_has_images_attempts_and_webhook_events(rx: Receiver) -> None:
    job_id = add_job(rx.sessions, request_id="req-api")
    rx.deliver(ok_body("req-api", seed=3), "req-api")
    detail = get_json(rx, f"/api/jobs/{job_id}")
    assert detail["status"] == "COMPLETED" and detail["returned_seed"] == 3
    assert len(detail["images"]) == 1
    assert [e["outcome"] for e in detail["webhook_events"]] == ["applied"]
    assert detail["attempt_log"] == []
    assert get_json(rx, f"/api/jobs/{uuid.uuid4()}", status=404)["error"] == "not_found"
    assert get_json(rx, "/api/jobs/not-a-uuid", status=404)["error"] == "not_found"


def test_batches_list_and_summary(rx: Receiver) -> None:
    batch_id, _ = new_batch(rx, 2)
    listed = get_json(rx, "/api/batches")
    assert [b["id"] for b in listed["batches"]] == [str(batch_id)]
    summary = get_json(rx, f"/api/batches/{batch_id}")
    assert summary["counts"]["SUBMITTED"] == 2 and "rate_per_second" in summary
    get_json(rx, f"/api/batches/{uuid.uuid4()}", status=404)


def test_api_token_guards_every_api_route_but_not_the_webhook(
    make_receiver: Callable[..., Receiver], database_url: str
) -> None:
    rx = make_receiver(database_url, api_token="s3cret-token")
    denied = rx.client.get("/api/jobs")
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    assert "s3cret" not in denied.get_data(as_text=True)
    wrong = {"Authorization": "Bearer s3cret-tokeN"}
    assert rx.client.get("/api/batches", headers=wrong).status_code == 401
    assert rx.client.post("/api/batches", headers=wrong, json=["x"]).status_code == 401
    good = {"Authorization": "Bearer s3cret-token"}
    assert rx.client.get("/api/jobs", headers=good).status_code == 200
    add_job(rx.sessions, request_id="req-tok")
    assert rx.deliver(ok_body("req-tok"), "req-tok").status_code == 200


def test_archived_images_are_served_and_path_tricks_refused(
    make_receiver: Callable[..., Receiver], database_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    (archive / "ab").mkdir(parents=True)
    (archive / "ab" / "img.png").write_bytes(b"\x89PNG-full")
    (archive / "ab" / "img.thumb.webp").write_bytes(b"RIFF-thumb")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the archive")
    os.symlink(secret, archive / "ab" / "link.png")
    rx = make_receiver(database_url, archive_dir=str(archive))
    job_id = add_job(rx.sessions, status=JobStatus.COMPLETED)
    paths = ["ab/img.png", "../secret.txt", str(secret), "ab/link.png", None, "ab/missing.png"]
    with rx.sessions() as session, session.begin():
        images = [
            Image(job_id=job_id, index=n, url="https://x/y.png", archive_path=path)
            for n, path in enumerate(paths)
        ]
        images[0].thumbnail_path = "ab/img.thumb.webp"
        images[0].content_type = "image/png"
        session.add_all(images)
        session.flush()
        ids = [image.id for image in images]
    full = rx.client.get(f"/api/images/{ids[0]}")
    assert full.status_code == 200 and full.data == b"\x89PNG-full"
    assert full.mimetype == "image/png"
    thumb = rx.client.get(f"/api/images/{ids[0]}/thumbnail")
    assert thumb.status_code == 200 and thumb.data == b"RIFF-thumb"
    for image_id in ids[1:]:
        response = rx.client.get(f"/api/images/{image_id}")
        assert response.status_code == 404
        assert b"outside the archive" not in response.data
    assert rx.client.get(f"/api/images/{ids[1]}/thumbnail").status_code == 404
    assert rx.client.get("/api/images/999999").status_code == 404
    assert rx.client.get(f"/api/images/{2**70}").status_code == 404


@pytest.mark.redis
def test_post_batches_enqueues_and_publishes(
    make_receiver: Callable[..., Receiver],
    database_url: str,
    redis_url: str,
    celery_env: Callable[..., Settings],
) -> None:
    rx = make_receiver(database_url, notify_secret=SECRET)
    response = rx.client.post("/api/batches", json=["a cat", {"prompt": "a dog", "seed": 9}])
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["jobs"] == 2 and response.headers["Location"] == f"/api/batches/{body['batch_id']}"
    assert redis.Redis.from_url(redis_url).llen("submit") == 2
    detailed = rx.client.post(
        "/api/batches",
        json={
            "name": "posters",
            "prompts": ["a red kite"],
            "aspect_ratio": "16:9",
            "resolution": "1K",
            "seed": 77,
            "notify_url": "https://hooks.example.test/imagine",
        },
    )
    assert detailed.status_code == 202
    with rx.sessions() as session:
        batch = session.get(Batch, uuid.UUID(detailed.get_json()["batch_id"]))
        assert batch is not None and batch.name == "posters"
        assert batch.notify_url == "https://hooks.example.test/imagine"
        job = session.scalars(select(Job).where(Job.batch_id == batch.id)).one()
    assert (job.aspect_ratio, job.resolution, job.seed) == ("16:9", "1K", 77)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (["fine", {"prompt": ""}], "row 2"),
        (["fine", {"prompt": "x", "resolution": "8K"}], "row 2"),
        ({"prompts": ["x"], "aspect_ratio": "7:5"}, "aspect_ratio"),
        ({"prompts": ["x"], "notify_url": "ftp://example.test/"}, "notify_url"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["x"], "seed": "seven"}, "seed"),
        ("just a string", "body"),
    ],
)
def test_post_batches_validation_errors_are_400_naming_the_problem(
    rx: Receiver, body: Any, needle: str
) -> None:
    response = rx.client.post("/api/batches", json=body)
    assert response.status_code == 400
    assert needle in response.get_json()["message"]
    with rx.sessions() as session:
        assert session.scalars(select(Batch)).all() == []


def test_post_batches_refuses_a_notify_url_without_a_secret_and_non_json(rx: Receiver) -> None:
    response = rx.client.post(
        "/api/batches", json={"prompts": ["x"], "notify_url": "https://example.test/hook"}
    )
    assert response.status_code == 400 and "NOTIFY_SECRET" in response.get_json()["message"]
    garbage = rx.client.post("/api/batches", data=b"{nope", content_type="application/json")
    assert garbage.status_code == 400


@pytest.mark.redis
def test_cancel_batch(rx: Receiver, celery_env: Callable[..., Settings]) -> None:
    batch_id, jobs = new_batch(rx, 3, status=JobStatus.QUEUED)
    with rx.sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == jobs[0]).values(status=JobStatus.COMPLETED))
    response = rx.client.post(f"/api/batches/{batch_id}/cancel")
    assert response.status_code == 202
    assert response.get_json()["cancelled"] == 2
    states = sorted(rx.job(job_id).status.value for job_id in jobs)
    assert states == ["CANCELLED", "CANCELLED", "COMPLETED"]
    assert rx.client.post(f"/api/batches/{uuid.uuid4()}/cancel").status_code == 404


@pytest.mark.redis
def test_healthz_reports_database_and_broker(
    make_receiver: Callable[..., Receiver], database_url: str, redis_url: str
) -> None:
    healthy = make_receiver(database_url, redis_url=redis_url)
    assert get_json(healthy, "/healthz") == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok"},
    }
    sick = make_receiver(database_url, redis_url="redis://:pw@127.0.0.1:1/0")
    body = get_json(sick, "/healthz", status=503)
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("unreachable")
    assert "pw" not in str(body)
