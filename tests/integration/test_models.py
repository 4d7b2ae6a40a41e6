"""The data layer on both databases: constraints, the state machine, result application."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import Batch, Image, Job, JobAttempt, JobStatus, prompt_hash
from models.db import make_engine
from models.exceptions import InvalidTransitionError
from models.results import (
    ApplyOutcome,
    apply_failure,
    apply_success,
    describe_error,
    find_job,
    finish_batch_if_done,
)
from models.transitions import transition

S = JobStatus


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with sessionmaker(engine, expire_on_commit=False)() as s:
        yield s


def make_batch(session: Session, name: str = "b") -> Batch:
    batch = Batch(name=name, model="imagineart/imagineart-2.0-preview/text-to-image", params={})
    session.add(batch)
    session.flush()
    return batch


def make_job(session: Session, batch: Batch, custom_id: str, **kw: object) -> Job:
    values: dict[str, object] = {
        "prompt": "a cat",
        "aspect_ratio": "1:1",
        "resolution": "1K",
        "reasoning": "low",
        "seed": 7,
    }
    values.update(kw)
    job = Job(
        batch_id=batch.id,
        seq=0,
        custom_id=custom_id,
        prompt_hash=prompt_hash(
            batch.model,
            *[
                values[k]
                for k in ("prompt", "aspect_ratio", "resolution", "reasoning", "seed")  # type: ignore[arg-type]
            ],
        ),
        **values,
    )
    session.add(job)
    session.flush()
    return job


def status_of(session: Session, job_id: uuid.UUID) -> JobStatus:
    session.expire_all()
    return session.scalars(select(Job.status).where(Job.id == job_id)).one()


def test_custom_id_is_unique_within_a_batch_only(session: Session) -> None:
    a, b = make_batch(session, "a"), make_batch(session, "b")
    make_job(session, a, "row-1")
    make_job(session, b, "row-1")
    session.commit()
    with pytest.raises(IntegrityError):
        make_job(session, a, "row-1")
    session.rollback()


def test_fal_request_id_is_unique(session: Session) -> None:
    batch = make_batch(session)
    make_job(session, batch, "1", fal_request_id="req-1")
    make_job(session, batch, "2", fal_request_id=None)
    make_job(session, batch, "3", fal_request_id=None)  # many jobs may have none yet
    session.commit()
    with pytest.raises(IntegrityError):
        make_job(session, batch, "4", fal_request_id="req-1")
    session.rollback()


def test_timestamps_come_back_timezone_aware_utc(session: Session) -> None:
    batch = make_batch(session)
    job = make_job(session, batch, "1")
    moment = datetime(2026, 11, 24, 12, 30, tzinfo=UTC) + timedelta(microseconds=5)
    transition(session, job.id, S.SUBMITTING, now=moment)
    session.commit()
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert loaded is not None
    assert loaded.status_changed_at == moment
    assert loaded.status_changed_at.tzinfo is not None
    with pytest.raises(Exception, match="naive"):
        transition(session, job.id, S.SUBMITTED, now=datetime(2026, 1, 1))


def test_forward_moves_apply_and_stamp_their_time(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    assert transition(session, job.id, S.SUBMITTING)
    assert transition(session, job.id, S.SUBMITTED, values={"fal_request_id": "r1"})
    assert transition(session, job.id, S.IN_PROGRESS)
    assert transition(session, job.id, S.COMPLETED)
    session.commit()
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert loaded is not None
    assert loaded.status is S.COMPLETED
    assert loaded.fal_request_id == "r1"
    assert loaded.submitted_at is not None
    assert loaded.started_at is not None
    assert loaded.completed_at is not None
    assert loaded.submitted_at <= loaded.started_at <= loaded.completed_at


@pytest.mark.parametrize("terminal", [S.COMPLETED, S.FAILED, S.CANCELLED])
def test_terminal_states_absorb_every_later_move(session: Session, terminal: JobStatus) -> None:
    job = make_job(session, make_batch(session), "1")
    transition(session, job.id, S.SUBMITTING)
    assert transition(session, job.id, terminal)
    for target in JobStatus:
        assert not transition(session, job.id, target), target
    assert status_of(session, job.id) is terminal


def test_no_move_goes_backward(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    transition(session, job.id, S.SUBMITTING)
    transition(session, job.id, S.SUBMITTED)
    transition(session, job.id, S.IN_PROGRESS)
    for target in (S.QUEUED, S.SUBMITTING, S.SUBMITTED):
        assert not transition(session, job.id, target)
    assert status_of(session, job.id) is S.IN_PROGRESS


def test_a_released_claim_returns_to_queued(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    assert transition(session, job.id, S.SUBMITTING)
    assert transition(session, job.id, S.QUEUED)
    assert status_of(session, job.id) is S.QUEUED


def test_a_move_the_machine_never_allows_is_a_programming_error(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    with pytest.raises(InvalidTransitionError):
        transition(session, job.id, S.QUEUED, from_=[S.COMPLETED])


def test_concurrent_conflicting_moves_apply_exactly_once(engine: Engine) -> None:
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as s:
        job = make_job(s, make_batch(s), "1")
        transition(s, job.id, S.SUBMITTING)
        transition(s, job.id, S.SUBMITTED)
    targets = [S.COMPLETED, S.FAILED, S.CANCELLED] * 6
    applied: list[JobStatus] = []
    barrier = threading.Barrier(len(targets))

    def race(target: JobStatus) -> None:
        barrier.wait()
        with factory.begin() as s:
            if transition(s, job.id, target):
                applied.append(target)

    threads = [threading.Thread(target=race, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(applied) == 1
    with factory() as s:
        assert status_of(s, job.id) is applied[0]


OUTPUT = {
    "images": [
        {
            "url": "http://127.0.0.1:1/files/a.png",
            "width": 1024,
            "height": 1024,
            "content_type": "image/png",
            "file_name": "a.png",
            "file_size": 1234,
        },
    ],
    "seed": 99,
}


def test_success_applies_once_with_images_and_seed(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    transition(session, job.id, S.SUBMITTING)
    transition(session, job.id, S.SUBMITTED, values={"fal_request_id": "r1"})
    match = find_job(session, "r1")
    assert match is not None and match.current
    assert apply_success(session, match, "r1", OUTPUT) is ApplyOutcome.APPLIED
    assert apply_success(session, match, "r1", OUTPUT) is ApplyOutcome.DUPLICATE
    session.commit()
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert loaded is not None and loaded.status is S.COMPLETED and loaded.returned_seed == 99
    images = session.scalars(select(Image).where(Image.job_id == job.id)).all()
    assert [(i.index, i.width, i.height, i.file_size) for i in images] == [(0, 1024, 1024, 1234)]


def test_a_webhook_before_the_request_id_was_stored_is_matched_by_job_id(session: Session) -> None:
    job = make_job(session, make_batch(session), "1")
    transition(session, job.id, S.SUBMITTING)
    assert find_job(session, "r-new") is None
    match = find_job(session, "r-new", str(job.id))
    assert match is not None and match.current
    assert apply_success(session, match, "r-new", OUTPUT) is ApplyOutcome.APPLIED
    session.expire_all()
    assert session.scalars(select(Job.fal_request_id).where(Job.id == job.id)).one() == "r-new"


def test_an_older_attempts_error_does_not_fail_the_job(session: Session) -> None:
    job = make_job(session, make_batch(session), "1", attempts=2)
    session.add(JobAttempt(job_id=job.id, number=1, fal_request_id="old"))
    session.flush()
    transition(session, job.id, S.SUBMITTING)
    transition(session, job.id, S.SUBMITTED, values={"fal_request_id": "new"})
    match = find_job(session, "old", str(job.id))
    assert match is not None and not match.current and match.job.id == job.id
    assert apply_failure(session, match, "runner_server_error", "boom") is ApplyOutcome.STALE
    assert status_of(session, job.id) is S.SUBMITTED
    # ...but its success is a valid result for the same input and seed.
    assert apply_success(session, match, "old", OUTPUT) is ApplyOutcome.APPLIED
    assert status_of(session, job.id) is S.COMPLETED


def test_a_success_without_images_fails_the_job(session: Session) -> None:
    job = make_job(session, make_batch(session), "1", fal_request_id="r1")
    transition(session, job.id, S.SUBMITTING)
    match = find_job(session, "r1")
    assert match is not None
    assert apply_success(session, match, "r1", {"images": []}) is ApplyOutcome.APPLIED
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert (
        loaded is not None and loaded.status is S.FAILED and loaded.error_type == "invalid_output"
    )


def test_describe_error_reads_fal_error_bodies() -> None:
    detail = {
        "detail": [
            {"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}
        ]
    }
    assert describe_error("Invalid status code: 422", detail) == (
        "content_policy_violation",
        "prompt: flagged",
    )
    assert describe_error(
        None, {"detail": "Request timed out", "error_type": "request_timeout"}
    ) == (
        "request_timeout",
        "Request timed out",
    )
    assert describe_error("Invalid status code: 500", None) == (
        "model_error",
        "Invalid status code: 500",
    )


def test_a_batch_is_stamped_finished_once_when_its_last_job_ends(session: Session) -> None:
    batch = make_batch(session)
    jobs = [make_job(session, batch, str(n)) for n in range(3)]
    for job in jobs[:2]:
        transition(session, job.id, S.CANCELLED)
    assert not finish_batch_if_done(session, batch.id)
    transition(session, jobs[2].id, S.FAILED)
    assert finish_batch_if_done(session, batch.id)
    assert not finish_batch_if_done(session, batch.id)
    assert (
        session.scalar(
            select(func.count()).select_from(Batch).where(Batch.finished_at.is_not(None))
        )
        == 1
    )


def test_numbers_a_column_cannot_hold_are_dropped_not_fatal(session: Session) -> None:
    job = make_job(session, make_batch(session), "1", fal_request_id="r1")
    transition(session, job.id, S.SUBMITTING)
    match = find_job(session, "r1")
    assert match is not None
    image = {"url": "http://127.0.0.1/x.png", "width": 2**40, "content_type": "x" * 200}
    huge = {"images": [image], "seed": 2**64 - 1}
    assert apply_success(session, match, "r1", huge) is ApplyOutcome.APPLIED
    session.commit()
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert loaded is not None
    assert loaded.status is S.COMPLETED
    assert loaded.returned_seed is None
    stored = session.execute(select(Image.width, Image.content_type).where(Image.job_id == job.id))
    assert stored.all() == [(None, None)]
