"""History queries on both databases: the JSON shape, filters and keyset pagination."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from models import Batch, Image, Job, JobStatus, prompt_hash
from models.db import make_engine
from models.exceptions import NotFoundError
from models.queries import (
    InvalidCursorError,
    batch_summary,
    get_job_detail,
    list_batches,
    list_jobs,
)
from models.transitions import transition

MODEL = "imagineart/imagineart-2.0-preview/text-to-image"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with sessionmaker(engine, expire_on_commit=False)() as s:
        yield s


def add_batch(session: Session, name: str = "b", created_at: datetime = T0) -> Batch:
    batch = Batch(name=name, model=MODEL, params={}, created_at=created_at)
    session.add(batch)
    session.flush()
    return batch


def add_jobs(
    session: Session, batch: Batch, prompts: list[str], start: int = 0, seed: int = 1
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in prompts]
    session.execute(
        insert(Job),
        [
            {
                "id": job_id,
                "batch_id": batch.id,
                "seq": start + n,
                "custom_id": str(start + n),
                "prompt": prompt,
                "prompt_hash": prompt_hash(MODEL, prompt, "1:1", "1K", "low", seed + n),
                "aspect_ratio": "1:1",
                "resolution": "1K",
                "reasoning": "low",
                "seed": seed + n,
                "created_at": T0 + timedelta(seconds=start + n),
                "status_changed_at": T0,
            }
            for n, (job_id, prompt) in enumerate(zip(ids, prompts, strict=True))
        ],
    )
    return ids


def test_a_job_dict_carries_every_documented_field(session: Session) -> None:
    batch = add_batch(session)
    [job_id] = add_jobs(session, batch, ["a red fox"], seed=41)
    transition(session, job_id, JobStatus.SUBMITTING)
    transition(session, job_id, JobStatus.COMPLETED, values={"returned_seed": 41})
    session.add(
        Image(
            job_id=job_id,
            index=0,
            url="http://127.0.0.1/x.png",
            width=1024,
            height=1024,
            content_type="image/png",
            file_size=10,
            sha256="ab" * 32,
            archive_path="/a/b.png",
        )
    )
    session.commit()
    page, cursor = list_jobs(session)
    assert cursor is None
    [job] = page
    for key in (
        "id",
        "batch_id",
        "custom_id",
        "prompt",
        "aspect_ratio",
        "resolution",
        "reasoning",
        "seed",
        "returned_seed",
        "status",
        "fal_request_id",
        "attempts",
        "error_type",
        "error_message",
        "created_at",
        "submitted_at",
        "completed_at",
        "images",
    ):
        assert key in job, key
    assert job["status"] == "COMPLETED"
    assert (job["seed"], job["returned_seed"]) == (41, 41)
    [image] = job["images"]
    assert image["local_path"] == "/a/b.png"
    assert image["sha256"] == "ab" * 32
    assert (image["width"], image["height"], image["file_size"]) == (1024, 1024, 10)


def test_pages_return_every_job_exactly_once_while_new_jobs_arrive(session: Session) -> None:
    batch = add_batch(session)
    original = set(add_jobs(session, batch, [f"p{n}" for n in range(53)]))
    session.commit()
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = list_jobs(session, batch_id=batch.id, limit=10, cursor=cursor)
        seen.extend(job["id"] for job in page)
        pages += 1
        # New jobs keep arriving (newer than everything already listed) between pages.
        add_jobs(session, batch, [f"new{pages}"], start=1000 + pages)
        session.commit()
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert {uuid.UUID(s) for s in seen} == original
    assert pages == 6


def test_filters_combine(session: Session) -> None:
    batch, other = add_batch(session, "a"), add_batch(session, "b")
    ids = add_jobs(session, batch, ["100% cotton_cat", "a dog", "CAT in a hat"], seed=10)
    add_jobs(session, other, ["another cat"], start=10, seed=10)
    transition(session, ids[1], JobStatus.FAILED)
    session.commit()

    def prompts(**kw: object) -> list[str]:
        return sorted(j["prompt"] for j in list_jobs(session, **kw)[0])  # type: ignore[arg-type]

    assert prompts(search="cat") == ["100% cotton_cat", "CAT in a hat", "another cat"]
    assert prompts(search="cat", batch_id=batch.id) == ["100% cotton_cat", "CAT in a hat"]
    assert prompts(search="0% c") == ["100% cotton_cat"]
    assert prompts(search="n_c") == ["100% cotton_cat"]  # _ is literal, not a wildcard
    assert prompts(search="%") == ["100% cotton_cat"]
    assert prompts(status=JobStatus.FAILED) == ["a dog"]
    assert prompts(seed=12, batch_id=batch.id) == ["CAT in a hat"]
    assert prompts(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)) == [
        "CAT in a hat",
        "a dog",
    ]


def test_a_foreign_cursor_is_refused(session: Session) -> None:
    with pytest.raises(InvalidCursorError):
        list_jobs(session, cursor="not-a-cursor")


def test_batch_summary_counts_every_state_and_estimates_the_rest(session: Session) -> None:
    batch = add_batch(session)
    ids = add_jobs(session, batch, [f"p{n}" for n in range(4)])
    now = datetime.now(UTC)
    transition(session, ids[0], JobStatus.SUBMITTING, now=now)
    transition(session, ids[0], JobStatus.COMPLETED, now=now)
    transition(session, ids[1], JobStatus.CANCELLED, now=now)
    session.commit()
    summary = batch_summary(session, batch.id, now=now)
    assert summary["counts"]["COMPLETED"] == 1
    assert summary["counts"]["CANCELLED"] == 1
    assert summary["counts"]["QUEUED"] == 2
    assert summary["counts"]["IN_PROGRESS"] == 0
    assert (summary["total"], summary["done"], summary["progress"]) == (4, 2, 0.5)
    assert summary["rate_per_second"] > 0
    assert summary["eta_seconds"] == pytest.approx(2 / summary["rate_per_second"], rel=0.01)
    with pytest.raises(NotFoundError):
        batch_summary(session, uuid.uuid4())


def test_batches_page_newest_first_with_counts(session: Session) -> None:
    old = add_batch(session, "old", T0)
    new = add_batch(session, "new", T0 + timedelta(hours=1))
    add_jobs(session, old, ["x", "y"])
    session.commit()
    page, cursor = list_batches(session, limit=1)
    assert [b["name"] for b in page] == ["new"]
    assert page[0]["total"] == 0
    page, cursor = list_batches(session, limit=1, cursor=cursor)
    assert [b["name"] for b in page] == ["old"]
    assert page[0]["counts"]["QUEUED"] == 2
    assert cursor is None
    assert new.id != old.id


def test_job_detail_lists_attempts_and_events(session: Session) -> None:
    batch = add_batch(session)
    [job_id] = add_jobs(session, batch, ["x"])
    session.commit()
    detail = get_job_detail(session, job_id)
    assert detail["attempt_log"] == []
    assert detail["webhook_events"] == []
    with pytest.raises(NotFoundError):
        get_job_detail(session, uuid.uuid4())
